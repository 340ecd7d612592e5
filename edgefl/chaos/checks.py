"""What a scenario checks afterwards, from the chains alone: every record a delivered message left, once.

A federated task leaves, per round, on each fog's sub-chain one ``PrivacySpend`` and one
``DataCollected`` per device (the release and the batch the fog stored), one ``TrainingStep`` per step
of each device's training and one ``Aggregation`` of all its devices; on the main chain one ``FogUpdate``
per fog and one ``Aggregation`` of all the fogs.  ``Tally`` counts them by key: a key that is missing is
a message lost, a key recorded more than once (or a record for something that was never stored) a
duplicate.  Type-II anchors must name the blocks the fogs hold, and every chain must verify.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgefl.fl import Aggregation, FogUpdate
from edgefl.fl.protocol import run_id
from edgefl.fl.round import steps_per_round
from edgefl.ledger import CoinUpdate, DataCollected, LedgerError, TrainingStep
from edgefl.ml.privacy import PrivacySpend
from edgefl.runtime import StateFile


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Tally:
    lost: int = 0
    duplicates: int = 0
    checks: list[Check] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        return bool(ok)

    def expect(self, what: str, found: Iterable, expected: Iterable) -> None:
        """``found``: one key per record; each ``expected`` key exactly once, nothing else."""
        counts, wanted = Counter(found), set(expected)
        missing = sorted(k for k in wanted if not counts[k])
        extra = sum(c - 1 for c in counts.values() if c > 1) + sum(c for k, c in counts.items() if k not in wanted)
        self.lost += len(missing)
        self.duplicates += extra
        detail = f"{len(wanted)} expected, {sum(counts.values())} recorded"
        if missing:
            detail += f"; missing {', '.join(map(_key, missing[:5]))}"
        if extra:
            detail += f"; {extra} too many ({', '.join(map(_key, [k for k, c in counts.items() if c > 1 or k not in wanted][:5]))})"
        self.check(what, not missing and not extra, detail)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _key(k) -> str:
    return "/".join(map(str, k)) if isinstance(k, tuple) else str(k)


def task_records(dep, task: str, rounds: Iterable[int], tally: Tally | None = None) -> Tally:
    """The records ``rounds`` of ``task`` left on every chain of the deployment ``dep`` (a
    ``Deployment``: ``records(node, rtype)``, its fogs and their devices, each fog's state file)."""
    tally = tally or Tally()
    rounds = list(rounds)
    for fog, devices in dep.fogs.items():
        cfg = dep.config(fog)
        stored = StateFile(cfg.path(cfg.fl.state_file)).load({"task": "", "batches": {}})
        batches = stored["batches"] if stored["task"] == task else {}
        spends = [s for _, r in dep.records(fog, PrivacySpend.TYPE) if (s := r.unwrap()).task == task]
        tally.expect(f"{fog}: one privacy spend per device and round", [(s.device, s.round) for s in spends],
                     [(d, r) for d in devices for r in rounds])
        cids = {(d, cid.hex()[:12]) for r in rounds for d, cid in batches.get(str(r), {}).items()}
        tally.expect(f"{fog}: one batch stored per device and round",
                     [(d, r) for r in rounds for d in batches.get(str(r), {})], [(d, r) for d in devices for r in rounds])
        # a DataCollected of a batch the fog never stored is a second upload of a round it has
        tally.expect(f"{fog}: one DataCollected per stored batch",
                     [(a.device, a.data.hex()[:12]) for _, rec in dep.records(fog, DataCollected.TYPE)
                      if (a := rec.unwrap()).device in devices], cids)
        items = {(s.device, s.round): s.items for s in spends}
        runs = {run_id(task, r) for r in rounds}
        steps = [(s.device, s.task, s.step) for _, rec in dep.records(fog, TrainingStep.TYPE)
                 if rec.signer == fog and (s := rec.unwrap()).task in runs]
        tally.expect(f"{fog}: one training step record per step", steps,
                     [(d, run_id(task, r), i) for (d, r), n in items.items() if r in rounds
                      for i in range(1, _steps(dep, fog, n) + 1)])
        aggs = [a for _, rec in dep.records(fog, Aggregation.TYPE) if rec.signer == fog
                and (a := rec.unwrap()).task == task]
        tally.expect(f"{fog}: one aggregation per round", [a.round for a in aggs], rounds)
        for a in aggs:
            if a.round in rounds and sorted(a.senders) != sorted(devices):
                tally.lost += len(set(devices) - set(a.senders))
                tally.check(f"{fog}: round {a.round} aggregates every device", False, f"senders {a.senders}")
    updates = [(rec.signer, u) for _, rec in dep.records(dep.cloud, FogUpdate.TYPE) if (u := rec.unwrap()).task == task]
    tally.expect("main: one update per fog and round", [(u.fog, u.round) for s, u in updates if s == u.fog],
                 [(f, r) for f in dep.fogs for r in rounds])
    aggs = [a for _, rec in dep.records(dep.cloud, Aggregation.TYPE) if rec.signer == dep.cloud
            and (a := rec.unwrap()).task == task]
    tally.expect("main: one aggregation per round", [a.round for a in aggs], rounds)
    for a in aggs:
        if a.round in rounds and sorted(a.senders) != sorted(dep.fogs):
            tally.lost += len(set(dep.fogs) - set(a.senders))
            tally.check(f"main: round {a.round} aggregates every fog", False, f"senders {a.senders}")
    coins = Counter((c.account, c.reason) for _, rec in dep.records(dep.cloud, CoinUpdate.TYPE)
                    if (c := rec.unwrap()).reason.startswith(f"reward {task}/"))
    twice = sum(n - 1 for n in coins.values() if n > 1)
    tally.duplicates += twice
    tally.check("main: every payout once", not twice, f"{sum(coins.values())} coin updates, {twice} repeated")
    return tally


def _steps(dep, fog: str, items: int) -> int:
    cfg = dep.config(dep.cloud)
    return steps_per_round(items, cfg.ml.batch_size, cfg.ml.local_epochs)


def interlock(dep, tally: Tally | None = None) -> Tally:
    """Every Type-II the main chain holds names the accumulator of the fog's block at that height."""
    tally = tally or Tally()
    main = dep.store(dep.cloud)
    for fog in dep.fogs:
        rows = main._all("ib", "SELECT height, acc FROM anchors WHERE chain = ? ORDER BY height", fog)
        sub = dep.store(fog)
        bad = [h for h, acc in rows if (row := sub.block_row(h)) is None or row[3] != acc]
        top = rows[-1][0] if rows else -1
        tally.check(f"main: {fog}'s anchors name its blocks", not bad,
                    f"{len(rows)} anchored heights, up to {top} of {sub.tip().height}"
                    + (f"; {len(bad)} differ (first at {bad[0]})" if bad else ""))
    return tally


def verify_all(dep, tally: Tally | None = None, nodes: Iterable[str] | None = None) -> Tally:
    """Every chain re-validated from genesis (`edgefl ledger verify`)."""
    tally = tally or Tally()
    for node in nodes or [dep.cloud, *dep.fogs]:
        try:
            with dep.open_chain(node) as chain:
                n = chain.verify()
            tally.check(f"{node}: chain verifies", True, f"{n} blocks")
        except LedgerError as exc:
            tally.check(f"{node}: chain verifies", False, str(exc))
    return tally


def replicas_agree(dep, fog: str, tally: Tally | None = None, honest: Callable[[str], bool] = lambda m: True) -> Tally:
    """The safety invariant of the committee keeping ``fog``'s chain (a fog's sub-chain, or the cloud's main
    chain): no two (``honest``) members hold different blocks at one height, and every such replica's chain
    verifies on its own (its quorum seals included)."""
    from edgefl.ledger.chain import Chain
    from edgefl.ledger.service import db_path, registry_for

    tally = tally or Tally()
    with dep.open_chain(fog) as chain:
        members, own = chain.spec.committee.ids, [chain.store.block_row(h)[0] for h in range(chain.tip.height + 1)]
        name = chain.id
    for m in members:
        if m == fog or not honest(m):
            continue
        cfg = dep.config(m)
        try:
            with Chain.open(db_path(cfg, name), readonly=True, registry=registry_for(cfg)) as replica:
                n = replica.verify()
                theirs = [replica.store.block_row(h)[0] for h in range(replica.tip.height + 1)]
        except LedgerError as exc:
            tally.check(f"{m}: its replica of {name} verifies", False, str(exc))
            continue
        same = all(a == b for a, b in zip(own, theirs))
        tally.check(f"{m}: its replica of {name} verifies and agrees with {fog}'s at every height", same,
                    f"{n} blocks, {fog} holds {len(own)}")
    return tally

