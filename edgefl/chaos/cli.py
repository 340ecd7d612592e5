"""`edgefl chaos SCENARIO|all [--seed N] [--short] [--json FILE]`."""

from __future__ import annotations

import logging
import signal


def register(sub) -> None:
    from edgefl.chaos import SCENARIOS

    p = sub.add_parser("chaos", help="fault scenarios over the real brokers, processes and chains: PASS/FAIL "
                                     "with faults injected, messages lost, duplicates, time")
    p.add_argument("scenario", choices=[*SCENARIOS, "all"], help="which (all: each in turn)")
    p.add_argument("--seed", type=int, default=1, help="where and when the faults strike (default 1)")
    p.add_argument("--short", action="store_true", help="the short form (fewer faults, fewer rounds; the tests')")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--dir", help="working folder (kept); default: a temporary one, removed after a PASS")
    p.set_defaults(func=chaos_cmd)


def chaos_cmd(args) -> int:
    from pathlib import Path

    from edgefl.chaos import SCENARIOS
    from edgefl.chaos.scenario import run_scenario, write_json

    def stop(signum, frame):  # a SIGTERM unwinds like Ctrl-C: every scenario cleans up what it made
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if args.log_level is None:  # the sessions' INFO lines would drown the scenarios' own
        logging.getLogger().setLevel(logging.WARNING)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for name in names:
        workdir = Path(args.dir) / name if args.dir else None
        results.append(run_scenario(name, seed=args.seed, short=args.short, workdir=workdir,
                                    say=lambda line: print(line, flush=True)))
    if len(results) > 1:
        print("\n".join(["", "scenario | result | faults | lost | duplicates | time",
                         *(f"{r.scenario} | {'PASS' if r.passed else 'FAIL'} | {r.faults} | {r.tally.lost} | "
                           f"{r.tally.duplicates} | {r.seconds:.1f} s" for r in results)]))
    if args.json:
        write_json(args.json, results)
    return 0 if all(r.passed for r in results) else 1
