"""committee: byzantine members of a fog's PBFT committee while a federated task runs; the honest agree.

fog-1's sub-chain is kept by a committee of the fog and its devices (`site init --committee`), every
member its own ``edgefl run`` process over the fog's mTLS broker.  f = ⌊(n−1)/3⌋ devices run their replica
byzantine (``edgefl.consensus.byzantine``, started through ``edgefl.chaos.byzantine_member``; their part in
the task stays honest): the view-0 leader proposes two different blocks for one height, one to each half
of the committee; the others stay silent, break every signature, or replay their earlier messages.

Short form: n = 4, the view-0 leader equivocating, two rounds.  Long form: n = 4 once per behaviour as
the view-0 leader, then n = 16 with f = 5 (the first five views' leaders all byzantine: equivocating,
silent, bad signatures, replaying, equivocating).

Afterwards every round closed, the task's records are each on the chains once, every chain verifies
and interlocks, every honest replica verifies and agrees with the fog's chain at every height (the
safety invariant), and where a leader equivocated its two signed proposals are on the fog's chain as a
``Behaviour`` record that checks against the committee.
"""

from __future__ import annotations

from edgefl.chaos import checks
from edgefl.chaos.deploy import Deployment
from edgefl.chaos.scenario import Scenario
from edgefl.chaos.task import TASK, closed, opened, settle, small_task, start_all
from edgefl.consensus import Behaviour, InvalidEvidence, check_behaviour
from edgefl.consensus.byzantine import BEHAVIOURS
from edgefl.ledger import decode_block, decode_header

FOG = "fog-1"


def layouts(short: bool) -> list[tuple[int, list[str]]]:
    """(committee size, the behaviours of its first devices — the leaders of views 0, 1, …)."""
    if short:
        return [(4, ["equivocate"])]
    return [*((4, [b]) for b in BEHAVIOURS), (16, ["equivocate", "silent", "bad_sig", "replay", "equivocate"])]


class CommitteeFaults(Scenario):
    name = "committee"
    summary = ("byzantine members of a fog's PBFT committee (n = 4 and 16, f of 3f+1: equivocating leader, "
               "silent, bad signatures, replays) during a task; the honest replicas agree at every height")

    def run(self) -> None:
        rounds = 2
        runs = []
        for i, (n, behaviours) in enumerate(layouts(self.short)):
            devices = [f"dev-{j:02d}" for j in range(1, n)]  # sorted ids: dev-01 leads view 0, dev-02 view 1, …
            byzantine = dict(zip(devices, behaviours))
            with Deployment(self.workdir / f"run-{i}", {FOG: devices}, settings=small_task(rounds),
                            per_node={"cloud-1": ["fl.items=128"]}, committee=n, byzantine=byzantine) as dep:
                took = start_all(dep, timeout=120.0)
                self.say(f"  n = {n}, byzantine {', '.join(f'{d} {b}' for d, b in byzantine.items())}: "
                         f"site up, task recorded after {took:.1f} s")
                self.result.faults += len(byzantine)
                for r in range(rounds):
                    dep.wait(lambda: opened(dep, r), 300, f"round {r} open", every=0.1)
                    dep.wait(lambda: closed(dep, r), 300, f"round {r} aggregated on the main chain", every=0.1)
                settle(dep)
                tally = checks.task_records(dep, TASK, range(rounds), self.result.tally)
                checks.interlock(dep, tally)
                checks.verify_all(dep, tally)
                checks.replicas_agree(dep, FOG, tally, honest=lambda m: m not in byzantine)
                views = self._views(dep)
                if behaviours[0] == "equivocate":  # the view-0 leader surely proposed; later ones may never lead
                    self._evidence(dep, devices[0], tally)
                if behaviours[0] in ("equivocate", "silent", "bad_sig"):  # a leader that cannot lead is deposed
                    tally.check(f"n = {n}: the committee moved past view 0 (its leader {behaviours[0]})",
                                max(views) > 0, f"views of the committed blocks: {sorted(set(views))}")
                runs.append(f"n={n} {'+'.join(behaviours)}: views up to {max(views)}")
                self.say(f"  n = {n}: {rounds} rounds closed; {runs[-1]}")
        self.result.figures["runs"] = "; ".join(runs)

    @staticmethod
    def _views(dep: Deployment) -> list[int]:
        """The view each block of the fog's chain was committed in."""
        store = dep.store(FOG)
        return [decode_header(decode_block(raw, 64 << 20).header).view or 0
                for raw in store.blocks(1, store.tip().height)]

    @staticmethod
    def _evidence(dep: Deployment, leader: str, tally: checks.Tally) -> None:
        """An equivocating leader's two proposals are on the fog's chain, and the proof checks."""
        with dep.open_chain(FOG) as chain:
            committee = chain.spec.committee
        mine = [b for _, rec in dep.records(FOG, Behaviour.TYPE)
                if (b := rec.unwrap()).member == leader and b.kind == "equivocated"]
        problems = []
        for b in mine:
            try:
                check_behaviour(b, committee)
            except InvalidEvidence as exc:
                problems.append(str(exc))
        tally.check(f"{leader}'s equivocation is on {FOG}'s chain and its proof checks", bool(mine) and not problems,
                    f"{len(mine)} record(s){': ' + '; '.join(problems) if problems else ''}")
