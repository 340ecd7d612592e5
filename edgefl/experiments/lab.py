"""One experiment setting, run through the in-process federated rounds and measured per round.

    lab = Lab(load_mnist(default_data()), train=8000, test=2000)
    row = lab.run(Setting("attacks", aggregator="median", attack="labelflip", malicious=0.3))

A ``Setting`` names everything a run depends on; ``Lab.run`` splits the
training images over the devices (``edgefl.fl.partition``), draws the
attackers (``choose_attackers``: the same seed gives nested sets as the
fraction grows), gives each attacker its behaviour — a data attack applied to
its images before extraction each round (seeded by the round, as a networked
device applies it), or an update attack on the model it sends, seeing the
honest models of the round — and runs ``edgefl.fl.simulation.run_rounds``
with the aggregator the setting names.  Each round it measures the global
model's test accuracy and cross-entropy, a backdoor's success rate on the
triggered test images (those not already of the target class), and every
device's reputation as ``edgefl.fl.reputation`` folds it from the round's
aggregation (the shares a ledger's ``Aggregation`` record holds).

Features come from the released extractor: exported as ONNX, its
``ModelRelease`` checked, run with onnxruntime — as a device does.  FLTrust's
root data is the server's own sample of ``ROOT`` training images, normalised
without noise as the networked cloud's reference is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgefl.fl import SimDevice, run_rounds
from edgefl.fl import aggregate as agg
from edgefl.fl import attacks as A
from edgefl.fl.partition import partitioner
from edgefl.fl.reputation import INITIAL, Standing
from edgefl.fl.simulation import RoundResult
from edgefl.ml import Dataset, ExtractorWeights, ModelRelease, PrivacyAccountant, Privatiser
from edgefl.ml import trainer as T
from edgefl.ml.export import export
from edgefl.ml.privacy import DiscreteLaplace, NoNoise

REPO = Path(__file__).resolve().parents[2]
ROOT = 100  # FLTrust's root data: the server's own images (Cao et al. use 100)
CLEAN_F = 0.2  # without attackers, the byzantine count the f-based aggregators are told: ⌊0.2·n⌋
CLIP_NORM = 3.0  # clip's bound on an update's L2 norm: about the median norm of an honest update in a clean run (2.7–3.4)
RANDOM_FRACTION = 0.5  # random selection's share of the updates
# attacks whose crafted model is the same for every attacker of a round (it ignores their own model)
SHARED = ("alie", "fang-krum")


def default_data() -> Path | None:
    """``../shared/data/mnist`` from the current directory, beside the checkout or beside its parent."""
    rel = Path("..") / "shared" / "data" / "mnist"
    for base in (Path.cwd(), REPO, REPO.parent):
        if (base / rel).is_dir():
            return (base / rel).resolve()
    return None


@dataclass(frozen=True)
class Setting:
    """Everything one run depends on.  ``attack``: a name in ``edgefl.fl.attacks.ATTACKS``, ``fang-krum``,
    ``fang-trimmedmean`` or ``backdoor+scaling`` (the backdoored model boosted, model replacement)."""

    experiment: str
    devices: int = 20
    partition: str = "iid"  # iid | dirichlet-α | shards-k (k shards per device)
    rounds: int = 5
    epochs: int = 2
    aggregator: str = "fedavg"
    attack: str = "none"
    malicious: float = 0.0
    epsilon: float | None = None  # per round and release; None: no DP
    normaliser: str = "minmax"  # edgefl.ml.privacy.NORMALISERS
    method: str = "plain"  # plain: He init, FedAvg-style rounds; fog: the fog's warm start, release mean, FedProx
    hidden: tuple[int, ...] = (100, 30, 20)
    extractor: str = "random"
    seed: int = 0
    batch: int = 64

    def label(self) -> str:
        parts = [f"n={self.devices}", self.partition, f"E={self.epochs}", self.aggregator]
        if self.attack != "none":
            parts.append(f"{self.attack} {100 * self.malicious:g} %")
        parts.append("no DP" if self.epsilon is None else f"ε={self.epsilon:g} {self.normaliser}")
        if self.extractor != "random":
            parts.append(self.extractor)
        return " · ".join(parts)


def split_partition(spec: str):
    name, _, value = spec.partition("-")
    if name == "dirichlet":
        return partitioner(name, alpha=float(value))
    if name == "shards":
        return partitioner(name, shards_per_part=int(value or 2))
    return partitioner(name)


def defender_f(devices: int, attackers: int) -> int:
    """The f the f-based aggregators are told: the attackers' count (known, as in the papers), else ⌊0.2·n⌋."""
    return attackers if attackers else max(1, math.floor(CLEAN_F * devices))


def make_aggregator(name: str, devices: int, f: int, seed: int = 0) -> agg.Aggregator:
    options = {"krum": {"f": f}, "multikrum": {"f": f}, "trimmedmean": {"f": f}, "bulyan": {"f": f},
               "random": {"fraction": RANDOM_FRACTION, "seed": seed}, "clip": {"max_norm": CLIP_NORM}}
    return agg.make(name, **options.get(name, {}))


class _Shared:
    """An update attack whose crafted model every attacker of a round sends alike: crafted once per round."""

    kind = "update"

    def __init__(self, attack: A.Attack):
        self.attack, self.name = attack, attack.name
        self._seen: tuple | None = None

    def update(self, own, honest, *, origin, seed=0):
        if self._seen is None or self._seen[0] is not honest or self._seen[1] is not origin:
            self._seen = (honest, origin, self.attack.update(own, honest, origin=origin, seed=seed))
        return [np.array(p, copy=True) for p in self._seen[2]]


def make_attacks(spec: str, devices: int, f: int) -> tuple[A.Attack | None, object | None]:
    """(data attack, update attack) of an attacker under ``spec``; either may be None."""
    if spec == "none":
        return None, None
    if spec == "backdoor+scaling":
        return A.make("backdoor"), A.make("scaling")
    if spec.startswith("fang-"):
        attack = A.make("fang", target=spec[5:], f=f)
    elif spec == "alie":
        attack = A.make("alie", n=devices, f=f)
    else:
        attack = A.make(spec)
    if attack.kind == "data":
        return attack, None
    return None, _Shared(attack) if spec in SHARED else attack


def backdoor_of(spec: str) -> A.Backdoor | None:
    return A.make("backdoor") if spec.startswith("backdoor") else None  # type: ignore[return-value]


def test_loss(model: T.DenseModel, x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> float:
    """Mean softmax cross-entropy (nats) of the model on (x, y)."""
    total = 0.0
    for at in range(0, len(y), chunk):
        logits = T.forward(model.params, x[at:at + chunk], model.input_scale, model.input_shift)[-1].astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        total += float(-logp[np.arange(len(z)), y[at:at + chunk]].sum())
    return total / len(y)


class Progress:
    """A progress bar on stderr (a line every few seconds when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 28):
        self.total, self.done, self.width = max(1, total), 0, width
        self.stream = stream or sys.stderr
        self.t0 = self._last = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def advance(self, n: int = 1, what: str = "") -> None:
        self.done = min(self.total, self.done + n)
        now = time.perf_counter()
        if not self.tty and now - self._last < 5 and self.done < self.total:
            return
        self._last = now
        frac = self.done / self.total
        spent = now - self.t0
        eta = spent / frac - spent if frac > 0 else 0
        bar = "█" * int(frac * self.width) + "░" * (self.width - int(frac * self.width))
        line = (f"[{bar}] {100 * frac:5.1f} % {self.done}/{self.total} rounds · {_clock(spent)} spent, "
                f"{_clock(eta)} left · {what}")
        self.stream.write(("\r" + line[:160] + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Extractor:
    """A released extractor as a device runs it: exported, its release checked, run by onnxruntime."""

    def __init__(self, weights: ExtractorWeights, threads: int):
        from edgefl.ml.backends import open_backend

        model = export(weights, "onnx")
        self.release = ModelRelease.of(model, weights, "onnx")
        self.backend = open_backend("onnxruntime", self.release.check(model), threads=threads)
        self.weights = weights

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.backend.run(images[at:at + 500]) for at in range(0, len(images), 500)])


class Lab:
    """The data split once (first ``train`` images across the devices, the next ``test`` held out) and the
    features of each extractor, cached; ``run`` measures one setting."""

    def __init__(self, data: Dataset, *, train: int, test: int, source: str = "",
                 extractors: dict[str, Callable[[], ExtractorWeights]] | None = None, root: int = ROOT,
                 threads: int | None = None):
        if train + test > len(data):
            raise ValueError(f"{train} training and {test} test images need {train + test}; the data has {len(data)}")
        self.train, rest = data.split(train)
        self.test = rest.subset(slice(0, test))
        self.source = source
        self.makers = {"random": lambda: ExtractorWeights.random(seed=0), **(extractors or {})}
        self.root_rows = np.sort(np.random.Generator(np.random.PCG64(7)).permutation(train)[:min(root, train)])
        self.threads = threads or os.cpu_count() or 1
        self._extractors: dict[str, _Extractor] = {}
        self._features: dict[tuple, np.ndarray] = {}
        self._poison: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._poison_key: tuple | None = None
        self.progress: Progress | None = None

    # ------------------------------------------------------------------ features

    def extractor(self, key: str) -> _Extractor:
        if key not in self._extractors:
            self._extractors[key] = _Extractor(self.makers[key](), self.threads)
        return self._extractors[key]

    def features(self, key: str, part: str) -> np.ndarray:
        """Clean features of the training ("train") or test ("test") images through extractor ``key``."""
        if (key, part) not in self._features:
            images = (self.train if part == "train" else self.test).images
            self._features[key, part] = self.extractor(key)(images)
        return self._features[key, part]

    def triggered(self, key: str, backdoor: A.Backdoor) -> tuple[np.ndarray, np.ndarray]:
        if (key, "trigger") not in self._features:
            images, labels = A.backdoor_test_set(backdoor, self.test.images, self.test.labels)
            self._features[key, "trigger"] = self.extractor(key)(images)
            self._features[key, "trigger_labels"] = labels
        return self._features[key, "trigger"], self._features[key, "trigger_labels"]

    def poisoned(self, key: str, attack: A.Attack, device: str, rows: np.ndarray, r: int):
        """An attacker's features and labels in round r: its images poisoned (seeded by the round), extracted."""
        scope = (key, attack)
        if scope != self._poison_key:  # settings come grouped by attack: keep one attack's rounds only
            self._poison, self._poison_key = {}, scope
        if (device, r) not in self._poison:
            images, labels = attack.data(self.train.images[rows], self.train.labels[rows], seed=r)
            self._poison[device, r] = (self.extractor(key)(images), np.asarray(labels))
        return self._poison[device, r]

    # ------------------------------------------------------------------ a run

    def run(self, s: Setting) -> dict:
        t0 = time.perf_counter()
        names = [f"device-{i:02d}" for i in range(s.devices)]
        parts = split_partition(s.partition).split(self.train.labels, s.devices, seed=s.seed)
        attackers = A.choose_attackers(names, s.malicious, s.seed) if s.attack != "none" else []
        f = defender_f(s.devices, len(attackers))
        row: dict = {**dataclasses.asdict(s), "hidden": list(s.hidden), "label": s.label(), "attackers": attackers,
                     "f": f, "items": [len(p) for p in parts]}
        aggregator = make_aggregator(s.aggregator, s.devices, f, s.seed)
        row["aggregator_options"] = agg.options_text(aggregator.options())
        try:
            aggregator.check(s.devices)
        except agg.AggregationError as exc:
            row["error"] = str(exc)
            if self.progress:
                self.progress.advance(s.rounds, s.label())
            return row
        feats = self.features(s.extractor, "train")
        data_attack, update_attack = make_attacks(s.attack, s.devices, f)
        devices = []
        for name, rows in zip(names, parts):
            noise = NoNoise() if s.epsilon is None else DiscreteLaplace()
            acct = None if s.epsilon is None else PrivacyAccountant(s.rounds * s.epsilon, device=name)
            priv = Privatiser(noise, epsilon=s.epsilon or 1.0, batch_size=s.batch, normaliser=s.normaliser,
                              accountant=acct)
            d = SimDevice(name, feats[rows], self.train.labels[rows], priv)
            if name in attackers and data_attack is not None:
                d.data = (lambda r, name=name, rows=rows: self.poisoned(s.extractor, data_attack, name, rows, r))
            if name in attackers and update_attack is not None:
                d.attack = update_attack  # type: ignore[assignment]
            devices.append(d)
        fog = s.method == "fog"
        config = T.TrainConfig(layers=[feats.shape[1], *s.hidden, 10], optimizer="adam", lr=1e-3,
                               batch_size=s.batch, seed=s.seed, prox_mu=1.0 if fog else 0.0)
        norm = devices[0].privatiser.normalise
        test_x = norm(self.features(s.extractor, "test")).astype(np.float32)
        backdoor = backdoor_of(s.attack)
        if backdoor is not None:
            trig, trig_y = self.triggered(s.extractor, backdoor)
            trig_x = norm(trig).astype(np.float32)
        standing = Standing()
        honest = [n for n in names if n not in attackers]
        curves: dict[str, list] = {"loss": [], "asr": [], "honest": [], "attackers": [], "attacker_share": []}

        def on_round(rr: RoundResult) -> None:
            senders = [u.sender for u in rr.updates]
            standing.score(senders, [u.weight for u in rr.updates], rr.result.weights)
            curves["loss"].append(test_loss(rr.model, test_x, self.test.labels))
            if backdoor is not None:
                curves["asr"].append(T.accuracy(rr.model, trig_x, trig_y))
            curves["honest"].append(float(np.mean([standing.of(n) for n in honest])) if honest else None)
            curves["attackers"].append(float(np.mean([standing.of(n) for n in attackers])) if attackers else None)
            curves["attacker_share"].append(float(sum(w for n, w in zip(senders, rr.result.weights)
                                                      if n in attackers)))
            if self.progress:
                self.progress.advance(1, f"{s.experiment}: {s.label()} · round {rr.round + 1}: "
                                         f"{100 * rr.accuracy:.1f} %")

        root = (feats[self.root_rows], self.train.labels[self.root_rows])
        accuracy = run_rounds(devices, config=config, rounds=s.rounds, epochs=s.epochs, test_features=
                              self.features(s.extractor, "test"), test_labels=self.test.labels,
                              aggregator=aggregator, task=s.experiment, warm_start=fog, average_releases=fog,
                              root=root, on_round=on_round)
        row.update(accuracy=accuracy, loss=curves["loss"], final=accuracy[-1],
                   asr=curves["asr"] if backdoor is not None else None,
                   reputation={"honest": curves["honest"], "attackers": curves["attackers"],
                               "devices": {n: standing.of(n) for n in names}},
                   attacker_share=curves["attacker_share"], seconds=time.perf_counter() - t0)
        if attackers:
            at = min(3, s.rounds) - 1
            row["reputation_separates"] = bool(curves["honest"][at] > INITIAL > curves["attackers"][at])
        if s.extractor != "random":
            ex = self.extractor(s.extractor)
            row["release"] = {"hash": ex.release.hash.hex(), "weights": ex.weights.digest().hex()}
        return row
