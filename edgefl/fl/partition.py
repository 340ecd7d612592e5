"""Partitioners: split a data set's rows among participants, behind one small interface.

``partitioner("iid")``, ``partitioner("dirichlet", alpha=0.5)`` or
``partitioner("shards", shards_per_part=2)``; ``split(labels, parts, seed)``
returns one array of row indices per participant, disjoint, deterministic in
the seed.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np

from edgefl.errors import EdgeflError


class PartitionError(EdgeflError, ValueError):
    pass


class Partitioner(Protocol):
    name: ClassVar[str]

    def split(self, labels: np.ndarray, parts: int, seed: int = 0) -> list[np.ndarray]: ...


def _check(labels: np.ndarray, parts: int) -> None:
    if parts < 1:
        raise PartitionError(f"need at least one part, got {parts}")
    if len(labels) < parts:
        raise PartitionError(f"{len(labels)} rows cannot give {parts} non-empty parts")


class IID:
    """Equal shares (sizes differ by at most one) of a random permutation."""

    name: ClassVar[str] = "iid"

    def split(self, labels: np.ndarray, parts: int, seed: int = 0) -> list[np.ndarray]:
        _check(labels, parts)
        order = np.random.Generator(np.random.PCG64(seed)).permutation(len(labels))
        return [np.sort(p) for p in np.array_split(order, parts)]


class Dirichlet:
    """Label skew: each class is spread over the parts in Dirichlet(α) proportions (small α: more skew)."""

    name: ClassVar[str] = "dirichlet"

    def __init__(self, alpha: float = 0.5):
        if not alpha > 0:
            raise PartitionError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha

    def split(self, labels: np.ndarray, parts: int, seed: int = 0) -> list[np.ndarray]:
        _check(labels, parts)
        rng = np.random.Generator(np.random.PCG64(seed))
        out: list[list[int]] = [[] for _ in range(parts)]
        for cls in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([self.alpha] * parts))[:-1] * len(rows)).astype(int)
            for part, chunk in zip(out, np.split(rows, cuts)):
                part.extend(chunk.tolist())
        # no participant is left empty: the largest part gives one row to each empty one
        for part in out:
            if not part:
                donor = max(out, key=len)
                part.append(donor.pop())
        return [np.sort(np.array(p, np.int64)) for p in out]


class Shards:
    """McMahan et al.'s pathological split: sort by label, cut into shards, deal each part a few."""

    name: ClassVar[str] = "shards"

    def __init__(self, shards_per_part: int = 2):
        if shards_per_part < 1:
            raise PartitionError(f"shards_per_part must be at least 1, got {shards_per_part}")
        self.shards_per_part = shards_per_part

    def split(self, labels: np.ndarray, parts: int, seed: int = 0) -> list[np.ndarray]:
        _check(labels, parts * self.shards_per_part)
        rng = np.random.Generator(np.random.PCG64(seed))
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, parts * self.shards_per_part)
        deal = rng.permutation(len(shards))
        return [np.sort(np.concatenate([shards[j] for j in deal[i::parts]])) for i in range(parts)]


PARTITIONERS: dict[str, type] = {c.name: c for c in (IID, Dirichlet, Shards)}


def partitioner(name: str, **options) -> Partitioner:
    try:
        return PARTITIONERS[name](**options)
    except KeyError:
        raise ValueError(f"unknown partitioner {name!r}; known: {', '.join(PARTITIONERS)}") from None
