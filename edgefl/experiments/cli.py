"""`edgefl experiment NAME`: run an experiment (``edgefl.experiments.plans``), write its tables, plots and JSON."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def register(sub) -> None:
    from edgefl.experiments.lab import default_data
    from edgefl.experiments.plans import EXPERIMENTS

    data = default_data()
    p = sub.add_parser("experiment", help="federated-learning experiments on MNIST: tables, PNG plots, JSON",
                       description="Run an experiment through the in-process federated rounds; see docs/experiments.md.")
    p.add_argument("name", choices=[*EXPERIMENTS, "all"])
    p.add_argument("--data", default=str(data) if data else "generated",
                   help="a folder of MNIST IDX files, an .npz, or 'generated' digits (default: ../shared/data/mnist "
                        "when present, else generated)")
    p.add_argument("--quick", action="store_true",
                   help="a small run (2,000 training images, 3 rounds, 30 %% malicious, fewer aggregators and "
                        "attacks) that finishes in a few minutes")
    p.add_argument("--out", default="experiment-results",
                   help="folder for NAME.md, NAME.json and the plots (default: ./experiment-results)")
    p.add_argument("--resume", action="store_true",
                   help="take the rows of an interrupted run with the same data from OUT/NAME.rows.jsonl")
    p.add_argument("--train", type=int, help="training images across the devices (default 8000; quick 2000)")
    p.add_argument("--test", type=int, help="test images (default 2000; quick 500)")
    p.add_argument("--rounds", type=int, help="rounds of the learning experiments (default 5; quick 3)")
    p.add_argument("--seeds", type=int, help="seeds of the privacy experiments (default 3; quick 1)")
    p.add_argument("--aggregators", type=_names, help="only these aggregators (comma-separated)")
    p.add_argument("--attacks", type=_names, help="only these attacks (comma-separated)")
    p.add_argument("--fractions", type=_floats, help="malicious fractions (default 0.1,0.2,0.3,0.4; quick 0.3)")
    p.add_argument("--epsilons", type=_floats, help="ε per round of the privacy experiments (default 1,2,5,10)")
    p.set_defaults(func=experiment_cmd)


def experiment_cmd(args) -> int:
    from edgefl.experiments import plans
    from edgefl.experiments.lab import Lab
    from edgefl.ml.data import load_dataset

    sc = plans.QUICK if args.quick else plans.FULL
    overrides = {k: v for k, v in (("train", args.train), ("test", args.test), ("rounds", args.rounds),
                                   ("seeds", args.seeds), ("aggregators", args.aggregators),
                                   ("attacks", args.attacks), ("fractions", args.fractions),
                                   ("epsilons", args.epsilons)) if v}
    sc = replace(sc, **overrides)
    if sc.rounds < 1 or sc.train < 1 or sc.test < 1 or sc.seeds < 1:
        raise ValueError("--train, --test, --rounds and --seeds must be positive")
    unknown = [a for a in sc.aggregators if a not in plans.AGGREGATORS] + [x for x in sc.attacks if x not in plans.ATTACKS]
    if unknown:
        raise ValueError(f"unknown aggregator or attack: {', '.join(unknown)}; known: "
                         f"{', '.join(plans.AGGREGATORS)}; {', '.join(plans.ATTACKS)}")
    names = plans.EXPERIMENTS if args.name == "all" else [args.name]
    generated = args.data == "generated"
    data = load_dataset(args.data, sc.train + sc.test, seed=0)
    source = "generated digits" if generated else f"MNIST ({args.data})"

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    makers, trained = plans.extractor_makers(data.subset(slice(0, sc.train)), sc, log=log)
    lab = Lab(data, train=sc.train, test=sc.test, source=source, extractors=makers)
    settings = [s for n in names for s in plans.grid(n, sc)]
    log(f"edgefl experiment {args.name}: {len(settings)} settings on {source}")
    t0 = time.perf_counter()
    out = Path(args.out)
    rows = plans.run_all(lab, settings, log=log, journal=out / f"{args.name}.rows.jsonl", resume=args.resume)
    command = "edgefl experiment " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("experiment") + 1:]) \
        if "experiment" in sys.argv else f"edgefl experiment {args.name}"
    meta = {"name": args.name, "source": source, "scale": "quick" if args.quick else "full",
            "seconds": time.perf_counter() - t0, "command": command, "extractors": trained,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sc.__dict__.items()}}
    markdown, doc = plans.report(names, rows, sc, out, meta)
    md, js = plans.write(out, args.name, markdown, doc)
    print(markdown)
    print(f"\nwrote {md}, {js} and the plots in {out}", file=sys.stderr)
    return 0
