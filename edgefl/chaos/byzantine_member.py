"""``python -m edgefl.chaos.byzantine_member BEHAVIOUR [SEED] EDGEFL-ARGS…``: ``edgefl`` itself, except that
this node's committee replicas misbehave (``edgefl.consensus.byzantine``: silent, bad_sig, replay,
equivocate). Its part in the federated task stays honest: only its consensus messages are byzantine.
The committee scenario starts its faulty members this way; no profile setting can make a node byzantine."""

from __future__ import annotations

import functools
import sys

from edgefl.consensus import ByzantineProducer
from edgefl.consensus.byzantine import BEHAVIOURS
from edgefl.ledger import LedgerNode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BEHAVIOURS:
        raise SystemExit(f"usage: python -m edgefl.chaos.byzantine_member {{{','.join(BEHAVIOURS)}}} [SEED] ARGS…")
    behaviour, rest = argv[0], argv[1:]
    seed = int(rest.pop(0)) if rest and rest[0].isdigit() else 0
    LedgerNode.committee_producer = functools.partial(ByzantineProducer, behaviour=behaviour, seed=seed)
    from edgefl.cli import main as edgefl

    return edgefl(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
