"""`edgefl run` and `edgefl demo`."""

from __future__ import annotations

from edgefl.runtime.loop import run


def register(sub) -> None:
    p = sub.add_parser("run", help="run this node (profile + overrides) until SIGINT/SIGTERM")
    p.add_argument("--for", dest="stop_after", type=float, help="stop after this many seconds")
    p.set_defaults(func=run_cmd)

    p = sub.add_parser("demo", help="signed device <-> fog exchange through a local Mosquitto")
    p.add_argument("--port", type=int, help="use the Mosquitto already on 127.0.0.1:PORT")
    p.add_argument("--pings", type=int, default=50)
    p.set_defaults(func=demo_cmd)


def run_cmd(args) -> int:
    from edgefl.nodes.node import run_node

    reason = run(run_node(args.config, stop_after=args.stop_after))
    print(f"stopped: {reason}")
    return 0


def demo_cmd(args) -> int:
    from edgefl.nodes.demo import demo

    run(demo(port=args.port, pings=args.pings))
    return 0
