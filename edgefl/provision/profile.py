"""A node's own profile: a board's firmware profile with the node's settings laid over it, as TOML.

``edgefl --profile FILE`` reads one profile; a provisioned node's is the
board's (``pi4``, ``fog``, …) with its ids, hosts, files and peers filled in,
so the node runs with no ``--set`` at all.  The result is checked by loading
it, so a bad setting fails here, not on the card.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from edgefl.runtime import Config, load_config
from edgefl.runtime.config import profile_path

Settings = dict[str, dict[str, Any]]  # section -> key -> value


def merged(board: str, settings: Settings) -> Settings:
    """The board's profile (a name in firmware_profiles/ or a path) with ``settings`` laid over it."""
    data = tomllib.loads(profile_path(board).read_text())
    for section, values in settings.items():
        data.setdefault(section, {}).update(values)
    return data


def render(board: str, settings: Settings, *, header: str = "") -> str:
    """TOML text of ``merged(board, settings)``, validated by the configuration loader."""
    data = merged(board, settings)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in data.items():
        lines += ["", f"[{section}]"] + [f"{key} = {_value(v)}" for key, v in values.items()]
    text = "\n".join(lines).lstrip("\n") + "\n"
    check(text)
    return text


def check(text: str, overrides=()) -> Config:
    """The configuration ``text`` gives; ``ConfigError`` (naming the key) unless it is a valid profile."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        return load_config(f.name, env={}, overrides=overrides)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")
