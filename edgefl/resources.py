"""Files shipped beside the code: Mosquitto templates (broker/), firmware profiles and first-boot scripts.

An installed wheel carries them as ``edgefl/_data/<folder>``; a source checkout
(editable install, tests) reads the top-level folders directly.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def folder(name: str) -> Path:
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgefl data folder {name!r} not found (looked in {_PKG / '_data'} and {_PKG.parent})")
