"""Training tracking and audit with the fog's real dense trainer (edgefl.ml.trainer), on a real chain."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.ledger.audit import LocalSource, Tracker, audit, batch_bytes, step_digest
from edgefl.ledger.blobs import BlobStore
from edgefl.ledger.records import TrainingStep
from edgefl.ledger.tx import decode_tx, record_tx
from edgefl.ml.trainer import DenseModel, TrainConfig, TrainState, init_model, init_state
from tests.ledger_helpers import KEYS, new_chain, sealer_for, sub_spec

LAYERS = [12, 8, 5, 3]
CONFIG = TrainConfig(layers=LAYERS, optimizer="adam", lr=0.05, batch_size=6, seed=3)


def batches(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [batch_bytes(rng.standard_normal((6, LAYERS[0])).astype(np.float32), rng.integers(0, LAYERS[-1], 6))
            for _ in range(n)]


def flip_weight(state: bytes, layer: int, index: int, bit: int) -> bytes:
    """The same state with one bit of one weight flipped."""
    s = TrainState.from_bytes(state)
    params = [p.copy() for p in s.model.params]
    w = params[2 * (layer % (len(LAYERS) - 1))]
    flat = w.reshape(-1).view(np.uint32)
    flat[index % flat.size] ^= np.uint32(1 << bit)
    return TrainState(step=s.step, model=DenseModel(layers=s.model.layers, params=params), slots=s.slots).to_bytes()


def record_training(tmp_path, steps: int, *, flip: tuple[int, int, int, int] | None = None):
    """Train ``steps`` steps, recording each; with ``flip`` = (step, layer, index, bit) that step's output is doctored."""
    chain = new_chain(tmp_path, sub_spec("fog-a"))
    blobs = BlobStore(tmp_path / "blobs")
    model = init_model(LAYERS, seed=7)
    origin = model.to_bytes()
    state = init_state(model, CONFIG).to_bytes()
    tracker = Tracker(blobs, task="mnist", device="dev-1", trainer_name="dense", config=CONFIG.to_bytes(),
                      signer="fog-a", key=KEYS["fog-a"])
    for i, data in enumerate(batches(steps), start=1):
        doctored = None
        if flip and flip[0] == i:
            doctored = flip_weight(tracker.fn(state, origin, data, tracker.config), *flip[1:])
        state, tx = tracker.step(i, state, origin, data, result=doctored)
        chain.submit(tx)
        chain.mine(sealer_for("fog-a"))
    return chain, blobs


async def test_honest_training_passes_the_audit(tmp_path):
    chain, blobs = record_training(tmp_path, 4)
    lines = []
    report = await audit(LocalSource(chain, blobs), "dev-1", report=lines.append)
    assert report.ok and [s.step for s in report.steps] == [1, 2, 3, 4], lines
    # the records carry the step digest H(M_i ‖ M_O ‖ d_i ‖ i) over the blobs' content ids
    txid = chain.store.find(device="dev-1", rtype=TrainingStep.TYPE)[2][0]
    rec = decode_tx(chain.store.tx(txid)[2]).body.unwrap()
    assert rec.digest == step_digest(rec.model_out, rec.origin, rec.data, 3)
    assert rec.model_in == decode_tx(chain.store.tx(chain.store.find(device="dev-1")[1][0])[2]).body.unwrap().model_out
    # sampling picks the requested number of steps
    sampled = await audit(LocalSource(chain, blobs), "dev-1", samples=2, seed=1)
    assert len(sampled.steps) == 2 and sampled.ok


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=st.integers(1, 3), layer=st.integers(0, 2), index=st.integers(0, 10 ** 6), bit=st.integers(0, 31))
def test_audit_detects_a_single_flipped_weight(tmp_path_factory, step, layer, index, bit):
    import asyncio

    chain, blobs = record_training(tmp_path_factory.mktemp("t"), 3, flip=(step, layer, index, bit))
    report = asyncio.run(audit(LocalSource(chain, blobs), "dev-1"))
    assert not report.ok
    bad = [s for s in report.steps if not s.ok]
    assert [s.step for s in bad] == [step]  # later steps trained honestly from the doctored model
    assert "1 bit(s) in 1 byte(s) differ" in bad[0].detail


async def test_audit_rejects_missing_or_swapped_inputs(tmp_path):
    chain, blobs = record_training(tmp_path, 3)
    rec2 = decode_tx(chain.store.tx(chain.store.find(device="dev-1")[1][0])[2]).body.unwrap()
    blobs.path(rec2.data).unlink()  # the batch of step 2 is gone
    report = await audit(LocalSource(chain, blobs), "dev-1")
    assert [s.step for s in report.steps if not s.ok] == [2]
    assert "unavailable" in [s for s in report.steps if not s.ok][0].detail
    # a step that claims to start from another model than its predecessor's output is rejected
    forged = dataclasses.replace(rec2, step=4, model_in=rec2.origin)
    chain.submit(record_tx(forged, "fog-a", KEYS["fog-a"], device="dev-1"))
    chain.mine(sealer_for("fog-a"))
    report = await audit(LocalSource(chain, blobs), "dev-1")
    step4 = [s for s in report.steps if s.step == 4][0]
    assert not step4.ok and "other than step 3" in step4.detail


def test_unknown_trainer_is_a_clear_error(tmp_path):
    from edgefl.ledger.errors import AuditError
    with pytest.raises(AuditError, match="unknown trainer 'sgd-magic'"):
        Tracker(BlobStore(tmp_path), task="t", device="d", trainer_name="sgd-magic", config=b"",
                signer="fog-a", key=KEYS["fog-a"])
    assert codec.lookup(TrainingStep.TYPE, 1) is TrainingStep
