#!/usr/bin/env bash
# Set everything up, then run `edgefl demo` (a signed device <-> fog exchange through Mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/edgefl demo "$@"
