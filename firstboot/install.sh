#!/bin/bash
# Build the agent's venv from the wheel the card carried (edgefl-install.service runs this once,
# with the network up): $OPT/venvs/VERSION, built where it stays (a venv cannot move: its scripts name
# their interpreter by absolute path), switched to only once `edgefl --version` runs there, by renaming
# a new $OPT/venv link over the old. `edgefl update apply` installs later releases the same way.
set -euo pipefail
ROOT=${EDGEFL_ROOT:-}
OPT=$ROOT/opt/edgefl
. "$OPT/install.env"   # VERSION REQUIREMENTS INDEX_URL PIP_ARGS PYTHON
new=$OPT/venvs/$VERSION
rm -rf "$new"
mkdir -p "$OPT/venvs"
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
touch "$new/.complete"
[ -d "$OPT/venv" ] && [ ! -L "$OPT/venv" ] && rm -rf "$OPT/venv"   # an older installer's folder
ln -sfn "venvs/$VERSION" "$OPT/.venv.new"
mv -T "$OPT/.venv.new" "$OPT/venv"
echo "edgefl install: $("$OPT/venv/bin/edgefl" --version) in $OPT/venv -> venvs/$VERSION"
