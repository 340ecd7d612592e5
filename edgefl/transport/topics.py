"""The topic scheme: every node publishes only beneath its own id.

    edgefl/v1/{site}/{role}/{node_id}/{kind}[/{target}]

kind        target      meaning
----------  ----------  ------------------------------------------------------------
status      -           retained liveness: "online" on connect, last will "offline"
crl         -           retained: the certificate revocation list a CA (fog, cloud) publishes
task        -           retained: the cloud's current federated learning task
model       -           retained: the cloud's latest global model of that task (which round is open)
release     -           retained: the latest software release, from the cloud and relayed by each fog
req         node id     a request addressed to ``target`` (correlation id inside)
resp        node id     the response to ``target``, the node that asked
msg         node id     a one-way message to ``target`` (e.g. device -> its fog)
<event>     -           a broadcast from the node (beacon, block, ...)

Because the publisher's id is always the fifth segment, one Mosquitto ACL
pattern (``pattern write edgefl/v1/+/+/%u/#``) confines each identity to its
own subtree, and the broker's idea of who published matches the envelope's
signed sender.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from edgefl.names import ROLES, InvalidName, check_segment

PREFIX = "edgefl/v1"
# Retained kinds: a subscriber gets the last one however old, so receivers skip
# the freshness and replay checks (a CRL carries its own number, status its
# session, a task its id, a global model its round and a release its version: receivers ignore older ones).
RETAINED = frozenset({"status", "crl", "task", "model", "release"})
TopicError = InvalidName  # a topic, or a part of one, that is not an edgefl name
__all__ = ["PREFIX", "RETAINED", "ROLES", "Topic", "TopicError", "check_segment", "matches", "parse", "pattern", "topic"]


class Topic(NamedTuple):
    site: str
    role: str
    node: str
    kind: str
    target: str | None = None

    def __str__(self) -> str:
        base = f"{PREFIX}/{self.site}/{self.role}/{self.node}/{self.kind}"
        return f"{base}/{self.target}" if self.target else base


def topic(site: str, role: str, node: str, kind: str, target: str | None = None) -> str:
    check_segment(site, "site")
    if role not in ROLES:
        raise TopicError(f"role {role!r} must be one of {ROLES}")
    check_segment(node, "node id")
    check_segment(kind, "kind")
    if target is not None:
        check_segment(target, "target")
    return str(Topic(site, role, node, kind, target))


def parse(name: str) -> Topic:
    parts = name.split("/")
    if len(parts) not in (6, 7) or "/".join(parts[:2]) != PREFIX:
        raise TopicError(f"{name!r} is not an edgefl topic")
    site, role, node, kind, *rest = parts[2:]
    return Topic(site, role, node, kind, rest[0] if rest else None)


def pattern(site: str = "+", role: str = "+", node: str = "+", kind: str = "+", target: str | None = None) -> str:
    """A subscription filter; '+' matches any value of that segment."""
    base = f"{PREFIX}/{site}/{role}/{node}/{kind}"
    return f"{base}/{target}" if target else base


@functools.lru_cache(maxsize=1024)
def _split(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("/"))


def matches(pattern: str, name: str) -> bool:
    """MQTT filter matching: '+' is one level, a trailing '#' any number (including none)."""
    pat = _split(pattern)
    parts = name.split("/")
    for i, p in enumerate(pat):
        if p == "#":
            return True
        if i >= len(parts) or (p != "+" and p != parts[i]):
            return False
    return len(parts) == len(pat)
