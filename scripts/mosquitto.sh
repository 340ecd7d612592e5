#!/usr/bin/env bash
# Start Mosquitto on a free loopback port, configured from broker/*.tmpl (foreground; Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/edgefl ] || scripts/setup.sh
exec .venv/bin/edgefl broker run "$@"
