"""`edgefl ledger init | serve | show | export | verify | verify-tx | audit | gc`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from edgefl.runtime import run, write_atomic


def register(sub) -> None:
    ledger = sub.add_parser("ledger", help="sub-chains and the main chain: create, serve, inspect, verify, audit")
    cmd = ledger.add_subparsers(dest="ledger_cmd", metavar="ACTION")

    p = cmd.add_parser("init", help="create this node's chain (its genesis block)")
    p.add_argument("--chain", help="chain id (default: ledger.chain, else the main chain's id on a cloud node, "
                                   "else the node id)")
    p.add_argument("--role", choices=["main", "sub"], help="default: main on a cloud node, sub otherwise")
    p.add_argument("--committee", action="append", default=[], metavar="ID",
                   help="committee member (repeatable; default: this node); keys from the node's key registry "
                        "(security.registry: the trust directory or the site PKI)")
    p.add_argument("--threshold", type=int, help="quorum (default: a majority of the committee)")
    p.add_argument("--subchain", action="append", default=[], metavar="CHAIN[=ID,ID...][:T]",
                   help="main chain: a sub-chain and its committee (default: the member named like the chain)")
    p.add_argument("--parent-committee", metavar="ID,ID...[:T]",
                   help="sub-chain: the main chain's committee (default: ledger.main_node)")
    p.add_argument("--sealer", default="single", help="single | quorum")
    p.add_argument("--max-block", type=int, help="block size limit in bytes (default: ledger.max_block_bytes)")
    p.set_defaults(func=init_cmd)

    p = cmd.add_parser("serve", help="run this node's chain: accept transactions, seal blocks, serve proofs, "
                                     "anchor (fog) or beacon (cloud)")
    p.add_argument("--for", dest="stop_after", type=float, help="stop after this many seconds")
    p.set_defaults(func=serve_cmd)

    p = cmd.add_parser("show", help="summary, a block, a transaction, or lookups by device / model")
    _chain_arg(p)
    p.add_argument("--height", type=int, help="show this block")
    p.add_argument("--tx", help="show this transaction (hex id)")
    p.add_argument("--device", help="transactions recorded for this device")
    p.add_argument("--model", help="transactions naming this model (hex content id)")
    p.add_argument("--reputation", action="store_true", help="every account's reputation, folded from the records")
    p.add_argument("--balances", action="store_true", help="every account's coins, folded from the records")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=show_cmd)

    p = cmd.add_parser("export", help="write blocks as a CBOR sequence (RFC 8742), exactly as stored")
    _chain_arg(p)
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--to", dest="end", type=int)
    p.set_defaults(func=export_cmd)

    p = cmd.add_parser("verify", help="re-validate a chain from genesis: every byte of every block")
    _chain_arg(p)
    p.add_argument("--file", help="verify an export instead of the stored chain")
    p.set_defaults(func=verify_cmd)

    p = cmd.add_parser("verify-tx", help="cross-chain verification (Protocol 1) of a transaction of chain B")
    p.add_argument("--chain", required=True, help="B: the chain holding the transaction")
    p.add_argument("--tx", required=True, nargs="+", help="the transaction id(s) (hex); several are proved at once "
                                                          "by one batch proof (Protocol 2)")
    p.add_argument("--batch", choices=["aggregated", "weighted"], default="aggregated",
                   help="how several transactions' memberships are checked together (default aggregated)")
    p.add_argument("--via", help="A: the chain this verifier holds (default: this node's chain)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=verify_tx_cmd)

    p = cmd.add_parser("audit", help="replay random recorded training steps of a device and compare bit for bit")
    p.add_argument("--chain", required=True, help="the chain holding the training records")
    p.add_argument("--device", required=True)
    p.add_argument("--task")
    p.add_argument("--steps", type=int, help="how many random steps (default: all)")
    p.add_argument("--seed", type=int)
    p.add_argument("--via", help="the chain this auditor holds (default: this node's chain)")
    p.add_argument("--holder", action="append", default=[],
                   help="also fetch blobs from this node (repeatable; on-device training: the device)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=audit_cmd)

    p = cmd.add_parser("gc", help="delete blobs no record of this node's chain references")
    _chain_arg(p)
    p.add_argument("--grace", type=float, help="keep unreferenced blobs younger than this (s; default ledger.gc_grace_s)")
    p.set_defaults(func=gc_cmd)


def _chain_arg(p) -> None:
    p.add_argument("--chain", help="chain id (default: this node's chain)")


def _open(cfg, chain: str | None, *, readonly: bool = True):
    from edgefl.ledger.chain import Chain
    from edgefl.ledger.service import chain_id, db_path, registry_for

    return Chain.open(db_path(cfg, chain or chain_id(cfg)), readonly=readonly, registry=registry_for(cfg))


# --------------------------------------------------------------------------- init


def _public_key(cfg, member: str):
    """A committee member's key: this node's own, else what the node's key registry certifies."""
    from edgefl.crypto.keys import SigningKey
    from edgefl.ledger.service import registry_for

    if member == cfg.node.id:
        return SigningKey.load(cfg.path(cfg.security.key_file)).public_key
    return registry_for(cfg).key_for(member, time.time())


def _committee(cfg, spec: str, default: list[str]):
    from edgefl.ledger.committee import Committee

    ids, _, threshold = spec.partition(":")
    members = [m for m in ids.split(",") if m] or default
    return Committee.of([(m, _public_key(cfg, m)) for m in members], int(threshold) if threshold else None)


def init_cmd(args) -> int:
    from edgefl.crypto.keys import SigningKey
    from edgefl.ledger.chain import Chain
    from edgefl.ledger.sealer import make_sealer
    from edgefl.ledger.service import db_path
    from edgefl.ledger.tx import ChainSpec

    cfg = args.config
    role = args.role or ("main" if cfg.node.role == "cloud" else "sub")
    chain = args.chain or cfg.ledger.chain or (cfg.ledger.main if role == "main" else cfg.node.id)
    committee = _committee(cfg, ",".join(args.committee), [cfg.node.id])
    if args.threshold:
        committee = type(committee)(committee.members, args.threshold)
    spec = dict(chain=chain, role=role, sealer=args.sealer, committee=committee,
                max_block=args.max_block or cfg.ledger.max_block_bytes, ts=time.time_ns() // 1_000_000)
    if role == "main":
        subs = {}
        for item in args.subchain:
            name, eq, members = item.partition("=")
            if not eq:  # CHAIN or CHAIN:T
                name, colon, threshold = name.partition(":")
                members = f":{threshold}" if colon else ""
            subs[name] = _committee(cfg, members, [name])
        spec["subchains"] = subs
    else:
        spec["parent"] = cfg.ledger.main
        spec["parent_committee"] = _committee(cfg, args.parent_committee or "", [cfg.ledger.main_node])
    key = SigningKey.load(cfg.path(cfg.security.key_file))
    path = db_path(cfg, chain)
    with Chain.create(path, ChainSpec(**spec), make_sealer(args.sealer, cfg.node.id, {cfg.node.id: key})) as c:
        print(f"created {role} chain {chain!r} at {path}")
        print(f"genesis {c.tip.hash.hex()}")
    return 0


# --------------------------------------------------------------------------- serve


def serve_cmd(args) -> int:
    from edgefl.ledger.service import LedgerNode
    from edgefl.runtime.loop import Supervisor
    from edgefl.transport.session import Session

    cfg = args.config

    async def main() -> str:
        async with Session.from_config(cfg) as session, Supervisor() as sup:
            node = LedgerNode.from_config(cfg, session)
            try:
                sup.spawn("ledger", node.run)
                if args.stop_after is not None:
                    import asyncio

                    asyncio.get_running_loop().call_later(args.stop_after, sup.stop, "time limit")
                print(f"serving {node.chain.spec.role} chain {node.chain.id!r} at height {node.chain.tip.height} "
                      f"as {cfg.node.id}", flush=True)
                return await sup.wait()
            finally:
                node.close()

    print(f"stopped: {run(main())}")
    return 0


# --------------------------------------------------------------------------- show / export / verify


def _describe_tx(info, height: int | None = None, index: int | None = None) -> dict:
    from edgefl.ledger.block import decode_header

    out = {"id": info.id.hex(), "kind": info.kind.name, "bytes": len(info.raw)}
    if height is not None:
        out["block"], out["index"] = height, index
    body = info.body
    if info.kind.name == "record":
        out.update(type=body.type, signer=body.signer, ts=body.ts, device=body.device,
                   model=body.model.hex() if body.model else None, refs=[r.hex() for r in body.refs],
                   msg=_jsonable(body.msg))
    elif info.kind.name in ("anchor", "beacon"):
        h = decode_header(body.header)
        out.update(chain=h.chain, height=h.height, acc=h.acc[:16].hex() + "…",
                   signers=[s.signer for s in info.sigs])
        if info.kind.name == "anchor":
            out["blocks"] = len(body.digests)
    elif info.kind.name == "genesis":
        out.update(chain=body.chain, role=body.role, sealer=body.sealer,
                   committee=[m.id for m in body.committee.members], threshold=body.committee.threshold,
                   max_block=body.max_block, parent=body.parent,
                   subchains=sorted(body.subchains) if body.subchains else None)
    return {k: v for k, v in out.items() if v is not None}


def _jsonable(v):
    if isinstance(v, bytes):
        return v.hex() if len(v) <= 64 else f"<{len(v)} bytes>"
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return f"<array {getattr(v, 'dtype', '')} {getattr(v, 'shape', '')}>"
    return v


def _emit(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2))
        return
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            print(f"{k}:")
            for item in v:
                print("  " + "  ".join(f"{a}={b}" for a, b in item.items()))
        else:
            print(f"{k}: {v}")


def show_cmd(args) -> int:
    from edgefl.crypto import accumulator
    from edgefl.ledger.blobs import parse_cid
    from edgefl.ledger.block import decode_header
    from edgefl.ledger.tx import decode_tx

    with _open(args.config, args.chain) as c:
        store = c.store
        if args.tx:
            found = store.tx(bytes.fromhex(args.tx))
            if found is None:
                raise LookupError(f"no transaction {args.tx} on {c.id}")
            _emit(_describe_tx(decode_tx(found[2]), found[0], found[1]), args.json)
        elif args.height is not None:
            row = store.block_row(args.height)
            if row is None:
                raise LookupError(f"no block {args.height} on {c.id} (tip {c.tip.height})")
            h = decode_header(row[1])
            txs = [_describe_tx(decode_tx(store.tx(t)[2])) for t in store.txids(args.height)]
            _emit({"chain": h.chain, "height": h.height, "hash": row[0].hex(), "prev": h.prev.hex(), "ts": h.ts,
                   "proposer": h.proposer, "root": h.root.hex(), "acc": h.acc[:16].hex() + "…", "txs": txs},
                  args.json)
        elif args.reputation or args.balances:
            from edgefl.fl.reputation import fold_chain

            st = fold_chain(c)
            out = {"chain": c.id, "height": c.tip.height}
            if args.reputation:
                out["reputation"] = {a: round(r, 4) for a, r in st.reputation.items()}
            if args.balances:
                out["balances"] = dict(sorted(st.balances.items()))
            _emit(out, args.json)
        elif args.device or args.model:
            rows = store.find(device=args.device, model=parse_cid(args.model) if args.model else None)
            _emit({"matches": [_describe_tx(decode_tx(store.tx(t)[2]), h, i) for t, h, i in rows]}, args.json)
        else:
            spec = c.spec
            n = store.db.execute("SELECT COUNT(*) FROM txs").fetchone()[0]
            anchors = {ch: h for ch, (h, _) in c.state.anchors.items()}
            from edgefl.consensus import finality

            final = c.tip.height  # without FFG every block is final as it commits
            if finality.enabled(spec):
                ffg = finality.ChainFinality(c)
                ffg.update()
                final = ffg.finalized_height
            _emit({"chain": spec.chain, "role": spec.role, "height": c.tip.height, "finalized": final,
                   "head": c.tip.hash.hex(),
                   "accumulator": accumulator.to_bytes(c.tip.acc)[:16].hex() + "…", "transactions": n,
                   "sealer": spec.sealer, "committee": [m.id for m in spec.committee.members],
                   "max_block": spec.max_block,
                   ("anchored sub-chains" if spec.role == "main" else "main chain seen at"): anchors}, args.json)
    return 0


def export_cmd(args) -> int:
    out = Path(args.out)
    with _open(args.config, args.chain) as c:
        blocks = list(c.store.blocks(args.start, args.end))
        write_atomic(out, blocks)
    print(f"exported {len(blocks)} blocks of {c.id} to {out}")
    return 0


def read_export(path: str | os.PathLike):
    """Blocks of an export file, one at a time (each a canonical CBOR item)."""
    from edgefl import codec
    from edgefl.ledger.block import MAX_BLOCK_LIMIT, block_limits
    from edgefl.ledger.errors import InvalidBlock

    data = Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        try:
            _, end = codec.decode_first(memoryview(data)[pos:], block_limits(MAX_BLOCK_LIMIT))
        except codec.CodecError as exc:
            raise InvalidBlock(f"byte {pos} of the export: {exc}", field="export", reason=exc.reason) from None
        yield data[pos:pos + end]
        pos += end


def verify_cmd(args) -> int:
    from edgefl.ledger.chain import verify_blocks
    from edgefl.ledger.errors import LedgerError
    from edgefl.ledger.service import registry_for

    t0 = time.perf_counter()
    try:
        if args.file:
            n = verify_blocks(read_export(args.file), registry=registry_for(args.config))
            what = args.file
        else:
            with _open(args.config, args.chain) as c:
                n = c.verify()
                what = f"chain {c.id!r} ({c.store.path})"
    except LedgerError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"verified {n} blocks of {what} in {time.perf_counter() - t0:.2f} s: every header, seal, transaction, "
          f"Merkle root and accumulator step")
    return 0


# --------------------------------------------------------------------------- cross-chain


async def _with_crosschain(cfg, via: str | None, timeout: float, body):
    from edgefl.ledger.crosschain import CrossChain
    from edgefl.ledger.service import registry_for, server_of
    from edgefl.transport.session import Session

    local = _open(cfg, via)
    try:
        async with Session.from_config(cfg, client_id=f"{cfg.node.id}-{os.getpid()}") as session:
            await session.wait_connected(timeout)
            cc = CrossChain(session, local, main_node=cfg.ledger.main_node, server_of=lambda c: server_of(cfg, c),
                            registry=registry_for(cfg), report=lambda line: print(line, flush=True), timeout=timeout)
            return await body(cc)
    finally:
        local.close()


def verify_tx_cmd(args) -> int:
    txids = [bytes.fromhex(t) for t in args.tx]

    async def body(cc):
        print(f"verifying {', '.join(args.tx)} of chain {args.chain!r} from chain {cc.local.id!r}", flush=True)
        if len(txids) == 1:
            return await cc.verify_tx(args.chain, txids[0])
        return await cc.verify_txs(args.chain, txids, method=args.batch)

    v = run(_with_crosschain(args.config, args.via, args.timeout, body))
    print(f"verdict: {v.verdict}" + (f" — {v.reason}" if v.reason else ""))
    return 0 if v.ok else 2 if v.verdict == "PENDING" else 1


def audit_cmd(args) -> int:
    from edgefl.ledger.audit import LocalSource, RemoteSource, audit
    from edgefl.ledger.blobs import BlobStore
    from edgefl.ledger.service import chain_id

    cfg = args.config
    blobs = BlobStore(cfg.path(cfg.ledger.blob_dir), max_blob=cfg.ledger.max_blob_bytes)
    say = lambda line: print(line, flush=True)  # noqa: E731
    if args.chain == (args.via or chain_id(cfg)):
        with _open(cfg, args.chain) as c:
            result = run(audit(LocalSource(c, blobs), args.device, task=args.task, samples=args.steps,
                               seed=args.seed, report=say))
    else:
        async def body(cc):
            cc.report = say
            return await audit(RemoteSource(cc, args.chain, blobs=blobs, holders=tuple(args.holder)), args.device,
                               task=args.task, samples=args.steps, seed=args.seed, report=say)

        result = run(_with_crosschain(cfg, args.via, args.timeout, body))
    print(f"verdict: {'ACCEPT' if result.ok else 'REJECT'} ({len(result.steps)} step(s) audited)")
    return 0 if result.ok else 1


def gc_cmd(args) -> int:
    from edgefl.ledger.blobs import BlobStore

    cfg = args.config
    with _open(cfg, args.chain) as c:
        referenced = c.store.referenced()
    blobs = BlobStore(cfg.path(cfg.ledger.blob_dir), max_blob=cfg.ledger.max_blob_bytes)
    removed = blobs.gc(referenced, grace_s=cfg.ledger.gc_grace_s if args.grace is None else args.grace)
    print(f"removed {len(removed)} unreferenced blob(s); {len(referenced)} referenced")
    return 0
