"""`edgefl accumulator info` and `edgefl accumulator setup [--distributed …]`."""

from __future__ import annotations

import asyncio
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("accumulator", help="RSA accumulator parameters and distributed modulus generation")
    cmds = parser.add_subparsers(dest="accumulator_cmd", metavar="ACTION")
    p = cmds.add_parser("info", help="print the default parameters (RSA-2048 challenge modulus)")
    p.set_defaults(func=info)

    p = cmds.add_parser("setup", help="write accumulator parameters: RSA-2048 (default) or a jointly generated N")
    p.add_argument("--distributed", action="store_true",
                   help="generate N jointly among --peers (Boneh-Franklin; nobody learns the factors)")
    p.add_argument("--peers", default="3",
                   help="comma-separated node ids, or a number k for peer-1..peer-k (default 3)")
    p.add_argument("--bits", type=int, default=2048, help="modulus size (default 2048)")
    p.add_argument("--transport", choices=["local", "mqtt"], default="local",
                   help="all peers in this process: in-process channels, or one MQTT session each through "
                        "Mosquitto (started on a free loopback port unless --port)")
    p.add_argument("--port", type=int, help="with --transport mqtt: use the Mosquitto on this loopback port")
    p.add_argument("--as", dest="as_node", metavar="NODE_ID",
                   help="run only this node's part, over the broker and keys of the profile (a real deployment)")
    p.add_argument("--batch", type=int, default=0, help="candidates per round (default: about 1%% of those expected)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for any peer's message")
    p.add_argument("--out", help="write the parameters as JSON here (default: print them)")
    p.set_defaults(func=setup)


def info(args) -> int:
    from edgefl.crypto.accumulator import RSA2048  # here, not at the top: `edgefl run` needs no gmpy2

    print(json.dumps(RSA2048.to_params(), indent=2))
    return 0


def _peers(text: str) -> list[str]:
    if text.isdigit():
        return [f"peer-{i + 1}" for i in range(int(text))]
    return [p.strip() for p in text.split(",") if p.strip()]


def setup(args) -> int:
    from edgefl.crypto.accumulator import RSA2048
    from edgefl.crypto.accumulator import distributed as dist

    if not args.distributed:
        params = RSA2048.to_params()
        params["setup"] = "RSA-2048 challenge number: factors destroyed in 1991, never published"
    else:
        peers = _peers(args.peers)
        options = dict(bits=args.bits, batch=args.batch, timeout_s=args.timeout)
        if args.as_node:
            result = asyncio.run(_as_node(args.config, args.as_node, peers, options))
        elif args.transport == "mqtt":
            result = asyncio.run(_all_over_mqtt(peers, args.port, options))
        else:
            result = asyncio.run(dist.generate_local(len(peers), names=peers, **options))
        params = {**result.group.to_params(), **dist.encode_result(result), "transport": args.transport}
        s = result.stats
        print(f"{len(peers)} peers agreed on a {result.modulus.bit_length()}-bit modulus in {s.seconds:.1f} s: "
              f"{s.candidates} candidates in {s.rounds} rounds, {s.sieved} past trial division, "
              f"{s.screened} past the first biprimality base")
    text = json.dumps(params, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"parameters written to {args.out}")
    else:
        print(text, end="")
    return 0


async def _as_node(cfg, node_id: str, peers: list[str], options: dict):
    from edgefl.crypto.accumulator import distributed as dist
    from edgefl.transport.session import Session

    if node_id != cfg.node.id:
        raise ValueError(f"--as {node_id}: the profile's node.id is {cfg.node.id!r} (use --set node.id={node_id})")
    async with Session.from_config(cfg) as session:
        await session.wait_connected(options["timeout_s"])
        return await dist.run_over_mqtt(session, peers, **options)


async def _all_over_mqtt(peers: list[str], port: int | None, options: dict):
    """Every peer with its own key, trust directory and MQTT session, through one Mosquitto."""
    from edgefl.crypto.accumulator import distributed as dist
    from edgefl.crypto.keys import SigningKey, save_public
    from edgefl.runtime.config import load_config
    from edgefl.transport.mosquitto import LocalMosquitto
    from edgefl.transport.session import Session

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefl-setup-")))
        if port is None:
            port = stack.enter_context(LocalMosquitto(work / "broker", max_packet_size=4 << 20)).port
        keys = {p: SigningKey() for p in peers}
        sessions = []
        for p in peers:
            cfg = load_config(overrides=[f"node.id={p}", "node.role=fog", "node.site=setup",
                                         f"node.data_dir={work / p}", f"mqtt.port={port}",
                                         "mqtt.max_packet_size=4194304", "mqtt.max_message_size=67108864"], env={})
            keys[p].save(cfg.path(cfg.security.key_file))
            for q, key in keys.items():
                save_public(key.public_key, cfg.path(cfg.security.trust_dir) / f"{q}.pub")
            sessions.append(Session.from_config(cfg))
        for s in sessions:
            await s.__aenter__()
        try:
            await asyncio.gather(*(s.wait_connected(30) for s in sessions))
            results = await asyncio.gather(*(dist.run_over_mqtt(s, peers, **options) for s in sessions))
        finally:
            for s in sessions:
                await s.__aexit__(None, None, None)
    if len({r.modulus for r in results}) != 1:
        raise dist.SetupError("peers disagree on the modulus")
    return results[0]
