#!/usr/bin/env bash
# Set everything up, then run the whole test suite twice: against the compiled
# extensions (which must be importable) and against the pure-Python twins.
# Extra arguments go to pytest, e.g. scripts/test.sh -k codec
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export EDGEFL_REQUIRE_BROKER=1   # integration tests fail, not skip, without Mosquitto
# tflite-runtime wheels exist up to Python 3.11: there its backend test must run, not skip
if ${PYTHON:-python3} -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then export EDGEFL_REQUIRE_TFLITE=1; fi
start=$(date +%s)
echo "== checks: ruff (lint, import order, bugbear) and mypy (strict where configured) =="
.venv/bin/ruff check edgefl tests
.venv/bin/mypy
echo "== pass 1: compiled extensions =="
EDGEFL_REQUIRE_EXTENSIONS=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "== pass 2: pure-Python twins (EDGEFL_NO_EXTENSIONS=1) =="
EDGEFL_NO_EXTENSIONS=1 .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "== both passes green in $(( $(date +%s) - start )) s =="
