"""`edgefl run` and `edgefl demo`."""

from __future__ import annotations

from edgefl.runtime import run


def register(sub) -> None:
    p = sub.add_parser("run", help="run this node (profile + overrides) until SIGINT/SIGTERM")
    p.add_argument("--for", dest="stop_after", type=float, help="stop after this many seconds")
    p.set_defaults(func=run_cmd)

    p = sub.add_parser("demo", help="a federated task over a local Mosquitto: a cloud, two fogs, six devices, "
                                    "two rounds, cross-chain verification and audit")
    p.add_argument("--port", type=int, help="use the Mosquitto already on 127.0.0.1:PORT")
    p.add_argument("--fogs", type=int, default=2, help="fogs (at least 2; default 2)")
    p.add_argument("--devices", type=int, default=6, help="devices, dealt out over the fogs (default 6: each "
                   "sub-chain a committee of its fog and 3 devices)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    p.add_argument("--epsilon", type=float, default=10.0, help="ε per feature per round (default 10)")
    p.add_argument("--aggregator", default="fedavg", help="the fogs' aggregator (edgefl.fl.aggregate; default fedavg)")
    p.add_argument("--attack", default="none", help="the malicious devices' attack (edgefl.fl.attacks; default none)")
    p.add_argument("--malicious", type=float, default=0.0, help="the fraction of devices that attack")
    p.add_argument("--seed", type=int, default=0, help="who attacks")
    p.add_argument("--train-at", choices=("fog", "device"), default="fog",
                   help="who trains the dense layers: the fogs on the devices' releases (default), or each device")
    p.add_argument("--report", help="the report folder (default: edgefl-demo-<date>-<time> in the temp dir)")
    p.set_defaults(func=demo_cmd)


def run_cmd(args) -> int:
    from edgefl.nodes.node import run_node

    reason = run(run_node(args.config, stop_after=args.stop_after), low_memory=args.config.board.low_memory)
    print(f"stopped: {reason}")
    return 1 if " cannot run: " in reason else 0


def demo_cmd(args) -> int:
    import logging

    from edgefl.nodes.demo import demo

    if args.log_level is None:  # the nodes' INFO lines would drown the demo's own
        logging.getLogger().setLevel(logging.WARNING)
    from edgefl.fl.aggregate import AGGREGATORS
    from edgefl.fl.attacks import ATTACKS

    for name, known, what in ((args.aggregator, AGGREGATORS, "aggregator"), (args.attack, ATTACKS, "attack")):
        if name not in known:
            raise SystemExit(f"edgefl demo: unknown {what} {name!r}; known: {', '.join(sorted(known))}")
    if args.train_at == "fog" and ATTACKS[args.attack].kind == "update":
        raise SystemExit(f"edgefl demo: {args.attack} poisons the model a device sends: that needs --train-at device")
    run(demo(port=args.port, fogs=args.fogs, devices=args.devices, rounds=args.rounds, epsilon=args.epsilon,
             aggregator=args.aggregator, attack=args.attack, malicious=args.malicious, seed=args.seed,
             report=args.report, train_at=args.train_at))
    return 0
