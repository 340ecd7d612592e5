#!/usr/bin/env bash
# Set everything up, then run `edgefl demo` (a federated task: a cloud, two fogs, four devices, over Mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/edgefl demo "$@"
