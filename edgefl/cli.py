"""The `edgefl` command line.

Each feature package contributes its sub-commands through a ``register(subparsers)``
function in its ``cli`` module, listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edgefl import __version__
from edgefl.runtime import ConfigError, load_config, setup_logging

COMMAND_MODULES = [
    "edgefl.crypto.cli",
    "edgefl.crypto.accumulator.cli",
    "edgefl.transport.cli",
    "edgefl.nodes.cli",
    "edgefl.ledger.cli",
    "edgefl.bench.cli",
    "edgefl.ml.cli",
    "edgefl.provision.cli",
    "edgefl.experiments.cli",
    "edgefl.update.cli",
    "edgefl.chaos.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgefl {__version__}")
    parser.add_argument("--profile", help="firmware profile: a name in firmware_profiles/ (pi4, fog, …) or a path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a profile value (repeatable); EDGEFL_SECTION__KEY=VALUE works too")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="log JSON lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def config_from(args: argparse.Namespace):
    return load_config(args.profile, overrides=args.overrides)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        cfg = config_from(args)
    except ConfigError as exc:
        print(f"edgefl: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or cfg.log.level, json_lines=args.log_json or cfg.log.json)
    args.config = cfg
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # a setting that only the command itself could judge (e.g. a device without a fog)
        print(f"edgefl: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a clean one-line error for expected failures; tracebacks under DEBUG
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"edgefl {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
