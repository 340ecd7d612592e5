"""Which devices a fog trains in a round: drawn with probability growing with reputation, seeded and recorded.

    chosen = select(candidates, weights, k, seed=selection_seed(task, round, fog, model))

A weighted draw without replacement (Efraimidis and Spirakis 2006): each
candidate c gets the key log(u_c) / w_c, u_c uniform in (0, 1) from
SHA-256(seed ‖ c), and the k largest keys win, so a candidate's chance grows
with its weight w_c = max(reputation, floor) — the floor gives a newcomer
(reputation 0.5) and a fallen device a chance.  Everything is a function of
the record's fields, so ``check_selection`` recomputes a recorded draw; the
seed binds the task, the round, the fog and the round's model, so no fog
picks its seed.
"""

from __future__ import annotations

import math
from typing import Annotated, Sequence

from edgefl.codec import MaxLen, Message, Range, SchemaError, message
from edgefl.crypto import tagged_hash
from edgefl.fl.protocol import MAX_PARTIES

SEED_TAG = b"edgefl/selection/v1"
FLOOR = 0.1


@message("fl.selection")
class Selection(Message):
    """A fog's draw of a round's participants from the devices whose batches came (in name order)."""

    task: Annotated[str, MaxLen(128)]
    round: Annotated[int, Range(0, 1 << 20)]
    seed: Annotated[bytes, MaxLen(32)]
    candidates: Annotated[list[Annotated[str, MaxLen(128)]], MaxLen(MAX_PARTIES)]
    weights: Annotated[list[Annotated[float, Range(0.0, 1.0)]], MaxLen(MAX_PARTIES)]  # max(reputation, floor)
    k: Annotated[int, Range(1, MAX_PARTIES)]  # how many it draws (fl.participants)
    chosen: Annotated[list[Annotated[str, MaxLen(128)]], MaxLen(MAX_PARTIES)]

    def __post_init__(self):
        if len(self.weights) != len(self.candidates) or not set(self.chosen) <= set(self.candidates):
            raise SchemaError("one weight per candidate; the chosen are candidates", field="fl.selection")


def selection_seed(task: str, round: int, fog: str, model: bytes) -> bytes:
    return tagged_hash(SEED_TAG, f"{task}\0{round}\0{fog}\0".encode() + bytes(model))


def weight(reputation: float, floor: float = FLOOR) -> float:
    return min(1.0, max(floor, reputation))


def select(candidates: Sequence[str], weights: Sequence[float], k: int, *, seed: bytes) -> list[str]:
    """``k`` of ``candidates`` (all if fewer), in name order; deterministic in (candidates, weights, seed)."""
    if len(candidates) != len(weights):
        raise ValueError(f"{len(candidates)} candidates, {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise ValueError("selection weights must be positive")
    keys = []
    for c, w in zip(candidates, weights):
        u = (int.from_bytes(tagged_hash(SEED_TAG, bytes(seed) + c.encode())[:8], "big") + 1) / (2 ** 64 + 1)
        keys.append((math.log(u) / w, c))
    return sorted(c for _, c in sorted(keys, reverse=True)[:max(0, k)])


def check_selection(record: Selection) -> bool:
    """A recorded draw is what its fields give."""
    return select(record.candidates, record.weights, record.k, seed=record.seed) == list(record.chosen)
