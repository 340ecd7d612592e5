"""Who keeps a sub-chain: its fog and (some of) the fog's devices, as a PBFT committee fixed at genesis.

A fog's committee is the fog and the first ``size - 1`` of its devices by id
(``ledger.committee_size``). Fewer than four members tolerate no byzantine one
(n = 3f + 1), so a smaller site keeps today's chain sealed by its fog alone.
Each member holds a replica of the sub-chain; its certificate (a quorum of
⌈(2n+1)/3⌉ signatures) is the block's ``quorum`` seal. The main chain's
genesis registers the same committee for the sub-chain, so a Type-II anchor
needs that quorum too (``edgefl.consensus.endorse``).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from edgefl.consensus.proposal import ProposalSpec
from edgefl.crypto.keys import SigningKey, VerifyingKey
from edgefl.ledger.committee import Committee
from edgefl.ledger.sealer import QuorumSealer, Sealer, SingleSealer

MIN_BFT = 4  # the smallest committee that survives one byzantine member


def members(fog: str, devices: Sequence[str], size: int) -> list[str]:
    """The sub-chain committee of ``fog``: itself and up to ``size - 1`` devices, or itself alone."""
    chosen = [fog, *sorted(devices)[:max(0, size - 1)]]
    return chosen if len(chosen) >= MIN_BFT else [fog]


def spec_fields(keys: Iterable[tuple[str, VerifyingKey]]) -> dict:
    """The ChainSpec fields of a chain kept by these members: PBFT with a BFT quorum, or one sealer."""
    keys = list(keys)
    if len(keys) == 1:
        return {"sealer": "single", "committee": Committee.of(keys)}
    return {"sealer": "quorum", "committee": Committee.bft(keys), "proposal": ProposalSpec("pbft")}


def main_fields(cloud: str, keys: Iterable[tuple[str, VerifyingKey]]) -> dict:
    """The main chain's final committee: the cloud and the fog aggregators. The cloud makes the blocks (it is
    the one that serves the chain), and every member votes on its checkpoints (FFG, equal weights): a block
    is final once members holding two thirds of the weight justified it and its child."""
    keys = list(keys)
    ids = [i for i, _ in keys]
    return {"sealer": "single", "committee": Committee.of(keys),
            "finality": {i: 1 for i in ids} if len(ids) > 1 else None}


def registered(keys: Iterable[tuple[str, VerifyingKey]]) -> Committee:
    """What the main chain's genesis registers for the sub-chain: who must sign its Type-II anchors."""
    return spec_fields(keys)["committee"]


def genesis_sealer(spec, holder: str, keys: Mapping[str, SigningKey]) -> Sealer:
    """Block 0 is checked against the spec it carries: ``holder`` (who serves the chain) seals a single-sealer
    chain's; a committee's needs every member's signature (whoever creates the site holds their keys once, as
    it issues them)."""
    if spec.sealer == "single":
        return SingleSealer(holder, keys[holder])
    return QuorumSealer(spec.committee.ids[0], [(i, keys[i]) for i in spec.committee.ids])


def is_pbft(spec) -> bool:
    return spec.proposal is not None and spec.proposal.name == "pbft" and len(spec.committee.members) > 1
