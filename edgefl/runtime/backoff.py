"""One way to try again: exponential backoff with jitter, a deadline, and cancellation left alone.

    ok = await retry(deliver, retry_on=(RequestTimeout, ConnectionError),
                     keep_going=lambda: view.is_open(task, round), on_retry=log_it)

``attempt`` is awaited until it returns; an exception of ``retry_on`` is
handed to ``on_retry`` (which may raise to give up) and the attempt runs again
after the next delay: ``first``, doubling up to ``cap``, each scaled by a
random factor in [1 − jitter, 1 + jitter] so that devices cut off together do
not come back in step. ``retry`` gives up (returns ``None``) once
``keep_going()`` is false or the deadline has passed, checked before every
attempt; the last sleep is cut at the deadline. Anything else an attempt
raises, and ``CancelledError`` at any await, goes straight to the caller.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")


class Backoff:
    """The delays between attempts; ``deadline`` is on ``time.monotonic()`` (None: no deadline)."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, *, jitter: float = 0.2,
                 deadline: float | None = None, rng: random.Random | None = None):
        if not (0 < first <= cap) or not (0 <= jitter < 1):
            raise ValueError(f"backoff needs 0 < first <= cap and 0 <= jitter < 1, got {first}, {cap}, {jitter}")
        self.first, self.cap, self.jitter, self.deadline = first, cap, jitter, deadline
        self.rng = rng or random.Random()

    def delays(self) -> Iterator[float]:
        base = self.first
        while True:
            yield base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
            base = min(self.cap, 2 * base)

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


async def retry(attempt: Callable[[], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...],
                backoff: Backoff | None = None, keep_going: Callable[[], bool] = lambda: True,
                on_retry: Callable[[BaseException, float], None] | None = None) -> T | None:
    """``attempt()``'s value, or None once ``keep_going()`` is false or the deadline passed."""
    backoff = backoff or Backoff()
    for delay in backoff.delays():
        if not keep_going() or backoff.left() <= 0:
            return None
        try:
            return await attempt()
        except retry_on as exc:
            if on_retry is not None:
                on_retry(exc, delay)
        await asyncio.sleep(max(0.0, min(delay, backoff.left())))
    raise AssertionError("unreachable: delays() never ends")  # pragma: no cover
