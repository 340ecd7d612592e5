"""Aggregators: combine device models into one, behind one small interface.

An aggregator is chosen by name (``AGGREGATORS``) and is a pure function of
its updates in the order given, so an aggregation recorded on a sub-chain can
be replayed bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

import numpy as np


class AggregationError(ValueError):
    """Updates that cannot be combined (none, mismatched shapes, bad weights)."""


@dataclass(frozen=True)
class Update:
    """One participant's parameters and its weight (usually its number of training examples)."""

    params: Sequence[np.ndarray]
    weight: float = 1.0
    sender: str = ""


class Aggregator(Protocol):
    name: ClassVar[str]

    def aggregate(self, updates: Sequence[Update]) -> list[np.ndarray]: ...


def _check(updates: Sequence[Update]) -> None:
    if not updates:
        raise AggregationError("no updates to aggregate")
    shapes = [p.shape for p in updates[0].params]
    for u in updates:
        if [p.shape for p in u.params] != shapes:
            raise AggregationError(f"update from {u.sender or '?'} has shapes that differ from the first update's")
        if not (np.isfinite(u.weight) and u.weight > 0):
            raise AggregationError(f"update from {u.sender or '?'} has weight {u.weight}; weights must be positive")


class FedAvg:
    """McMahan et al. 2017: the weighted mean of the parameters, summed in float64 in the given order."""

    name: ClassVar[str] = "fedavg"

    def aggregate(self, updates: Sequence[Update]) -> list[np.ndarray]:
        _check(updates)
        total = float(sum(u.weight for u in updates))
        out = []
        for i, first in enumerate(updates[0].params):
            acc = np.zeros(first.shape, np.float64)
            for u in updates:
                acc += (u.weight / total) * np.asarray(u.params[i], np.float64)
            out.append(acc.astype(first.dtype))
        return out


AGGREGATORS: dict[str, type] = {FedAvg.name: FedAvg}


def aggregator(name: str, **options) -> Aggregator:
    try:
        return AGGREGATORS[name](**options)
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}") from None
