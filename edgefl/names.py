"""Names every layer shares: the roles, and the one rule for a site, node or kind name.

Node ids appear in certificates, ledger records and MQTT topics alike, so the rule lives below all three
(crypto, ledger and transport import it from here).
"""

from __future__ import annotations

import re

from edgefl.errors import EdgeflError

__all__ = ["ROLES", "InvalidName", "check_segment"]

ROLES = ("device", "fog", "cloud")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InvalidName(EdgeflError, ValueError):
    reason = "name"


def check_segment(value: str, what: str) -> str:
    """``value`` if it is 1-64 of [A-Za-z0-9._-] starting alphanumeric (safe in a topic, a path, a CN)."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise InvalidName(f"{what} {value!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
    return value
