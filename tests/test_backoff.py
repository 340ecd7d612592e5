"""runtime.backoff: the one backoff loop the nodes use — delays, giving up, and cancellation."""

import asyncio
import random
import time

import pytest

from edgefl.runtime.backoff import Backoff, retry


class Flaky:
    """Fails ``times`` times with ``exc``, then returns ``value``."""

    def __init__(self, times, exc=ConnectionError, value="done"):
        self.times, self.exc, self.value, self.calls = times, exc, value, 0

    async def __call__(self):
        self.calls += 1
        if self.calls <= self.times:
            raise self.exc(f"attempt {self.calls}")
        return self.value


async def test_it_returns_the_value_after_transient_failures_with_doubling_jittered_delays():
    seen = []
    f = Flaky(5)
    got = await retry(f, retry_on=(ConnectionError,), on_retry=lambda exc, d: seen.append((str(exc), d)),
                      backoff=Backoff(0.001, 0.004, jitter=0.25, rng=random.Random(1)))
    assert got == "done" and f.calls == 6
    assert [m for m, _ in seen] == [f"attempt {i}" for i in range(1, 6)]
    for (_, d), base in zip(seen, [0.001, 0.002, 0.004, 0.004, 0.004]):
        assert 0.75 * base <= d <= 1.25 * base, (d, base)
    assert len({d for _, d in seen}) == 5  # jittered: no two alike


def test_the_delays_double_up_to_the_cap_and_the_jitter_stays_in_its_band():
    b = Backoff(0.5, 10.0, jitter=0.0)
    gen = b.delays()
    assert [next(gen) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
    with pytest.raises(ValueError):
        Backoff(1, 2, jitter=1.0)


async def test_it_gives_up_when_keep_going_turns_false_and_never_calls_again():
    f = Flaky(100)
    state = {"open": True}

    def later(exc, delay):
        if f.calls == 3:
            state["open"] = False

    got = await retry(f, retry_on=(ConnectionError,), keep_going=lambda: state["open"], on_retry=later,
                      backoff=Backoff(0.001, 0.001))
    assert got is None and f.calls == 3
    assert await retry(Flaky(0), retry_on=(ConnectionError,), keep_going=lambda: False) is None


async def test_it_gives_up_at_the_deadline_and_cuts_the_last_sleep_there():
    f = Flaky(10 ** 6)
    start = time.monotonic()
    got = await retry(f, retry_on=(ConnectionError,), backoff=Backoff(60.0, 60.0, deadline=start + 0.05))
    # one attempt, then a sleep cut from a minute to what was left of the deadline, then no second attempt
    assert got is None and f.calls == 1


async def test_other_errors_and_a_giving_up_on_retry_go_to_the_caller():
    with pytest.raises(KeyError):
        await retry(Flaky(1, exc=KeyError), retry_on=(ConnectionError,))

    def give_up(exc, delay):
        raise RuntimeError("refused for good") from exc

    f = Flaky(3)
    with pytest.raises(RuntimeError, match="for good"):
        await retry(f, retry_on=(ConnectionError,), on_retry=give_up)
    assert f.calls == 1


async def test_cancellation_during_the_wait_stops_it_without_another_attempt():
    f = Flaky(10 ** 6)
    task = asyncio.create_task(retry(f, retry_on=(ConnectionError,), backoff=Backoff(30.0, 30.0)))
    while f.calls == 0:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert f.calls == 1


async def test_cancellation_inside_an_attempt_is_not_retried():
    calls = []

    async def attempt():
        calls.append(1)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retry(attempt, retry_on=(Exception,), backoff=Backoff(0.001, 0.001))
    assert calls == [1]
