"""`edgefl run` and `edgefl demo`."""

from __future__ import annotations

from edgefl.runtime.loop import run


def register(sub) -> None:
    p = sub.add_parser("run", help="run this node (profile + overrides) until SIGINT/SIGTERM")
    p.add_argument("--for", dest="stop_after", type=float, help="stop after this many seconds")
    p.set_defaults(func=run_cmd)

    p = sub.add_parser("demo", help="a federated task over a local Mosquitto: a cloud, two fogs, four devices, "
                                    "two rounds, cross-chain verification and audit")
    p.add_argument("--port", type=int, help="use the Mosquitto already on 127.0.0.1:PORT")
    p.set_defaults(func=demo_cmd)


def run_cmd(args) -> int:
    from edgefl.nodes.node import run_node

    reason = run(run_node(args.config, stop_after=args.stop_after))
    print(f"stopped: {reason}")
    return 0


def demo_cmd(args) -> int:
    import logging

    from edgefl.nodes.demo import demo

    if args.log_level is None:  # the nodes' INFO lines would drown the demo's own
        logging.getLogger().setLevel(logging.WARNING)
    run(demo(port=args.port))
    return 0
