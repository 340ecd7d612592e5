"""Following a deployed federated task from its chains: when a round opened, how far it got, when it closed."""

from __future__ import annotations

import time

from edgefl.fl import Aggregation, Task
from edgefl.ml.privacy import PrivacySpend

TASK = "digits"  # the cloud profile's fl.task


def small_task(rounds: int) -> list[str]:
    """Settings for every node: the small task of ``rounds`` rounds (and the cloud's held-out data)."""
    from edgefl.chaos.deploy import SMALL_TASK

    return [*SMALL_TASK, f"fl.rounds={rounds}"]


def closed(dep, round: int) -> bool:
    """The cloud recorded its aggregation of ``round`` (and publishes the next global model)."""
    return any(rec.signer == dep.cloud and (a := rec.unwrap()).task == TASK and a.round == round
               for _, rec in dep.records(dep.cloud, Aggregation.TYPE))


def opened(dep, round: int) -> bool:
    """``round`` is open: the task is recorded (round 0) or the round before closed."""
    if round == 0:
        return any(rec.unwrap().task == TASK for _, rec in dep.records(dep.cloud, Task.TYPE))
    return closed(dep, round - 1)


def spends(dep, round: int) -> int:
    """How many devices recorded their privacy spend for ``round`` (they are releasing their batches)."""
    return sum(1 for fog in dep.fogs for _, rec in dep.records(fog, PrivacySpend.TYPE)
               if (s := rec.unwrap()).task == TASK and s.round == round)


def start_all(dep, timeout: float = 60.0) -> float:
    """Brokers, then the cloud, the fogs and the devices; returns once the task is recorded (seconds taken)."""
    t0 = time.monotonic()
    dep.start_brokers()
    for node in [dep.cloud, *dep.fogs, *(d for ds in dep.fogs.values() for d in ds)]:
        dep.start(node)
    dep.wait(lambda: opened(dep, 0), timeout, "the cloud's task on the main chain", every=0.2)
    return time.monotonic() - t0


def settle(dep, timeout: float = 30.0) -> None:
    """Until every fog's blocks up to its present tip are anchored on the main chain (the interlock caught
    up; a fog's chain grows on meanwhile, by the main chain's beacons the anchors themselves cause)."""
    tips = {fog: dep.store(fog).tip().height for fog in dep.fogs}

    def anchored() -> bool:
        main = dep.store(dep.cloud)
        return all((top := main.latest_anchor(fog)) is not None and top[0] >= tips[fog] for fog in dep.fogs)

    dep.wait(anchored, timeout, "every fog's blocks anchored on the main chain", every=0.2)
