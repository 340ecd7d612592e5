"""main-committee: the main chain kept by PBFT among the cloud and three fogs while a fog is killed.

With three fogs the main chain's final committee (the cloud and the fogs) has four members, so its blocks are
made by PBFT among them (``edgefl.consensus.committees.main_fields``): every fog keeps a replica in its own
``edgefl run`` process and the replicas speak over the fogs' mTLS brokers, bridged to the cloud's
(``pbft-main``). A task runs; at a seeded moment of a seeded round one fog — short form: the first view's
leader when it is a fog — is killed with SIGKILL and restarted after a seeded outage.

Afterwards every round closed (the three others kept the main chain going while it was down: one fault of
3f+1 = 4), the task's records are each on the chains once, every chain verifies and interlocks, and every
fog's replica of the main chain verifies and agrees with the cloud's at every height (the safety invariant),
the restarted one included (it caught up by state transfer).
"""

from __future__ import annotations

import time

from edgefl.chaos import checks
from edgefl.chaos.deploy import Deployment
from edgefl.chaos.scenario import Scenario
from edgefl.chaos.task import TASK, closed, opened, settle, small_task, start_all
from edgefl.consensus.proposal import primary_of

FOGS = {"fog-1": ["dev-1"], "fog-2": ["dev-2"], "fog-3": ["dev-3"]}


class MainCommittee(Scenario):
    name = "main-committee"
    summary = ("the main chain kept by PBFT among the cloud and three fogs (every fog a replica, over bridged "
               "mTLS brokers) while a fog is killed and restarted mid-task; the replicas agree")

    def run(self) -> None:
        rounds = 2 if self.short else 4
        with Deployment(self.workdir, FOGS, settings=small_task(rounds),
                        per_node={"cloud-1": ["fl.items=128"]}) as dep:
            with dep.open_chain(dep.cloud) as main:
                spec = main.spec
            members = spec.committee.ids
            self.result.tally.check("the main chain is a PBFT committee of the cloud and the fogs",
                                    spec.sealer == "quorum" and members == sorted([dep.cloud, *FOGS]),
                                    f"sealer {spec.sealer}, committee {members}")
            leader = (primary_of(spec) or (lambda v: members[v % len(members)]))(0)
            victim = leader if leader in FOGS and self.short else self.rng.choice(sorted(FOGS))
            at_round = self.rng.randrange(rounds)
            outage = self.rng.uniform(1.0, 4.0)
            took = start_all(dep, timeout=120.0)
            self.say(f"  site up, task recorded after {took:.1f} s; the main chain's view-0 leader is {leader}; "
                     f"{victim} goes down in round {at_round} for {outage:.1f} s")
            for r in range(rounds):
                dep.wait(lambda: opened(dep, r), 300, f"round {r} open", every=0.1)
                if r == at_round:
                    time.sleep(self.rng.uniform(0.0, 1.5))
                    height = dep.store(dep.cloud).tip().height
                    dep.kill(victim)
                    self.result.faults += 1
                    time.sleep(outage)
                    dep.start(victim)
                    self.say(f"  round {r}: {victim} killed at main height {height}, back after {outage:.1f} s")
                dep.wait(lambda: closed(dep, r), 300, f"round {r} aggregated on the main chain", every=0.1)
            settle(dep)
            tally = checks.task_records(dep, TASK, range(rounds), self.result.tally)
            checks.interlock(dep, tally)
            checks.verify_all(dep, tally)
            checks.replicas_agree(dep, dep.cloud, tally)
            top = dep.store(dep.cloud).tip().height
            self.result.figures["main_height"] = top
            self.result.figures["victim"] = victim
            self.say(f"  {rounds} rounds closed; main chain at height {top}, kept by {', '.join(members)}")
