"""The fog's dense trainer: deterministic bytes, replay from records, gradients, FedAvg."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.fl.aggregate import AggregationError, FedAvg, Update, make
from edgefl.ml import blas
from edgefl.ml import trainer as T

SMALL = [12, 9, 7, 4]


def batch(n=64, d=3920, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32) * 8, rng.integers(0, classes, n)


def run_steps(optimizer: str, steps: int = 2) -> bytes:
    cfg = T.TrainConfig(optimizer=optimizer, lr=0.01, seed=3)
    model = T.init_model(seed=5)
    state = T.init_state(model, cfg)
    for i in range(steps):
        x, y = batch(seed=i)
        state = T.train_step(state, model, x, y, cfg)
    return state.to_bytes()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_runs_give_identical_bytes(optimizer):
    first, second = run_steps(optimizer), run_steps(optimizer)
    assert first == second
    assert T.TrainState.from_bytes(first).step == 2


def test_identical_bytes_in_a_fresh_process_with_a_threaded_blas():
    code = ("import sys; from tests.test_ml_trainer import run_steps; from edgefl.ml.trainer import TrainState;"
            "sys.stdout.write(TrainState.from_bytes(run_steps('adam')).digest().hex())")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout == T.TrainState.from_bytes(run_steps("adam")).digest().hex()


def test_blas_thread_count_is_restored():
    before = blas.threads()
    with blas.single_threaded():
        if before is not None:
            assert blas.threads() == 1
    assert blas.threads() == before


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_replay_from_recorded_bytes_matches_the_step(optimizer):
    cfg = T.TrainConfig(layers=SMALL, optimizer=optimizer, lr=0.05, prox_mu=0.1)
    origin = T.init_model(SMALL, seed=1)
    state = T.init_state(origin, cfg)
    x, y = batch(16, SMALL[0], SMALL[-1])
    state = T.train_step(state, origin, x, y, cfg)  # a state with non-zero slots
    x2, y2 = batch(16, SMALL[0], SMALL[-1], seed=1)
    expected = T.train_step(state, origin, x2, y2, cfg).to_bytes()
    assert T.replay_step(state.to_bytes(), origin.to_bytes(), x2, y2, cfg.to_bytes()) == expected
    # a different origin changes the step through the proximal term
    other = T.init_model(SMALL, seed=2).to_bytes()
    assert T.replay_step(state.to_bytes(), other, x2, y2, cfg.to_bytes()) != expected


@given(st.integers(1, 40), st.integers(0, 2**32), st.sampled_from(["sgd", "adam"]))
@settings(max_examples=25, deadline=None)
def test_step_does_not_modify_its_inputs(n, seed, optimizer):
    cfg = T.TrainConfig(layers=SMALL, optimizer=optimizer)
    model = T.init_model(SMALL, seed=seed)
    state = T.init_state(model, cfg)
    x, y = batch(n, SMALL[0], SMALL[-1], seed=seed)
    before = (state.to_bytes(), x.tobytes(), y.tobytes())
    after = T.train_step(state, model, x, y, cfg)
    assert (state.to_bytes(), x.tobytes(), y.tobytes()) == before
    assert after.step == 1 and after.to_bytes() != before[0]


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    model = T.init_model([5, 4, 3], seed=7)
    params = [p.astype(np.float64) for p in model.params]
    x = rng.standard_normal((6, 5))
    y = rng.integers(0, 3, 6)
    _, grads = T.loss_and_grads(params, x, y)
    h = 1e-6
    for k, p in enumerate(params):
        for idx in np.ndindex(p.shape):
            plus = [q.copy() for q in params]
            minus = [q.copy() for q in params]
            plus[k][idx] += h
            minus[k][idx] -= h
            numeric = (T.loss_and_grads(plus, x, y)[0] - T.loss_and_grads(minus, x, y)[0]) / (2 * h)
            assert grads[k][idx] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adam", 0.01)])
def test_trainer_learns_a_separable_problem(optimizer, lr):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 12)).astype(np.float32) * 3
    y = rng.integers(0, 4, 400)
    x = (centres[y] + rng.standard_normal((400, 12)).astype(np.float32)).astype(np.float32)
    cfg = T.TrainConfig(layers=SMALL, optimizer=optimizer, lr=lr, batch_size=32, seed=1)
    seen = []
    state = T.Trainer(cfg, on_step=lambda step, st, rows: seen.append(step)).fit(T.init_model(SMALL, 1), x, y, epochs=5)
    assert seen == list(range(1, 5 * 13 + 1))
    assert T.accuracy(state.model, x, y) > 0.9 > T.accuracy(T.init_model(SMALL, 1), x, y)


@given(st.integers(1, 300), st.integers(1, 70), st.integers(0, 2**32))
@settings(max_examples=50, deadline=None)
def test_batch_indices_cover_each_row_once_per_epoch(n, size, seed):
    per_epoch = -(-n // size)
    rows = np.concatenate([T.batch_indices(n, size, seed, s) for s in range(per_epoch)])
    assert sorted(rows.tolist()) == list(range(n))
    assert np.array_equal(T.batch_indices(n, size, seed, per_epoch), T.batch_indices(n, size, seed, per_epoch))


def test_bad_inputs_are_refused_with_reasons():
    cfg = T.TrainConfig(layers=SMALL)
    model = T.init_model(SMALL)
    state = T.init_state(model, cfg)
    x, y = batch(4, SMALL[0], SMALL[-1])
    with pytest.raises(T.TrainError, match="float32"):
        T.train_step(state, model, x.astype(np.float64), y, cfg)
    with pytest.raises(T.TrainError, match="labels must lie"):
        T.train_step(state, model, x, y + 10, cfg)
    with pytest.raises(T.TrainError, match="NaN"):
        T.train_step(state, model, np.full_like(x, np.nan), y, cfg)
    with pytest.raises(T.TrainError, match="layer 0"):
        T.DenseModel(layers=SMALL, params=[np.zeros((3, 3), np.float32)] + model.params[1:])
    with pytest.raises(codec.SchemaError, match="optimizer"):
        T.TrainConfig(optimizer="rmsprop")
    data = bytearray(state.to_bytes())
    with pytest.raises(codec.CodecError):
        T.TrainState.from_bytes(bytes(data[:-3]))


def test_fedavg_is_the_weighted_mean_in_a_fixed_order():
    rng = np.random.default_rng(0)
    ups = [Update([rng.standard_normal((3, 2)).astype(np.float32)], weight=w, sender=f"d{w}") for w in (1, 3)]
    (avg,) = make("fedavg").aggregate(ups).params
    assert avg.dtype == np.float32
    np.testing.assert_allclose(avg, 0.25 * ups[0].params[0] + 0.75 * ups[1].params[0], rtol=1e-6)
    assert FedAvg().aggregate(ups).params[0].tobytes() == avg.tobytes()
    with pytest.raises(AggregationError):
        FedAvg().aggregate([])
    with pytest.raises(AggregationError, match="weight"):
        FedAvg().aggregate([Update(ups[0].params, weight=0)])
    with pytest.raises(ValueError, match="unknown aggregator"):
        make("krum2")


def test_warm_start_embeds_exactly_the_ridge_classifier():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3920)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    x[np.arange(300), y] += 5.0
    model = T.init_model([3920, 32, 24, 20, 10], seed=1).with_input_transform(x)
    warm = model.with_warm_start(x, y, ridge=0.01, temperature=10.0)
    t = (x.astype(np.float64) - model.input_shift) * model.input_scale
    onehot = np.eye(10)[y]
    tc = t - t.mean(axis=0)
    gram = tc.T @ tc
    w = np.linalg.solve(gram + 0.01 * np.trace(gram) / 3920 * np.eye(3920), tc.T @ (onehot - onehot.mean(axis=0)))
    expected = 10.0 * (t @ w + onehot.mean(axis=0))
    logits = T.forward(warm.params, x, warm.input_scale, warm.input_shift)[-1]
    assert np.abs(logits - expected).max() < 1e-4 * np.abs(expected).max()
    assert T.accuracy(warm, x, y) == 1.0  # separable training data: the ridge fit already classifies it
    state = T.Trainer(T.TrainConfig(layers=[3920, 32, 24, 20, 10], optimizer="adam", lr=1e-3, batch_size=50)).fit(
        warm, x, y, epochs=1)
    assert T.accuracy(state.model, x, y) == 1.0  # training goes on from there
    with pytest.raises(T.TrainError, match="at least 20 wide"):
        T.init_model([3920, 32, 12, 10]).with_warm_start(x, y)


@pytest.mark.parametrize("items", [30, 300])  # fewer items than inputs: the dual form; more: the primal
def test_warm_start_solves_the_same_ridge_in_either_form(items):
    rng = np.random.default_rng(items)
    x = rng.standard_normal((items, 50))
    y = rng.integers(0, 10, items)
    model = T.init_model([50, 24, 20, 10], seed=0).with_input_transform(x)
    warm = model.with_warm_start(x, y, ridge=0.1, temperature=1.0)
    t = (x - model.input_shift) * model.input_scale
    tc = t - t.mean(axis=0)
    onehot = np.eye(10)[y]
    gram = tc.T @ tc
    w = np.linalg.solve(gram + 0.1 * np.trace(gram) / 50 * np.eye(50), tc.T @ (onehot - onehot.mean(axis=0)))
    logits = T.forward(warm.params, x.astype(np.float32), warm.input_scale, warm.input_shift)[-1]
    expected = t @ w + onehot.mean(axis=0)
    assert np.abs(logits - expected).max() < 1e-4 * np.abs(expected).max()


def test_release_mean_averages_each_items_releases():
    mean = T.ReleaseMean()
    first = mean.add(np.array([7, 3]), np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    assert np.array_equal(first, [[1.0, 2.0], [3.0, 4.0]])
    second = mean.add(np.array([3, 9, 7]), np.array([[5.0, 0.0], [1.0, 1.0], [2.0, 2.0]], np.float32))
    assert second.dtype == np.float32 and np.array_equal(second, [[4.0, 2.0], [1.0, 1.0], [1.5, 2.0]])
