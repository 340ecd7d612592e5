"""`edgefl demo`: a federated task over MQTT — a cloud, two fogs and six devices, two rounds on generated digits.

1. start Mosquitto on a free loopback port (or use --port);
2. give every node its key, data directory and chain (edgefl.nodes.site) and run what `edgefl run` runs:
   each sub-chain is kept by a PBFT committee of its fog and three devices, the main chain by one of the
   cloud and the fogs (edgefl.consensus.committees);
3. per round: the devices' privacy spends, the training steps recorded, each chain's height and the
   accumulator interlock, which fog was drawn to aggregate the fogs' models (``fl.leader = "drawn"``),
   the global model's test accuracy;
4. verify one device's recorded training step from the other fog's side (Protocol 1) and replay it, and
   recompute that fog's recorded warm start from its blobs;
5. a tampered copy of a device's batch rejected on the wire; the genuine copy, sent again, counted once;
6. every device's reputation and coins as anyone folds them from the main chain (edgefl.fl.reputation),
   the attackers marked, and a report folder (Markdown, the accuracy curve as PNG, JSON).

The size, the privacy, the aggregator, an attack and where training happens are options (``edgefl demo
--devices --fogs --rounds --epsilon --aggregator --attack --malicious --train-at``); the defaults are two
fogs, six devices, two rounds, trained at the fogs.  With ``--train-at device`` every device trains its
own update (``edgefl.fl.ondevice``), and the fogs' audits of those updates are shown as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from edgefl.fl import Aggregation, FogUpdate, Offence, Task, attacks, check_warm_start, choose_attackers, fold_chain
from edgefl.fl.leader import LeaderDraw
from edgefl.fl.protocol import WarmStart, decode_batch, run_id
from edgefl.ledger import BlobStore, Chain, CrossChain, RemoteSource, TrainingStep, audit_step
from edgefl.ledger.blobs import fetch
from edgefl.ledger.crosschain import PENDING
from edgefl.ledger.service import db_path, registry_for, server_of
from edgefl.ml.privacy import PrivacySpend
from edgefl.nodes.site import LocalSite
from edgefl.runtime import METRICS
from edgefl.transport import LocalMosquitto, topics

EPSILON, BUDGET, ITEMS = 10.0, 50.0, 160
SETTINGS = ["fl.hidden=[20]", f"fl.items={ITEMS}", "ml.batch_size=32", "ml.optimizer=adam", "ml.lr=0.01",
            "ml.local_epochs=2", "fl.round_timeout_s=60", "fl.leader=drawn"]
# Under attack the fogs train from the global model as it is: a warm start fitted to every batch, the
# poisoned ones too, and the FedProx pull keep the attackers' models too close for a robust rule to tell.
UNDER_ATTACK = ["fl.warm_start=false", "ml.prox_mu=0"]
# On-device: each device's step from the round's model at most this long; no FedProx pull either, as the
# warm start that makes up for it in fog mode is fog-only (with it: 45 % then 51 % after two rounds).
ON_DEVICE = ["fl.clip_norm=10.0", "ml.prox_mu=0"]


def topology(fogs: int, devices: int) -> dict[str, list[str]]:
    """fog-a, fog-b, …, the devices dealt out in turn: dev-a1, dev-b1, dev-a2, …"""
    names = [f"fog-{chr(ord('a') + i)}" for i in range(fogs)]
    out = {f: [] for f in names}
    for i in range(devices):
        f = names[i % fogs]
        out[f].append(f"dev-{f[4:]}{len(out[f]) + 1}")
    return out


def _short(b: bytes) -> str:
    return b[:6].hex() + "…"


class _Chains:
    """Read-only views of every chain, as `edgefl ledger show` opens them."""

    def __init__(self, site: LocalSite, fogs: dict[str, list[str]]):
        self.site, self.fogs = site, fogs

    def open(self, node: str) -> Chain:
        cfg = self.site.cfgs[node]
        return Chain.open(db_path(cfg), readonly=True, registry=registry_for(cfg))

    def round_summary(self, task: Task, round: int, out) -> None:
        rid = run_id(task.task, round)
        with self.open(self.site.cloud) as main:
            for fog, devices in self.fogs.items():
                with self.open(fog) as sub:
                    spends = sorted((s for _, r in sub.records(PrivacySpend.TYPE, limit=1000)
                                     if (s := r.unwrap()).task == task.task and s.round == round),
                                    key=lambda s: s.device)
                    steps = [s.device for _, r in sub.records(TrainingStep.TYPE, limit=10000)
                             if (s := r.unwrap()).task == rid]
                    released = ", ".join(f"{s.device} {s.items} items at ε={s.epsilon:g} (an item's total "
                                         f"{s.max_spent:g} of {s.budget:g})" for s in spends)
                    out(f"    {fog} (height {sub.tip.height}): spends recorded before the features left: {released}")
                    warm = [w for _, r in sub.records(WarmStart.TYPE, limit=100)
                            if (w := r.unwrap()).task == task.task and w.round == round]
                    out(f"      {len(steps)} training steps recorded ("
                        + ", ".join(f"{d} {steps.count(d)}" for d in devices) + ")"
                        + "".join(f", from the warm start {w.model.hex()[:12]}… fitted to {len(w.batches)} batches"
                                  for w in warm))
                    out(f"      interlock: {self._interlock(main, sub, fog)}")
            updates = [u for _, r in main.records(FogUpdate.TYPE, limit=100)
                       if (u := r.unwrap()).task == task.task and u.round == round]
            aggs = [(r.signer, a) for _, r in main.records(Aggregation.TYPE, limit=100)
                    if (a := r.unwrap()).task == task.task and a.round == round]
            draws = [d for _, r in main.records(LeaderDraw.TYPE, limit=100) if r.signer == self.site.cloud
                     and (d := r.unwrap()).task == task.task and d.round == round]
            by = "".join(f" by {s}" + (f", drawn by VRF from the epoch seed among {', '.join(d.candidates)}"
                                       if s == d.leader else f" ({d.leader}, drawn, failed its check)")
                         for s, _ in aggs[:1] for d in draws)
            out(f"    main (height {main.tip.height}): "
                + ", ".join(f"{u.fog}'s update ({len(u.devices)} devices, {u.examples} examples)"
                            for u in sorted(updates, key=lambda u: u.fog))
                + (f" aggregated ({aggs[0][1].aggregator}){by}" if aggs else ""))

    @staticmethod
    def _interlock(main: Chain, sub: Chain, fog: str) -> str:
        up, down = main.store.latest_anchor(fog), sub.store.latest_anchor("main")
        parts = []
        if up:
            ok = sub.store.block_row(up[0])[3] == up[1]
            parts.append(f"its Type-II in main: height {up[0]}, accumulator {_short(up[1])} "
                         f"{'=' if ok else '≠'} {fog}'s")
        if down:
            ok = main.store.block_row(down[0])[3] == down[1]
            parts.append(f"main's Type-III in {fog}: height {down[0]}, accumulator {_short(down[1])} "
                         f"{'=' if ok else '≠'} main's")
        return " · ".join(parts) or "not interlocked yet"


def _committee(spec) -> str:
    c = spec.committee
    return (f"a PBFT committee of {', '.join(c.ids)} (quorum {c.threshold} of {len(c.ids)}, tolerates "
            f"{c.faults} byzantine)")


async def demo(*, port: int | None = None, out=print, fogs: int = 2, devices: int = 6, rounds: int = 2,
               epsilon: float = EPSILON, aggregator: str = "fedavg", attack: str = "none", malicious: float = 0.0,
               seed: int = 0, report: str | Path | None = None, train_at: str = "fog") -> dict:
    if fogs < 2 or devices < fogs:
        raise ValueError(f"the demo needs at least 2 fogs and a device per fog (got {fogs} fogs, {devices} devices)")
    if train_at == "fog" and attack != "none" and attacks.make(attack).kind == "update":
        raise ValueError(f"{attack} poisons the model a device sends: that needs --train-at device")
    t0 = time.perf_counter()
    layout = topology(fogs, devices)
    everyone = [d for ds in layout.values() for d in ds]
    attackers = choose_attackers(everyone, malicious, seed) if attack != "none" else []
    settings = [*SETTINGS, f"fl.rounds={rounds}", f"ml.epsilon={epsilon}",
                f"ml.epsilon_budget={max(BUDGET, epsilon * rounds)}", *(UNDER_ATTACK if attackers else []),
                f"fl.train_at={train_at}", *(ON_DEVICE if train_at == "device" else [])]
    per_node = {"cloud-1": ["fl.items=800", f"ml.aggregator={aggregator}"], "dev-a2": ["ml.backend=litert"],
                **{d: [f"fl.attack={attack}"] for d in attackers}}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefl-demo-")))
        if port is None:
            broker = stack.enter_context(LocalMosquitto(workdir / "broker"))
            port = broker.port
            out(f"[1] Mosquitto ({broker.binary}) listening on 127.0.0.1:{port}")
        else:
            out(f"[1] using the Mosquitto on 127.0.0.1:{port}")
        site = LocalSite(workdir, port, layout, clients=("auditor",), settings=settings, per_node=per_node)
        chains = _Chains(site, layout)
        out("[2] cloud-1 (main chain), "
            + ", ".join(f"{f} (sub-chain; devices {', '.join(d)})" for f, d in layout.items())
            + f": each with its own key, MQTT session, SQLite file and data directory under {workdir}; "
              "dev-a2 runs the TFLite export on LiteRT, the others ONNX Runtime")
        for f in layout:
            spec = site.spec(f)
            out(f"    {f}'s sub-chain: " + (_committee(spec) if len(spec.committee.ids) > 1 else
                                            f"sealed by {f} alone (fewer than 3 devices: no committee can "
                                            "tolerate a fault)"))
        out(f"    main chain: {_committee(site.spec(site.cloud))}, credit-weighted leaders, FFG finality")
        if attackers:
            out(f"    malicious ({attack}, {100 * malicious:g} % drawn with seed {seed}): {', '.join(attackers)}; "
                f"the fogs aggregate with {aggregator}, from the global model as it is (no warm start, no FedProx)")
        async with site:
            auditor = site.session("auditor")
            async with auditor, auditor.subscribe(topics.pattern(node=site.cloud, kind="model")) as models:
                accuracy = {}
                task = None
                progress = asyncio.create_task(_progress(out, t0, len(everyone), fogs, train_at))
                async with asyncio.timeout(120 + 60 * rounds):
                    async for rx in models:
                        gm = rx.message
                        accuracy[gm.round] = gm.accuracy
                        if task is None:
                            task = _recorded_task(chains)
                            _describe_task(task, out)
                        if gm.round == 0:
                            out(f"    initial model: test accuracy {100 * gm.accuracy:.1f} % "
                                "(cloud-1's held-out digits)")
                            continue
                        out(f"[{3 + gm.round}] round {gm.round - 1} done ({time.perf_counter() - t0:.1f} s): "
                            f"global model {_short(gm.model)} test accuracy {100 * gm.accuracy:.1f} %")
                        chains.round_summary(task, gm.round - 1, out)
                        if gm.round == gm.rounds:
                            break
                progress.cancel()
                step = await _verify_and_audit(site, chains, auditor, task, out, n=4 + task.rounds)
                warm = task.warm_start and await _check_warm_start(site, chains, auditor, task, out, n=6 + task.rounds)
                audits = await _update_audits(site, chains, task, out, n=6 + task.rounds) \
                    if task.train_at == "device" else None
                n = 6 + task.rounds + task.warm_start + (audits is not None)
                rejected = await _tamper(site, task, out, n=n)
                standing = _standing(chains, everyone, attackers, out, n=n + 1)
        result = {"accuracy": accuracy, "audit_ok": step, "warm_start_ok": warm, "rejected": rejected,
                  "attackers": attackers, "update_audits": audits, **standing,
                  "options": {"fogs": fogs, "devices": devices, "rounds": rounds, "epsilon": epsilon,
                              "aggregator": aggregator, "attack": attack, "malicious": malicious, "seed": seed,
                              "train_at": train_at}}
    folder = Path(report) if report else Path(tempfile.gettempdir()) / time.strftime("edgefl-demo-%Y%m%d-%H%M%S")
    write_report(folder, result)
    out(f"done in {time.perf_counter() - t0:.1f} s; report in {folder}/report.md")
    return result


async def _progress(out, t0: float, devices: int, fogs: int, train_at: str = "fog") -> None:
    """Each round's phases as they complete: the devices' batches stored at their fogs (on-device: then their
    updates), the fogs' updates on the main chain (the nodes' own counters; the training and the
    aggregations come in between)."""
    phases = (("fl_batch_accepted", devices, "every device's batch stored at its fog (spend and provenance "
                                             "recorded first); " + ("the devices train" if train_at == "device"
                                                                    else "the fogs train and aggregate")),
              *([("fl_device_update_accepted", devices, "every device's signed, clipped update checked and "
                                                        "recorded at its fog; the fogs aggregate")]
                if train_at == "device" else []),
              ("fl_update_recorded", fogs, "every fog's update on the main chain; the cloud aggregates"))
    seen = {name: METRICS.get(name) for name, _, _ in phases}
    done = {name: 0 for name, _, _ in phases}
    while True:
        for name, total, what in phases:
            new = METRICS.get(name) - seen[name]
            if new >= total * (done[name] + 1):
                done[name] += 1
                out(f"    · round {done[name] - 1}, {time.perf_counter() - t0:.1f} s: {what}")
        await asyncio.sleep(0.05)


def _standing(chains: _Chains, devices: list[str], attackers: list[str], out, n: int) -> dict:
    """Every device's reputation and coins, folded from the main chain alone; every chain's height."""
    with chains.open(chains.site.cloud) as main:
        st = fold_chain(main)
        heights = {"main": main.tip.height}
    for fog in chains.fogs:
        with chains.open(fog) as sub:
            heights[fog] = sub.tip.height
    rows = {d: {"reputation": round(st.of(d), 3), "coins": st.balances.get(d, 0), "attacker": d in attackers}
            for d in devices}
    out(f"[{n}] reputation and coins, folded from the main chain's records (edgefl ledger show --reputation "
        f"--balances): " + ", ".join(f"{d}{' (attacker)' if r['attacker'] else ''} {r['reputation']:.2f} / "
                                      f"{r['coins']} coins" for d, r in rows.items()))
    out("    chain heights: " + ", ".join(f"{c} {h}" for c, h in heights.items()))
    return {"devices": rows, "heights": heights}


def write_report(folder: Path, result: dict) -> None:
    """report.md (with accuracy.png when matplotlib, the bench extra, is installed) and report.json."""
    folder.mkdir(parents=True, exist_ok=True)
    acc = result["accuracy"]
    (folder / "report.json").write_text(json.dumps(result, indent=2, default=str))
    plot = ""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(list(acc), [100 * a for a in acc.values()], marker="o")
        ax.set_xlabel("rounds")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        fig.tight_layout()
        fig.savefig(folder / "accuracy.png", dpi=100)
        plt.close(fig)
        plot = "\n![test accuracy per round](accuracy.png)\n"
    except ImportError:
        plot = "\n(matplotlib is not installed — `pip install edgefl[bench]` — so no plot)\n"
    o = result["options"]
    lines = ["# edgefl demo", "",
             f"{o['fogs']} fogs, {o['devices']} devices, {o['rounds']} rounds at ε = {o['epsilon']:g}; the fogs "
             f"aggregate with {o['aggregator']}; trained at the {o.get('train_at', 'fog')}; attack: {o['attack']}"
             + (f" by {', '.join(result['attackers'])}" if result["attackers"] else ""), "",
             "| after round | test accuracy |", "|---|---|",
             *(f"| {r} | {100 * a:.1f} % |" for r, a in acc.items()), plot,
             "| device | attacker | reputation | coins |", "|---|---|---|---|",
             *(f"| {d} | {'yes' if r['attacker'] else ''} | {r['reputation']:.3f} | {r['coins']} |"
               for d, r in result["devices"].items()), "",
             "| chain | height |", "|---|---|", *(f"| {c} | {h} |" for c, h in result["heights"].items()), ""]
    (folder / "report.md").write_text("\n".join(lines))


def _recorded_task(chains: _Chains) -> Task:
    with chains.open(chains.site.cloud) as main:
        return main.records(Task.TYPE, limit=1)[0][1].unwrap()


def _describe_task(task: Task, out) -> None:
    c = task.config
    models = ", ".join(f"{e.release.format} {_short(e.release.hash)}" for e in task.extractors)
    out(f"[3] task {task.task!r} on the main chain: {task.rounds} rounds at ε={task.epsilon:g} per {task.unit} per "
        f"round, batch {task.batch_size}; dense {'-'.join(map(str, c.layers))} ({c.optimizer}, lr {c.lr:g}, "
        f"{task.epochs} local epochs); extractor released as {models}")


@contextlib.asynccontextmanager
async def _from_fog_b(site: LocalSite, chains: _Chains, session, txid: bytes):
    """fog-b's cross-chain view, once a record of fog-a's is decided (not PENDING): yields (CrossChain, Verdict)."""
    cfg = site.cfgs["fog-b"]
    async with asyncio.timeout(60):
        while True:  # until fog-a's anchor of that block reached the main chain and fog-b saw it in a beacon
            with chains.open("fog-b") as local:
                cc = CrossChain(session, local, main_node=site.cloud, server_of=lambda c: server_of(cfg, c),
                                registry=registry_for(cfg), timeout=10)
                verdict = await cc.verify_tx("fog-a", txid)
                if verdict.verdict != PENDING:
                    yield cc, verdict
                    return
            await asyncio.sleep(0.2)


async def _verify_and_audit(site: LocalSite, chains: _Chains, session, task: Task, out, n: int) -> bool:
    """fog-b's side checks a training step dev-a1's fog recorded: the record through Protocol 1, then a replay."""
    rid, step = run_id(task.task, task.rounds - 1), 3
    with chains.open("fog-a") as sub:
        txids = {r.unwrap().step: t for t, r in sub.records(TrainingStep.TYPE, device="dev-a1", limit=1000)
                 if r.unwrap().task == rid}
    out(f"[{n}] Protocol 1: fog-b verifies dev-a1's training step {step} of {rid}, recorded on fog-a "
        f"(tx {txids[step].hex()[:16]}…)")
    async with _from_fog_b(site, chains, session, txids[step]) as (cc, verdict):
        for line in verdict.steps:
            out(f"      {line}")
        out(f"      verdict: {verdict.verdict}{(' — ' + verdict.reason) if verdict.reason else ''}")
        source = RemoteSource(cc, "fog-a", holders=("dev-a1",) if task.train_at == "device" else ())
        result = await audit_step(source, await source.record(txids[step]), await source.record(txids[step - 1]))
    where = "fog-a and dev-a1, which trained it," if task.train_at == "device" else "fog-a"
    out(f"[{n + 1}] audit from fog-b: step {step}'s record (and step {step - 1}'s) through Protocol 1, its blobs "
        f"from {where} over MQTT (digest-checked), T replayed: {'ok' if result.ok else 'REJECT'} — {result.detail}")
    return verdict.ok and result.ok


async def _update_audits(site: LocalSite, chains: _Chains, task: Task, out, n: int) -> dict:
    """On-device training: each fog's audits of its devices' updates, and the failures it recorded as offences."""
    for fog in chains.fogs:
        await site.nodes[fog].desk.wait()
    failed = {}
    for fog in chains.fogs:
        with chains.open(fog) as sub:
            for _, rec in sub.records(Offence.TYPE, limit=1000):
                o = rec.unwrap()
                if o.kind == "failed_audit" and o.task == task.task:
                    failed.setdefault(o.account, []).append(o.round)
    updates = task.rounds * sum(len(d) for d in chains.fogs.values())
    out(f"[{n}] the fogs audited every device's update ({updates}: the steps signed by the device, complete, "
        f"chained from the round's model, on its recorded release; the update the clip of the last step; "
        f"random steps replayed): " + ("all ok" if not failed else "failed, recorded as offences: " + ", ".join(
            f"{d} (rounds {', '.join(map(str, sorted(r)))})" for d, r in sorted(failed.items()))))
    return {d: sorted(r) for d, r in failed.items()}


async def _check_warm_start(site: LocalSite, chains: _Chains, session, task: Task, out, n: int) -> bool:
    """fog-b's side recomputes fog-a's recorded warm start: the record through Protocol 1, its blobs over MQTT."""
    with chains.open("fog-a") as sub:
        txid = next(t for t, r in sub.records(WarmStart.TYPE, limit=100) if r.unwrap().task == task.task)
    async with _from_fog_b(site, chains, session, txid) as (_, verdict):
        if not verdict.ok:
            out(f"[{n}] fog-a's warm start record {txid.hex()[:16]}…: {verdict.verdict} — {verdict.reason}")
            return False
        ws = verdict.tx.body.unwrap()
        with tempfile.TemporaryDirectory(prefix="edgefl-demo-blobs-") as tmp:
            store = BlobStore(tmp)
            for cid in (ws.origin, *ws.batches):
                await fetch(session, "fog-a", cid, store)
            ok = check_warm_start(ws, store.get)
    out(f"[{n}] fog-b recomputes fog-a's warm start (record {txid.hex()[:16]}… ACCEPT through Protocol 1; the "
        f"global model and {len(ws.batches)} batches fetched over MQTT, digest-checked): "
        f"{'the same model ' + _short(ws.model) if ok else 'REJECT: another model'}")
    return ok


async def _tamper(site: LocalSite, task: Task, out, n: int) -> dict:
    """dev-a1's last batch with one bit flipped on the wire, then the genuine copy again."""
    device, fog = site.nodes["dev-a1"], site.nodes["fog-a"]
    round = task.rounds - 1
    batch = decode_batch(fog.blobs.get(fog.doc["batches"][str(round)]["dev-a1"]))  # as fog-a stored it
    before = METRICS.get("envelope_rejected", reason="bad_signature")
    wire = bytearray(device.session.signer.seal(batch, to="fog-a", corr=b"demo-tamper1"))
    wire[-1000] ^= 0x01  # one bit of one feature value
    await device.session.send(device.session.topic("req", "fog-a"), bytes(wire))
    ack = (await device.session.request("fog-a", batch, timeout=30)).message
    async with asyncio.timeout(10):
        while METRICS.get("envelope_rejected", reason="bad_signature") == before:
            await asyncio.sleep(0.05)
    out(f"[{n}] dev-a1's round-{round} batch with one bit flipped on the wire: fog-a rejected it "
        f"(envelope_rejected{{reason=bad_signature}}: {METRICS.get('envelope_rejected', reason='bad_signature')}); "
        f"the genuine copy sent again: acknowledged as {'a duplicate, counted once' if ack.duplicate else 'new'} "
        f"({len(fog.doc['batches'][str(round)])} batches for round {round} at fog-a)")
    return {k: v for k, v in METRICS.snapshot().items() if k.startswith("envelope_rejected")}
