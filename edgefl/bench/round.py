"""The networked federated round end to end: accuracy and time, beside the same training in one process.

A cloud, two fogs and ten devices (``edgefl.nodes.site.LocalSite``: each
with its key, chain, data directory and MQTT session, through the Debian
Mosquitto on a loopback port) run a two-round task at each ``--epsilons``
value, every step recorded on the fogs' chains.  MNIST (``--data``): device
i holds images 800·i … 800·i + 799 of the first 8,000; the cloud holds the
next 1,024 (``fl.items`` at most), half to fit the input transform and half
to test.  ``--quick``: generated digits, 64 per device.

* ``round_accuracy_eps{e}_round{1,2}`` — the cloud's test accuracy (%) of the
  global model after each round; ``ratio``: to the same training in one
  process (``edgefl.fl.simulation.run_rounds`` with the warm start and the
  release mean, the same data, model, seed and test images), whose rows are
  ``round_sim_accuracy_eps{e}_round{1,2}``.
* ``round_seconds_eps{e}`` — wall time of the two networked rounds;
  ``ratio``: to the simulation's (what recording every step, the chains and
  MQTT cost).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefl.bench.harness import Report, Row
from edgefl.bench.ml import DEFAULT_DATA
from edgefl.fl import SimDevice, run_rounds
from edgefl.ml import ExtractorWeights, Privatiser, load_mnist, open_backend
from edgefl.ml import trainer as T
from edgefl.ml.data import save_npz_dataset
from edgefl.ml.export import export
from edgefl.ml.privacy import DiscreteLaplace
from edgefl.nodes import LocalSite
from edgefl.nodes.node import local_data
from edgefl.transport import LocalMosquitto, topics

FOGS = {"fog-a": [f"dev-{i}" for i in range(5)], "fog-b": [f"dev-{i}" for i in range(5, 10)]}
ROUNDS = 2


def add_arguments(p) -> None:
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA else None,
                   help="folder with MNIST t10k IDX files (default: ../shared/data/mnist when present; "
                        "otherwise generated digits)")
    p.add_argument("--epsilons", type=lambda t: [float(v) for v in t.split(",")], default=[1.0, 10.0],
                   help="ε per round (default 1,10)")


async def run(*, quick: bool = False, data: str | None = None, epsilons: list[float] = (1.0, 10.0), **_) -> Report:
    report = Report("edgefl bench round")
    mnist = data is not None and not quick
    items, batch, hidden, epochs = (800, 64, [100, 30, 20], 3) if mnist else (64, 32, [20], 2)
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-round-") as tmp:
        work = Path(tmp)
        per_node = _data_files(work, load_mnist(data), items) if mnist else {}
        per_node["cloud-1"] = [*per_node.get("cloud-1", []), "fl.items=1024"]
        settings = [f"fl.rounds={ROUNDS}", f"fl.hidden=[{', '.join(map(str, hidden))}]", f"fl.items={items}",
                    f"ml.batch_size={batch}", "ml.lr=0.001", f"ml.local_epochs={epochs}",
                    "ml.epsilon_budget=1000", "fl.round_timeout_s=1200"]
        with LocalMosquitto(work / "broker") as broker:
            for eps in epsilons:
                sets = [*settings, f"ml.epsilon={eps:g}"]
                site = LocalSite(work / f"eps{eps:g}", broker.port, FOGS, clients=("watcher",), settings=sets,
                                 per_node=per_node)
                net, net_s = await _networked(site)
                sim, sim_s = _simulated(site, eps, hidden, batch, epochs)
                tag = f"{eps:g}"
                for r in range(ROUNDS):
                    report.add(Row(f"round_sim_accuracy_eps{tag}_round{r + 1}", "%", sim[r], sim[r],
                                   note="the same training in one process"))
                    report.add(Row(f"round_accuracy_eps{tag}_round{r + 1}", "%", net[r], net[r], ratio=net[r] / sim[r],
                                   note="networked, every step recorded; ratio to one process"))
                report.add(Row(f"round_seconds_eps{tag}", "s", net_s, net_s, ratio=net_s / sim_s,
                               note=f"{ROUNDS} networked rounds; ratio to one process ({sim_s:.1f} s)"))
    return report


def _data_files(work: Path, data, items: int) -> dict[str, list[str]]:
    """Each device's share and the cloud's held-out images as .npz files (``fl.data``)."""
    out = {}
    devices = [d for ds in FOGS.values() for d in ds]
    for i, d in enumerate(devices):
        path = work / f"{d}.npz"
        save_npz_dataset(path, data.subset(slice(items * i, items * (i + 1))))
        out[d] = [f"fl.data={path}"]
    path = work / "cloud-1.npz"
    save_npz_dataset(path, data.subset(slice(items * len(devices), len(data))))
    out["cloud-1"] = [f"fl.data={path}"]
    return out


async def _networked(site: LocalSite) -> tuple[list[float], float]:
    """The cloud's accuracy (%) after each round, and the wall time of the rounds."""
    t0 = time.perf_counter()
    async with site:
        watcher = site.session("watcher")
        async with watcher, watcher.subscribe(topics.pattern(node=site.cloud, kind="model")) as sub:
            async with asyncio.timeout(3600):
                async for rx in sub:
                    if rx.message.round == ROUNDS:
                        break
        seconds = time.perf_counter() - t0
        cloud = site.nodes[site.cloud]
        return [100 * cloud.accuracy[r] for r in range(1, ROUNDS + 1)], seconds


def _simulated(site: LocalSite, eps: float, hidden: list[int], batch: int, epochs: int) -> tuple[list[float], float]:
    """The same data, model and test images through ``run_rounds`` (warm start, release mean, FedProx)."""
    cloud_cfg = site.cfgs[site.cloud]
    with open_backend("onnxruntime", export(ExtractorWeights.random(seed=cloud_cfg.fl.seed), "onnx")) as backend:
        def features(images):
            return np.concatenate([backend.run(images[i:i + 256]) for i in range(0, len(images), 256)])

        devices = []
        for name in (d for ds in FOGS.values() for d in ds):
            local = local_data(site.cfgs[name])
            devices.append(SimDevice(name, features(local.images), local.labels,
                                     Privatiser(DiscreteLaplace(), epsilon=eps, batch_size=batch)))
        held = local_data(cloud_cfg)
        _, test = held.split(len(held) // 2)  # as the cloud: the first half fits the input transform
        test_features = features(test.images)
    config = T.TrainConfig(layers=[test_features.shape[1], *hidden, 10], optimizer="adam", lr=0.001,
                           batch_size=batch, seed=cloud_cfg.fl.seed, prox_mu=cloud_cfg.ml.prox_mu)
    t0 = time.perf_counter()
    acc = run_rounds(devices, config=config, rounds=ROUNDS, epochs=epochs, test_features=test_features,
                     test_labels=test.labels, warm_start=True, average_releases=True)
    return [100 * a for a in acc], time.perf_counter() - t0
