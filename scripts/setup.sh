#!/usr/bin/env bash
# Set up edgefl on Debian / Raspberry Pi OS (idempotent):
#   system packages (Mosquitto, GMP and OpenSSL headers, compiler; the tools provisioning uses) when root or
#   passwordless sudo,
#   a virtual environment in .venv, and edgefl itself with its native extensions.
# Usage: scripts/setup.sh [test]     ("test" adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EDGEFL_VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(mosquitto mosquitto-clients libgmp-dev libssl-dev python3-venv python3-dev build-essential
              dosfstools mtools fdisk cloud-init systemd  # the second line: provisioning and its tests
              iproute2)  # ip netns, ss: the chaos scenarios' hosts

log() { printf '[setup] %s\n' "$*"; }

install_system_packages() {
    command -v apt-get >/dev/null 2>&1 || { log "no apt-get: install Mosquitto, GMP and OpenSSL headers yourself"; return 0; }
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && { log "system packages present"; return 0; }
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else
            log "not root and no passwordless sudo: please run: sudo apt-get install ${missing[*]}"
            return 0
        fi
    fi
    log "installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_packages

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel Cython
extras="[ml]"
[ "${1:-}" = "test" ] && extras="[ml,bench,test]"
log "installing edgefl$extras (editable; compiles ext/ when a compiler and headers are present)"
"$VENV/bin/python" -m pip install -q -e ".$extras"
"$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null 2>&1 || log "native build failed: pure-Python twins will be used"
# tflite-runtime 2.14 (its last release) crashes under numpy 2, so its backend is tested in a
# separate small environment with numpy<2 (wheels exist for Python <= 3.11).
TFLITE_VENV=${EDGEFL_TFLITE_VENV:-.venv-tflite}
if [ "${1:-}" = "test" ] && [ ! -x "$TFLITE_VENV/bin/python" ]; then
    log "creating $TFLITE_VENV (numpy<2 + tflite-runtime) for the tflite_runtime backend tests"
    if ! { "$PYTHON" -m venv "$TFLITE_VENV" && "$TFLITE_VENV/bin/python" -m pip install -q "numpy<2" "tflite-runtime==2.14.0"; }; then
        log "could not install tflite-runtime for $($PYTHON --version 2>&1): its backend test will not run"
        rm -rf "$TFLITE_VENV"
    fi
fi
"$VENV/bin/python" - <<'PY'
from edgefl import native
for name in native.MODULES:
    native.load(name)
print("[setup] implementations:", native.implementations())
PY
