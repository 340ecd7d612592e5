"""On-device extraction with DP, Laplace throughput, the dense step, and federated accuracy.

* ``extract_{onnx,litert,tflite}_b{1,64}`` — ms per image for the device's whole
  pipeline (extract, normalise, noise, build the FeatureBatch, sign it),
  interleaved with the bare runtime call; ``ratio`` = pipeline / bare.
  ``extract_overhead_ratio`` is that ratio for ONNX Runtime at batch 64
  (goal ≤ 1.5).  tflite_runtime cannot run beside numpy 2: when it is not
  importable here its bare call is timed in ``--tflite-python`` (a numpy<2
  environment such as ``.venv-tflite``) and only that is reported.
* ``laplace_per_batch`` — discrete Laplace on 64 × 3920 values, ms, words from
  ChaCha20 keyed by os.urandom (``_urandom``: every word from os.urandom);
  ``normalise_b64``, ``seal_feature_batch_b64`` — the pipeline's other parts;
  each with its ratio to the bare ONNX extraction of the batch, interleaved;
  ``laplace_delta_eps{1,10}`` — the δ for which the sampler as implemented is
  (ε, δ)-DP (feature unit, N = 64), computed from its exact probabilities.
* ``dense_step_b64`` — one deterministic Adam step of the dense part, ms.
* ``aggregate_{name}_n{10,50}`` — one aggregation (``edgefl.fl.aggregate``)
  of n models of the networked default 3920-100-30-20-10, ms, every
  aggregator interleaved; ``ratio`` = that / FedAvg's (``--quick``: n = 10).
* ``accuracy_eps{1,2,5,10,inf}_round{1,2}`` — test accuracy (%) after each of
  two federated rounds, 10 devices with equal IID shares, batch 64, mean of
  ``--seeds`` seeds (``p99`` column: the worst seed), with the fog's method
  (``METHODS["warm"]``); ``accuracy_eps*_b*_round2`` repeat it for batch sizes
  32/64/96/128; ``accuracy_eps*_cold_round*`` run the dense trainer alone
  (``METHODS["cold"]``) for comparison; ``nearest_mean_eps*`` and
  ``linear_eps*`` are what a nearest-class-mean and a ridge classifier reach on
  one pooled release of the same features.  MNIST (``--data``): 8,000
  training images across the devices, 2,000 held out.  ``--plots DIR`` writes
  accuracy_vs_epsilon.png and accuracy_vs_batch.png.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from edgefl.bench.harness import Report, Row, Samples, ab, interleave, measure, ratio_row
from edgefl.crypto import Signer, SigningKey
from edgefl.fl import SimDevice, run_rounds
from edgefl.fl import aggregate as agg
from edgefl.ml import (
    BackendUnavailable,
    Dataset,
    ExtractorWeights,
    FeatureBatch,
    FeatureExtractor,
    PrivacyAccountant,
    Privatiser,
    load_mnist,
    normalise,
    open_backend,
    synthetic_digits,
)
from edgefl.ml import export as E
from edgefl.ml import trainer as T
from edgefl.ml.privacy import SOURCES, DiscreteLaplace, NoNoise, bound, grid_step, sampler_delta, sampler_pmf

REPO = Path(__file__).resolve().parents[2]
# ../shared/data/mnist beside the checkout (or beside the folder of worktrees)
DEFAULT_DATA = next((p for p in (REPO.parent / "shared" / "data" / "mnist", REPO.parent.parent / "shared" / "data" / "mnist")
                     if p.exists()), None)
EPSILONS = [1.0, 2.0, 5.0, 10.0, None]  # None: no DP
BATCHES = [32, 64, 96, 128]
GOALS = {1.0: 90.0, 10.0: 95.0, None: 97.0}
BACKENDS = [("onnx", "onnxruntime"), ("litert", "litert"), ("tflite", "tflite_runtime")]


def add_arguments(p) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA else None,
                   help="folder with MNIST t10k IDX files (default: ../shared/data/mnist when present; "
                        "otherwise generated digits)")
    p.add_argument("--weights", help="extractor weights .npz (default: seeded random initialisation)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="local epochs per round")
    p.add_argument("--no-accuracy", action="store_true", help="skip the federated accuracy experiment")
    p.add_argument("--no-cold", action="store_true", help="skip the comparison runs of the dense trainer alone")
    p.add_argument("--batches", type=lambda t: [int(v) for v in t.split(",")], default=BATCHES,
                   help="batch sizes of the accuracy experiment (default 32,64,96,128)")
    p.add_argument("--plots", metavar="DIR", help="write the accuracy PNGs here")
    p.add_argument("--grid", metavar="FILE", help="write every accuracy run as JSON")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for the extraction rows")
    p.add_argument("--tflite-python", default=str(REPO / ".venv-tflite" / "bin" / "python"),
                   help="a Python with numpy<2 and tflite-runtime, for the tflite rows")


async def run(*, quick: bool = False, data: str | None = None, weights: str | None = None, seeds: int = 3,
              epochs: int = 3, no_accuracy: bool = False, plots: str | None = None, grid: str | None = None,
              threads: int = 1, tflite_python: str | None = None, batches: list[int] = BATCHES, no_cold: bool = False,
              **_) -> Report:
    report = Report("edgefl bench ml")
    w = ExtractorWeights.load(weights) if weights else ExtractorWeights.random(seed=0)
    models = {fmt: E.export(w, fmt) for fmt in E.FORMATS}
    dataset = load_mnist(data) if data else synthetic_digits(2000 if quick else 10000, seed=0)
    await _extraction(report, w, models, dataset, quick=quick, threads=threads, tflite_python=tflite_python)
    _laplace_and_step(report, models, dataset, quick=quick, threads=threads)
    _aggregation(report, quick=quick)
    if not no_accuracy:
        _accuracy(report, models["onnx"], dataset, quick=quick, seeds=1 if quick else seeds, epochs=epochs,
                  batches=[64] if quick else batches,
                  plots=plots, grid=grid, source="MNIST test set" if data else "generated digits", cold=not no_cold)
    return report


def _pipeline(model: bytes, w: ExtractorWeights, backend: str, threads: int):
    release = E.ModelRelease.of(model, w, "onnx" if backend == "onnxruntime" else "tflite")
    privatiser = Privatiser(DiscreteLaplace(), epsilon=1.0, batch_size=64,
                            accountant=PrivacyAccountant(1e12, device="bench"))
    return FeatureExtractor.open(backend, model, release, privatiser, threads=threads)


async def _extraction(report, w, models, dataset: Dataset, *, quick, threads, tflite_python) -> None:
    signer = Signer("bench-device", SigningKey())
    overhead = None
    for short, backend in BACKENDS:
        model = models["onnx" if backend == "onnxruntime" else "tflite"]
        try:
            fx = _pipeline(model, w, backend, threads)
        except BackendUnavailable as exc:
            _tflite_in_subprocess(report, short, model, dataset, quick, threads, tflite_python, str(exc))
            continue
        for batch in (1, 64):
            images = dataset.images[:batch]
            labels = dataset.labels[:batch]
            counter = iter(range(1 << 62))

            async def bare():
                fx.backend.run(images)

            async def full():
                signer.seal(fx.batch(np.arange(batch), images, labels, task="bench", round=next(counter)))

            n = (10 if quick else 60) if batch == 1 else (4 if quick else 20)
            s_full, s_bare = await ab(full, bare, iterations=n, warmup=2, blocks=2 if quick else 10)
            per = lambda s: Samples([t / batch for t in s.wall], [t / batch for t in s.cpu])  # noqa: E731
            r_full = per(s_full).row(f"extract_{short}_b{batch}")
            r_bare = per(s_bare).row(f"extract_{short}_b{batch}_bare", note=f"{backend}.run alone, ms per image")
            r_full.ratio = r_full.median / r_bare.median
            r_full.note = "extract + normalise + noise + sign, ms per image; ratio to the bare call"
            report.add(r_full)
            report.add(r_bare)
            if backend == "onnxruntime" and batch == 64:
                overhead = (r_full, r_bare)
    if overhead:
        report.add(ratio_row("extract_overhead_ratio", *overhead, goal="<= 1.5",
                             note="onnxruntime, batch 64: pipeline / bare runtime"))


def _tflite_in_subprocess(report, short, model, dataset, quick, threads, python, problem) -> None:
    if not python or not Path(python).exists():
        report.add(Row(f"extract_{short}_b1", "ms", float("nan"), float("nan"), note=f"not run: {problem}"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "m.tflite").write_bytes(model)
        for batch in (1, 64):
            np.save(Path(tmp, "x.npy"), dataset.images[:batch])
            n = (10 if quick else 60) if batch == 1 else (4 if quick else 20)
            out = subprocess.run([python, "-m", "edgefl.ml.backends", "--backend", "tflite_runtime", "--model",
                                  str(Path(tmp, "m.tflite")), "--input", str(Path(tmp, "x.npy")), "--threads",
                                  str(threads), "--time", str(n)], capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(REPO)))
            if out.returncode:
                report.add(Row(f"extract_{short}_b{batch}", "ms", float("nan"), float("nan"),
                               note=f"not run: {out.stderr.strip()[-200:]}"))
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            s = Samples([t / batch for t in res["wall"]], [t / batch for t in res["cpu"]])
            report.add(s.row(f"extract_{short}_b{batch}", note=f"bare tflite_runtime {res['runtime']} call only, "
                             f"timed under numpy {res['numpy']} in {python}"))


def _laplace_and_step(report, models, dataset: Dataset, *, quick, threads) -> None:
    """The pipeline's parts at batch 64, interleaved with the bare extraction they are compared to."""
    backend = open_backend("onnxruntime", models["onnx"], threads=threads)
    images, labels = dataset.images[:64], dataset.labels[:64]
    features = backend.run(images)
    values = normalise(features, 64)
    b = bound(64)
    noise = {name: DiscreteLaplace(name) for name in SOURCES}
    noised = noise["chacha20"].perturb(values, bound=b, coordinates=1, epsilon=1.0)
    batch = FeatureBatch(task="bench", round=0, model=bytes(32), ids=np.arange(64), labels=labels.astype(np.uint8),
                         features=noised.values, grid=noised.grid, epsilon=1.0, unit="feature")
    signer = Signer("bench-device", SigningKey())
    fns = {"extract": lambda: backend.run(images), "normalise": lambda: normalise(features, 64),
           "seal": lambda: signer.seal(batch)}
    fns.update({f"laplace_{name}": (lambda m=m: m.perturb(values, bound=b, coordinates=1, epsilon=1.0))
                for name, m in noise.items()})
    s = interleave(fns, rounds=5 if quick else 40)
    ext = s.pop("extract").row("x").median
    notes = {
        "laplace_per_batch": "discrete Laplace on 64 x 3920 values, words from ChaCha20 keyed by os.urandom "
                             "(the default); ratio to the bare onnxruntime extraction of the batch",
        "laplace_per_batch_urandom": "the same with every word read from os.urandom",
        "normalise_b64": "64 x 3920 extractor outputs onto [-sqrt(63), sqrt(63)]",
        "seal_feature_batch_b64": f"encode + sign the {len(signer.seal(batch)) >> 10} KiB FeatureBatch envelope",
    }
    names = {"laplace_chacha20": "laplace_per_batch", "laplace_urandom": "laplace_per_batch_urandom",
             "normalise": "normalise_b64", "seal": "seal_feature_batch_b64"}
    for key, name in names.items():
        row = s[key].row(name, note=notes[name])
        row.ratio = row.median / ext
        report.add(row)
    for eps in (1.0, 10.0):  # the sampler's exact (ε, δ), feature unit, N = 64
        g = grid_step(b, 2 * b / eps)
        steps = 2 * math.ceil(b / g)
        delta = sampler_delta(sampler_pmf(steps / eps), steps, eps)
        report.add(Row(f"laplace_delta_eps{eps:g}", "delta", delta, delta,
                       note=f"(ε={eps:g}, δ)-DP of the sampler as implemented, per coordinate and release "
                            "(exact, from every probability it can produce)"))

    cfg = T.TrainConfig(optimizer="adam", lr=1e-3)
    state = T.init_state(T.init_model(seed=0), cfg)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 3920)).astype(np.float32), rng.integers(0, 10, 64)
    step = measure(lambda: T.train_step(state, state.model, x, y, cfg), iterations=3 if quick else 20, warmup=2)
    report.add(step.row("dense_step_b64", note="Adam, 3920-600-100-30-20-10, BLAS on one thread (recorded steps)"))


def _aggregation(report, *, quick) -> None:
    base = T.init_model([3920, 100, 30, 20, 10], seed=0)
    rng = np.random.default_rng(0)
    for n in (10,) if quick else (10, 50):
        updates = [agg.Update([np.float32(p + rng.normal(0, 0.01, p.shape)) for p in base.params], 64.0, f"d{i}")
                   for i in range(n)]
        reference = [p + np.float32(0.001) for p in base.params]
        f = max(1, (n - 3) // 4)  # as many as Bulyan survives
        options = {"krum": {"f": f}, "multikrum": {"f": f}, "bulyan": {"f": f}, "trimmedmean": {"f": f}}
        runs = {name: (lambda a=agg.make(name, **options.get(name, {})):
                       a.aggregate(updates, origin=base.params, reference=reference)) for name in agg.AGGREGATORS}
        samples = interleave(runs, rounds=2 if quick else 5)
        fedavg = samples["fedavg"].row(f"aggregate_fedavg_n{n}")
        for name, s in samples.items():
            row = s.row(f"aggregate_{name}_n{n}", note=f"{n} models, f = {f} where it applies")
            row.ratio = row.median / fedavg.median
            report.add(row)


METHODS = {
    # the fog's method: ridge warm start, FedProx, training on the mean of each item's releases so far
    "warm": dict(warm_start=True, average_releases=True, prox_mu=1.0),
    # the dense trainer alone: He initialisation, plain FedAvg on each round's release
    "cold": dict(warm_start=False, average_releases=False, prox_mu=0.0),
}


def _accuracy(report, onnx_model: bytes, dataset: Dataset, *, quick, seeds, epochs, batches, plots, grid,
              source, cold=True) -> None:
    n_train = 1600 if quick else 8000
    n_test = 400 if quick else 2000
    train, rest = dataset.split(n_train)
    test = rest.subset(slice(0, n_test))
    backend = open_backend("onnxruntime", onnx_model, threads=os.cpu_count() or 1)
    features = np.concatenate([backend.run(train.images[i:i + 500]) for i in range(0, len(train), 500)])
    test_features = np.concatenate([backend.run(test.images[i:i + 500]) for i in range(0, len(test), 500)])
    devices = 10
    share = len(train) // devices
    epsilons = [1.0, None] if quick else EPSILONS
    plan = [("warm", batch) for batch in batches] + ([("cold", 64)] if cold and 64 in batches else [])
    runs = []
    t0 = time.perf_counter()
    for method, batch in plan:
        opts = METHODS[method]
        for eps in epsilons:
            for seed in range(seeds):
                cfg = T.TrainConfig(optimizer="adam", lr=1e-3, batch_size=batch, seed=seed, prox_mu=opts["prox_mu"])
                sims = []
                for d in range(devices):
                    rows = slice(d * share, (d + 1) * share)
                    noise = NoNoise() if eps is None else DiscreteLaplace()
                    acct = None if eps is None else PrivacyAccountant(2 * eps, device=f"device-{d}")
                    sims.append(SimDevice(f"device-{d}", features[rows], train.labels[rows],
                                          Privatiser(noise, epsilon=eps or 1.0, batch_size=batch, accountant=acct)))
                acc = run_rounds(sims, config=cfg, rounds=2, epochs=epochs, test_features=test_features,
                                 test_labels=test.labels, warm_start=opts["warm_start"],
                                 average_releases=opts["average_releases"])
                runs.append({"method": method, "epsilon": eps, "batch": batch, "seed": seed, "accuracy": acc})
                print(f"  accuracy {method} eps={eps} batch={batch} seed={seed}: {[round(100 * a, 2) for a in acc]} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    note = (f"{source}: {len(train)} train over {devices} devices, {len(test)} test; ridge warm start, "
            f"Adam lr 1e-3, FedProx 1, {epochs} local epochs/round on the mean of the releases; ε per round; ")

    def pick(eps, batch, r, method="warm"):
        return [100 * x["accuracy"][r] for x in runs
                if x["epsilon"] == eps and x["batch"] == batch and x["method"] == method]

    for method, suffix in (("warm", ""), ("cold", "_cold")):
        for eps in epsilons:
            tag = "inf" if eps is None else f"{eps:g}"
            for r in (0, 1):
                vals = pick(eps, 64, r, method)
                if not vals:
                    continue
                goal = f">= {GOALS[eps]:g}" if r == 1 and eps in GOALS and method == "warm" else None
                what = ("the dense trainer alone: He init, plain FedAvg, Adam lr 1e-3; "
                        if method == "cold" else note if r == 1 and eps == 1.0 else "")
                report.add(Row(f"accuracy_eps{tag}{suffix}_round{r + 1}", "%", statistics.mean(vals), min(vals),
                               goal=goal, note=f"{what}batch 64, mean of {len(vals)} seed(s)"))
    for batch in batches:
        if batch == 64:
            continue
        for eps in epsilons:
            tag = "inf" if eps is None else f"{eps:g}"
            vals = pick(eps, batch, 1)
            report.add(Row(f"accuracy_eps{tag}_b{batch}_round2", "%", statistics.mean(vals), min(vals),
                           note=f"batch {batch}, mean of {len(vals)} seed(s)"))
    _reference_models(report, features, train.labels, test_features, test.labels, epsilons)
    if grid:
        Path(grid).write_text(json.dumps(runs, indent=1) + "\n")
    if plots:
        plot_accuracy(runs, Path(plots), note)


def _reference_models(report, features, labels, test_features, test_labels, epsilons, batch=64) -> None:
    """What simpler models reach on one release of the same noisy features, pooled (what bounds the MLP)."""
    test = normalise(test_features, batch)
    for eps in epsilons:
        tag = "inf" if eps is None else f"{eps:g}"
        noise = NoNoise() if eps is None else DiscreteLaplace()
        x = Privatiser(noise, epsilon=eps or 1.0, batch_size=batch).release(np.arange(len(labels)), features).values
        means = np.stack([x[labels == c].mean(axis=0, dtype=np.float64) for c in range(10)])
        nearest = ((means ** 2).sum(axis=1) - 2 * test @ means.T).argmin(axis=1)
        acc = 100 * float((nearest == test_labels).mean())
        report.add(Row(f"nearest_mean_eps{tag}", "%", acc, acc, note="nearest class mean of one pooled release"))
        linear = T.init_model(seed=0).with_input_transform(x).with_warm_start(x, labels)
        acc = 100 * T.accuracy(linear, test.astype(np.float32), test_labels)
        report.add(Row(f"linear_eps{tag}", "%", acc, acc,
                       note="the warm start alone: ridge classifier on one pooled release"))


def plot_accuracy(runs: list[dict], folder: Path, note: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    mean = lambda vals: statistics.mean(vals) if vals else float("nan")  # noqa: E731
    epsilons = sorted({r["epsilon"] for r in runs if r["epsilon"] is not None})
    has_inf = any(r["epsilon"] is None for r in runs)
    methods = [m for m in METHODS if any(r.get("method", "cold") == m for r in runs)]
    label = {"warm": "", "cold": "dense trainer alone, "}

    def acc(method, eps, batch, rnd):
        return mean([100 * r["accuracy"][rnd] for r in runs
                     if r.get("method", "cold") == method and r["epsilon"] == eps and r["batch"] == batch])

    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        for rnd in (0, 1) if method == "warm" else (1,):
            style = "-" if method == "warm" else "--"
            line, = ax.plot(epsilons, [acc(method, e, 64, rnd) for e in epsilons], style, marker="o",
                            label=f"{label[method]}round {rnd + 1}")
            if has_inf:
                ax.axhline(acc(method, None, 64, rnd), color=line.get_color(), linestyle=":",
                           label=f"{label[method]}round {rnd + 1}, no DP")
    ax.set_xlabel("ε per round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs ε (10 devices, batch 64)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, textwrap.fill(note.rstrip("; "), 130), fontsize=6)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out.append(folder / "accuracy_vs_epsilon.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    method = methods[0]
    batches = sorted({r["batch"] for r in runs if r.get("method", "cold") == method})
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in epsilons + ([None] if has_inf else []):
        ax.plot(batches, [acc(method, e, b, 1) for b in batches], marker="o",
                label="no DP" if e is None else f"ε = {e:g}")
    ax.set_xlabel("batch size N")
    ax.set_ylabel("test accuracy after round 2 (%)")
    ax.set_title("Accuracy vs batch size (10 devices)")
    ax.set_xticks(batches)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, textwrap.fill(note.rstrip("; "), 130), fontsize=6)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out.append(folder / "accuracy_vs_batch.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out
