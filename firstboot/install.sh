#!/bin/bash
# Build the agent's venv from the wheel the card carried (edgefl-install.service runs this once,
# with the network up): a fresh venv beside the old one, switched to only once `edgefl --version` runs.
set -euo pipefail
ROOT=${EDGEFL_ROOT:-}
OPT=$ROOT/opt/edgefl
. "$OPT/install.env"   # VERSION REQUIREMENTS INDEX_URL PIP_ARGS PYTHON
new=$OPT/venv.new
rm -rf "$new"
"${PYTHON:-python3}" -m venv "$new"
args=(--no-cache-dir --disable-pip-version-check)
[ -n "${INDEX_URL:-}" ] && args+=(--index-url "$INDEX_URL")
# shellcheck disable=SC2206
args+=(${PIP_ARGS:-})
wheels=("$OPT"/wheels/edgefl-*.whl)
if [ -e "${wheels[0]}" ]; then target=${wheels[0]}; else target="edgefl==$VERSION"; fi
# shellcheck disable=SC2086
"$new/bin/pip" install "${args[@]}" "$target" $REQUIREMENTS
"$new/bin/edgefl" --version
rm -rf "$OPT/venv.old"
[ -d "$OPT/venv" ] && mv "$OPT/venv" "$OPT/venv.old"
mv "$new" "$OPT/venv"
echo "edgefl install: $("$OPT/venv/bin/edgefl" --version) in $OPT/venv"
