"""`edgefl bench NAME [--json FILE] [--markdown FILE] [--quick]`."""

from __future__ import annotations

import importlib

from edgefl.runtime.loop import run

# name -> module with ``async def run(**options) -> Report`` and optional ``add_arguments(parser)``
BENCHMARKS = {
    "transport": "edgefl.bench.transport",
    "crypto": "edgefl.bench.crypto",
    "accumulator": "edgefl.bench.accumulator",
    "ml": "edgefl.bench.ml",
    "round": "edgefl.bench.round",
    "ledger": "edgefl.bench.ledger",
}


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks: print a table, write JSON").add_subparsers(
        dest="bench_name", metavar="NAME")
    for name, module in BENCHMARKS.items():
        mod = importlib.import_module(module)
        p = bench.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", metavar="FILE", help="write rows as JSON")
        p.add_argument("--markdown", metavar="FILE", help="write a Markdown table")
        p.add_argument("--quick", action="store_true", help="few iterations: checks it runs, numbers are rough")
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(p)
        p.set_defaults(func=_runner(mod))


def _runner(mod):
    def go(args) -> int:
        options = {k: v for k, v in vars(args).items()
                   if k not in ("json", "markdown", "func", "config", "command", "bench_name", "profile",
                                "overrides", "log_level", "log_json")}
        report = run(mod.run(**options))
        report.emit(json_path=args.json, markdown_path=args.markdown)
        return 0

    return go
