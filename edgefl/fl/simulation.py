"""Federated rounds in one process: devices release private features, the fog trains and aggregates.

Used by the accuracy benchmark and the demo.  Each round every device
releases its items afresh (ε charged again: sequential composition), the fog
trains one copy of the round's global model per device with the deterministic
trainer, and the aggregator combines them weighted by examples.  In the first
round the fog fits the model's input transform to the released (noisy)
features and, with ``warm_start``, embeds a ridge classifier fitted to them in
the model (``DenseModel.with_warm_start``); with ``average_releases`` it
trains each round on the mean of every release of an item so far
(``ReleaseMean``).  All of it is post-processing of what the devices
released, so it costs no privacy beyond the ε charged per release.

For experiments (``edgefl.experiments``) a device may misbehave as its
networked twin would: ``data`` gives its (possibly poisoned) features and
labels per round, as a device applies a data attack to its images before
extraction each round, and ``attack`` replaces the model it sends (an update
attack, on-device training's threat), seeing the round's honest models;
``on_round`` sees every round's models and aggregation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgefl.fl.aggregate import Aggregator, FedAvg, Result, Update
from edgefl.fl.attacks import Attack, NoAttack
from edgefl.ml import Privatiser, normalise
from edgefl.ml import trainer as T


@dataclass
class SimDevice:
    name: str
    features: np.ndarray  # clean extractor output, (n, 3920): never leaves the device unperturbed
    labels: np.ndarray
    privatiser: Privatiser
    attack: Attack = field(default_factory=NoAttack)  # an update attack on the model it sends
    data: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None  # round -> (features, labels) instead

    def round_data(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        return self.data(r) if self.data is not None else (self.features, self.labels)


@dataclass
class RoundResult:
    """What ``on_round`` sees: the round's new global model, the updates as sent, the aggregation."""

    round: int
    model: T.DenseModel
    updates: list[Update]
    result: Result
    accuracy: float


def run_rounds(devices: list[SimDevice], *, config: T.TrainConfig, rounds: int, epochs: int,
               test_features: np.ndarray, test_labels: np.ndarray, aggregator: Aggregator | None = None,
               task: str = "sim", model: T.DenseModel | None = None, warm_start: bool = False,
               average_releases: bool = False, root: tuple[np.ndarray, np.ndarray] | None = None,
               on_round: Callable[[RoundResult], None] | None = None) -> list[float]:
    """Test accuracy of the global model after each round (test features normalised, no noise).

    ``root`` is the server's own (clean) features and labels: for an
    aggregator that needs a reference (FLTrust), each round's model trained
    on them, as the networked cloud does with its held-out data.  Test and
    root features are normalised as the devices' privatiser normalises.
    """
    aggregator = aggregator or FedAvg()
    model = model or T.init_model(config.layers, seed=config.seed)
    norm = devices[0].privatiser.normalise if devices else (lambda x: normalise(x, config.batch_size))
    test = norm(test_features).astype(np.float32)
    means = {d.name: T.ReleaseMean() for d in devices}
    accuracies = []
    for r in range(rounds):
        released = []
        for d in devices:
            features, labels = d.round_data(r)
            rel = d.privatiser.release(np.arange(len(labels)), features, task=task, round=r)
            x = means[d.name].add(rel.ids, rel.values) if average_releases else np.asarray(rel.values, np.float32)
            released.append((d, x, labels[rel.ids]))
        if r == 0:
            model = model.with_input_transform(np.concatenate([x for _, x, _ in released]))
            if warm_start:
                model = model.with_warm_start(np.concatenate([x for _, x, _ in released]),
                                              np.concatenate([y for _, _, y in released]))
        updates, attackers = [], []
        for d, x, y in released:
            if len(y):
                state = T.Trainer(config).fit(model, x, y, epochs=epochs)
                updates.append(Update(state.model.params, weight=len(y), sender=d.name))
                attackers.append(d.attack if d.attack.kind == "update" else None)
        honest = [u.params for u, a in zip(updates, attackers) if a is None]
        for i, a in enumerate(attackers):  # every attacker sees the honest models of the round (full knowledge)
            if a is not None:
                seed = zlib.crc32(f"{updates[i].sender}/{r}".encode())
                updates[i] = Update(a.update(updates[i].params, honest, origin=model.params, seed=seed),
                                    updates[i].weight, updates[i].sender)
        reference = None
        if aggregator.needs_reference:
            if root is None:
                raise ValueError(f"{aggregator.name} needs the server's root data: pass root=(features, labels)")
            x, y = norm(root[0]).astype(np.float32), root[1]
            reference = T.Trainer(config).fit(model, x, y, epochs=epochs).model.params
        result = aggregator.aggregate(updates, origin=model.params, reference=reference)
        model = model.with_params(result.params)
        accuracies.append(T.accuracy(model, test, test_labels))
        if on_round is not None:
            on_round(RoundResult(r, model, updates, result, accuracies[-1]))
    return accuracies
