"""`edgefl bench NAME [--json FILE] [--markdown FILE] [--quick]`, `bench all` and `bench compare`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path

from edgefl.runtime import run

# name -> module with ``async def run(**options) -> Report`` and optional ``add_arguments(parser)``
BENCHMARKS = {
    "transport": "edgefl.bench.transport",
    "crypto": "edgefl.bench.crypto",
    "accumulator": "edgefl.bench.accumulator",
    "ml": "edgefl.bench.ml",
    "round": "edgefl.bench.round",
    "ledger": "edgefl.bench.ledger",
    "consensus": "edgefl.bench.consensus",
    "scale": "edgefl.bench.scale",
    "device": "edgefl.bench.device",
}


def _summary(module: str) -> str:
    """The first line of a layer module's docstring, read from its file: the parser of every `edgefl` command
    is built at each start, and `edgefl run` on a device must not import every benchmark to build it."""
    spec = importlib.util.find_spec(module)
    text = Path(spec.origin).read_text() if spec and spec.origin else ""
    m = re.match(r'\s*(?:[rub]{0,2})("""|\'\'\')\s*(.*)', text)
    return m.group(2).strip().rstrip('"\'') if m else ""


class _LayerParser(argparse.ArgumentParser):
    """A layer's parser that adds the layer's own options (importing its module) only when it is used."""

    layer_module: str | None = None

    def _load(self) -> None:
        module, self.layer_module = self.layer_module, None
        if module:
            add_layer_arguments(self, module)

    def parse_known_args(self, args=None, namespace=None):
        self._load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()


def add_layer_arguments(p: argparse.ArgumentParser, module: str) -> None:
    """The options every layer's benchmark takes, and its own."""
    p.add_argument("--json", metavar="FILE", help="write rows as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown table")
    p.add_argument("--quick", action="store_true", help="few iterations: checks it runs, numbers are rough")
    mod = importlib.import_module(module)
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(p)


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks: print a table, write JSON").add_subparsers(
        dest="bench_name", metavar="NAME", parser_class=_LayerParser)
    for name, module in BENCHMARKS.items():
        p = bench.add_parser(name, help=_summary(module))
        p.layer_module = module
        p.set_defaults(func=_runner(module))

    p = bench.add_parser("all", help="every layer's benchmark, one report (Markdown, HTML, PNG charts, JSON) "
                                     "beside the published tables")
    p.add_argument("--quick", action="store_true", help="every layer quick (under 3 minutes on 2 cores)")
    p.add_argument("--profile", dest="board", metavar="NAME",
                   help="run under a board profile's caps (cores by affinity, thread counts): approximates, "
                        "does not emulate, the board")
    p.add_argument("--layers", help="comma-separated subset of the layers (default: all)")
    p.add_argument("--json", metavar="FILE", help="also write the report's JSON here")
    p.add_argument("--out", metavar="DIR", default="bench-report",
                   help="report folder: report.md, report.html, report.json, charts (default bench-report)")
    p.add_argument("--readme", metavar="FILE",
                   help="replace the generated benchmark section of this README with the run's table and charts")
    p.set_defaults(func=_all)

    p = bench.add_parser("report", help="write the report (and the README section) again from a `bench all` JSON")
    p.add_argument("file", metavar="REPORT.json")
    p.add_argument("--out", metavar="DIR", default="bench-report")
    p.add_argument("--readme", metavar="FILE")
    p.set_defaults(func=_report)

    p = bench.add_parser("compare", help="row-by-row ratios between two runs (B / A), flagging changes beyond "
                                         "the runs' own spread")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any row got worse")
    p.set_defaults(func=_compare)


def _runner(module: str):
    def go(args) -> int:
        mod = importlib.import_module(module)
        options = {k: v for k, v in vars(args).items()
                   if k not in ("json", "markdown", "func", "config", "command", "bench_name", "profile",
                                "overrides", "log_level", "log_json")}
        report = run(mod.run(**options))
        report.emit(json_path=args.json, markdown_path=args.markdown)
        return 0

    return go


def _all(args) -> int:
    from edgefl.bench import suite

    layers = [x.strip() for x in args.layers.split(",") if x.strip()] if args.layers else None
    doc = suite.run_all(quick=args.quick, profile=args.board, layers=layers)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    _write(doc, args)
    return 0 if all(e["status"] != "failed" for e in doc["layers"]) else 1


def _report(args) -> int:
    from edgefl.bench import suite

    doc = json.loads(Path(args.file).read_text())
    suite.check_schema(doc)
    _write(doc, args)
    return 0


def _write(doc: dict, args) -> None:
    from edgefl.bench import report

    paths = report.write(doc, Path(args.out))
    if args.readme:
        report.update_readme(Path(args.readme), doc, Path(args.out))
    print(report.markdown(doc, charts={}, layers=False))  # the layers' own tables are in the report files
    print(f"report: {', '.join(str(p) for p in paths)}", file=sys.stderr)


def _compare(args) -> int:
    from edgefl.bench import compare

    result = compare.compare(compare.load(args.a), compare.load(args.b))
    print(compare.table(result, args.a, args.b))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if args.fail_on_regression and any(r["verdict"] == "worse" for r in result) else 0
