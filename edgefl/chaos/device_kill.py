"""device-kill: kill -9 of a device in the middle of its upload, then restarted; nothing sent or spent twice.

A fog with two devices runs a task.  In every round one device is killed with SIGKILL at seeded points
of its release: while it extracts, just after its privacy spend is on the fog's chain, just after its
``DataCollected`` is, or just after the fog stored its batch (the acknowledgement in flight); each time it
is started again after a seeded pause.  Afterwards each device has one privacy spend per round on the
fog's chain, its own accountant charged exactly those, and the fog one batch, one ``DataCollected`` and
one run of training steps per device and round.
"""

from __future__ import annotations

import time

from edgefl.chaos import checks
from edgefl.chaos.deploy import Deployment
from edgefl.chaos.scenario import Scenario
from edgefl.chaos.task import TASK, closed, opened, settle, small_task, start_all
from edgefl.ledger import DataCollected
from edgefl.ml import PrivacyAccountant
from edgefl.ml.privacy import PrivacySpend
from edgefl.runtime import StateFile

PHASES = ("extracting", "spend recorded", "batch attested", "batch stored")


class DeviceKill(Scenario):
    name = "device-kill"
    summary = ("kill -9 of a device (a member of its fog's PBFT committee) mid-upload at seeded points, "
               "restarted; no double upload, no privacy budget spent twice, the replicas agree")

    def run(self) -> None:
        rounds, per_round = (2, 1) if self.short else (4, 3)
        victim = "dev-1"
        # three devices: fog-1's sub-chain is a PBFT committee of four, and the victim (the first id) its view-0
        # leader, killed mid-commit as often as mid-upload
        fogs = {"fog-1": ["dev-1", "dev-2", "dev-3"]}
        kills = []
        with Deployment(self.workdir, fogs, settings=small_task(rounds),
                        per_node={"cloud-1": ["fl.items=128"]}) as dep:
            start_all(dep)
            for r in range(rounds):
                dep.wait(lambda: opened(dep, r), 240, f"round {r} open", every=0.05)
                for _ in range(per_round):
                    phase = self.rng.choice(PHASES)
                    reached = self._reach(dep, victim, r, phase)
                    delay = self.rng.uniform(0, 1.5) if phase == "extracting" else self.rng.uniform(0, 0.05)
                    time.sleep(delay)
                    dep.kill(victim)
                    self.result.faults += 1
                    kills.append(f"r{r} {phase if reached else 'done'}+{1000 * delay:.0f}ms")
                    time.sleep(self.rng.uniform(0, 1.0))
                    dep.start(victim)
                dep.wait(lambda: closed(dep, r), 240, f"round {r} aggregated on the main chain", every=0.1)
                self.say(f"  round {r}: {victim} killed {per_round} times ({', '.join(kills[-per_round:])}); "
                         f"round closed")
            settle(dep)
            tally = checks.task_records(dep, TASK, range(rounds))
            self._accountants(dep, fogs["fog-1"], rounds, tally)
            checks.interlock(dep, tally)
            checks.verify_all(dep, tally)
            checks.replicas_agree(dep, "fog-1", tally)
            self.result.tally = tally
            self.result.figures["kills"] = ", ".join(kills)

    def _reach(self, dep: Deployment, device: str, round: int, phase: str) -> bool:
        """Wait until ``device`` reached ``phase`` of ``round`` (False: it finished the round first)."""
        cfg = dep.config("fog-1")
        state = StateFile(cfg.path(cfg.fl.state_file))

        def stored() -> bool:
            return device in state.load({"batches": {}})["batches"].get(str(round), {})

        def spent() -> bool:
            return any((s := rec.unwrap()).device == device and s.round == round
                       for _, rec in dep.records("fog-1", PrivacySpend.TYPE, device=device))

        attested_before = len(dep.records("fog-1", DataCollected.TYPE, device=device))
        probes = {"extracting": lambda: True, "spend recorded": spent,
                  "batch attested": lambda: len(dep.records("fog-1", DataCollected.TYPE, device=device))
                  > attested_before, "batch stored": stored}
        dep.wait(lambda: probes[phase]() or stored() or closed(dep, round), 120, f"{device}: {phase}", every=0.005)
        return probes[phase]()

    def _accountants(self, dep: Deployment, devices: list[str], rounds: int, tally: checks.Tally) -> None:
        """Each device's own accountant charged ε once per round, as its spends on the fog's chain say."""
        for device in devices:
            cfg = dep.config(device)
            spends = [s for _, rec in dep.records("fog-1", PrivacySpend.TYPE, device=device)
                      if (s := rec.unwrap()).task == TASK]
            acct = PrivacyAccountant(cfg.ml.epsilon_budget, device=device, unit=cfg.ml.privacy_unit,
                                     path=cfg.path(cfg.ml.privacy_file))
            charged = {acct.spent(i) for i in range(cfg.fl.items)}
            recorded = sum(s.epsilon for s in spends)
            expected = rounds * cfg.ml.epsilon
            over = max(charged) - expected
            if over > 1e-9:
                tally.duplicates += round(over / cfg.ml.epsilon)
            tally.check(f"{device}: its accountant charged each item ε once per round",
                        charged == {expected} and abs(recorded - expected) < 1e-9,
                        f"charged {sorted(charged)} per item, spends on the chain {recorded:g}, "
                        f"{rounds} rounds at ε={cfg.ml.epsilon:g}")
