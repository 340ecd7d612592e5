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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefl.fl.aggregate import Aggregator, FedAvg, Update
from edgefl.ml import trainer as T
from edgefl.ml.privacy import Privatiser, normalise


@dataclass
class SimDevice:
    name: str
    features: np.ndarray  # clean extractor output, (n, 3920): never leaves the device unperturbed
    labels: np.ndarray
    privatiser: Privatiser


def run_rounds(devices: list[SimDevice], *, config: T.TrainConfig, rounds: int, epochs: int,
               test_features: np.ndarray, test_labels: np.ndarray, aggregator: Aggregator | None = None,
               task: str = "sim", model: T.DenseModel | None = None, warm_start: bool = False,
               average_releases: bool = False, root: tuple[np.ndarray, np.ndarray] | None = None) -> list[float]:
    """Test accuracy of the global model after each round (test features normalised, no noise).

    ``root`` is the server's own (clean) features and labels: for an
    aggregator that needs a reference (FLTrust), each round's model trained
    on them, as the networked cloud does with its held-out data.
    """
    aggregator = aggregator or FedAvg()
    model = model or T.init_model(config.layers, seed=config.seed)
    test = normalise(test_features, config.batch_size).astype(np.float32)
    means = {d.name: T.ReleaseMean() for d in devices}
    accuracies = []
    for r in range(rounds):
        released = []
        for d in devices:
            rel = d.privatiser.release(np.arange(len(d.labels)), d.features, task=task, round=r)
            x = means[d.name].add(rel.ids, rel.values) if average_releases else np.asarray(rel.values, np.float32)
            released.append((d, x, d.labels[rel.ids]))
        if r == 0:
            model = model.with_input_transform(np.concatenate([x for _, x, _ in released]))
            if warm_start:
                model = model.with_warm_start(np.concatenate([x for _, x, _ in released]),
                                              np.concatenate([y for _, _, y in released]))
        updates = []
        for d, x, y in released:
            if len(y):
                state = T.Trainer(config).fit(model, x, y, epochs=epochs)
                updates.append(Update(state.model.params, weight=len(y), sender=d.name))
        reference = None
        if aggregator.needs_reference:
            if root is None:
                raise ValueError(f"{aggregator.name} needs the server's root data: pass root=(features, labels)")
            x, y = normalise(root[0], config.batch_size).astype(np.float32), root[1]
            reference = T.Trainer(config).fit(model, x, y, epochs=epochs).model.params
        model = model.with_params(aggregator.aggregate(updates, origin=model.params, reference=reference).params)
        accuracies.append(T.accuracy(model, test, test_labels))
    return accuracies
