#!/bin/bash
# Install the edgefl node carried in this folder onto the system it boots (as root, once):
# the service user, its data directory (0700, secrets 0600), its profile, the wheel and the
# systemd units, enabled; then the secrets are wiped from the boot partition.
# Run by firstrun.sh (Raspberry Pi OS Bookworm) or cloud-init's runcmd (Trixie); on a fog or cloud
# host, run it by hand from a copy of the folder `edgefl provision` wrote.
# EDGEFL_ROOT (default /) installs into another root instead: the tests' fake root.
set -euo pipefail
ROOT=${EDGEFL_ROOT:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/node.env"   # NODE ROLE SERVICE_USER DATA_DIR PROFILE OPT UNITS
log() { printf 'edgefl setup: %s\n' "$*"; }
SYSTEMCTL=(systemctl)
[ -n "$ROOT" ] && SYSTEMCTL=(systemctl "--root=$ROOT")

# the unprivileged user the agent runs as: no login, no home of its own beyond its data
if ! grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd"; then
    useradd ${ROOT:+--prefix "$ROOT"} --system --user-group --no-create-home --home-dir "$DATA_DIR" \
        --shell /usr/sbin/nologin --comment "edgefl $ROLE agent" "$SERVICE_USER"
fi
uid=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $3}' "$ROOT/etc/passwd")
gid=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $4}' "$ROOT/etc/passwd")

# its data directory: keys 0600, everything else readable by it alone
install -d -m 0700 -o "$uid" -g "$gid" "$ROOT$DATA_DIR"
cp -R "$HERE/data/." "$ROOT$DATA_DIR/"
chown -R "$uid:$gid" "$ROOT$DATA_DIR"
find "$ROOT$DATA_DIR" -type d -exec chmod 0700 {} +
find "$ROOT$DATA_DIR" -type f -exec chmod 0600 {} +

# its profile: root's, read-only to the agent
install -d -m 0755 "$ROOT$(dirname "$PROFILE")"
install -m 0644 "$HERE/edgefl.toml" "$ROOT$PROFILE"

# the code: the wheel and the installer edgefl-install.service runs once the network is up
install -d -m 0755 "$ROOT$OPT" "$ROOT$OPT/wheels"
install -m 0755 "$HERE/install.sh" "$ROOT$OPT/install.sh"
install -m 0644 "$HERE/install.env" "$ROOT$OPT/install.env"
for wheel in "$HERE"/wheels/*.whl; do [ -e "$wheel" ] && install -m 0644 "$wheel" "$ROOT$OPT/wheels/"; done

enable=()
for unit in $UNITS; do
    install -m 0644 "$HERE/units/$unit" "$ROOT/etc/systemd/system/$unit"
    # what another unit starts (edgefl-update.service, by edgefl-update.path) has no [Install] of its own
    grep -q '^\[Install\]' "$HERE/units/$unit" && enable+=("$unit")
done
"${SYSTEMCTL[@]}" enable "${enable[@]}"

# nothing secret stays on the (world-readable, FAT) boot partition
rm -rf "$HERE/data"
log "installed $ROLE $NODE: data in $DATA_DIR, profile $PROFILE, units $UNITS"
