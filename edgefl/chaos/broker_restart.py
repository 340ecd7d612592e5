"""broker-restart: a Mosquitto restarted in the middle of a round; the round completes, every update once.

A site of a cloud and two fogs with their devices runs a task.  In the rounds the seed picks, one broker
(a fog's: its devices, its fog and its bridge lose it; or the cloud's: every bridge and the cloud lose
it) is stopped with SIGTERM (it saves its persistent sessions) once a seeded number of the round's
devices have recorded their privacy spend, plus a seeded delay, and started again after a seeded
outage.  Every session reconnects to its persistent session; QoS1 messages the broker held, and the ones
each outbox kept, are delivered; duplicates are dropped by signature and by the chains.
"""

from __future__ import annotations

import time

from edgefl.chaos import checks
from edgefl.chaos.deploy import Deployment
from edgefl.chaos.scenario import Scenario
from edgefl.chaos.task import (
    TASK,
    closed,
    opened,
    settle,
    small_task,
    spends,
    start_all,
)


class BrokerRestart(Scenario):
    name = "broker-restart"
    summary = ("a fog's or the cloud's Mosquitto restarted mid-round (SIGTERM, back after a seeded outage); "
               "the round completes, no update lost or applied twice")

    def run(self) -> None:
        rounds = 2 if self.short else 3
        fogs = ({"fog-1": ["dev-1"], "fog-2": ["dev-2"]} if self.short
                else {"fog-1": ["dev-1", "dev-3"], "fog-2": ["dev-2", "dev-4"]})
        faulty = [1] if self.short else list(range(rounds))  # the rounds with a restart
        devices = sum(map(len, fogs.values()))
        restarts = []
        with Deployment(self.workdir, fogs, settings=small_task(rounds),
                        per_node={"cloud-1": ["fl.items=128"]}) as dep:
            took = start_all(dep)
            self.say(f"  site up, task recorded after {took:.1f} s")
            for r in range(rounds):
                dep.wait(lambda: opened(dep, r), 240, f"round {r} open", every=0.1)
                if r in faulty:
                    broker = self.rng.choice([dep.cloud, *dep.fogs])
                    after = self.rng.randint(0, devices)
                    delay, outage = self.rng.uniform(0, 0.5), self.rng.uniform(0.2, 2.0)
                    dep.wait(lambda: spends(dep, r) >= after or closed(dep, r), 240,
                             f"{after} privacy spends in round {r}", every=0.02)
                    time.sleep(delay)
                    state = f"{spends(dep, r)} of {devices} spends recorded"
                    dep.restart_broker(broker, outage)
                    self.result.faults += 1
                    restarts.append(f"{broker} in round {r}")
                    self.say(f"  round {r}: {broker}'s broker restarted ({state}, {delay:.2f} s later; "
                             f"down {outage:.2f} s)")
                t0 = time.monotonic()
                dep.wait(lambda: closed(dep, r), 240, f"round {r} aggregated on the main chain", every=0.1)
                self.say(f"  round {r} closed ({time.monotonic() - t0:.1f} s after it opened here)")
            settle(dep)
            tally = checks.task_records(dep, TASK, range(rounds))
            checks.interlock(dep, tally)
            checks.verify_all(dep, tally)
            self.result.tally = tally
            self.result.figures["restarted"] = ", ".join(restarts)
