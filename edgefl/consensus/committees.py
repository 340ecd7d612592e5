"""Who keeps a sub-chain: its fog and (some of) the fog's devices, as a PBFT committee.

A fog's committee is the fog and the first ``size - 1`` of its devices by id
(``ledger.committee_size``), fixed at genesis, or, with ``ledger.epoch_blocks``,
the pool its committee is re-drawn from every epoch (``edgefl.consensus.epoch``). Fewer than four members tolerate no byzantine one
(n = 3f + 1), so a smaller site keeps today's chain sealed by its fog alone.
Each member holds a replica of the sub-chain; its certificate (a quorum of
⌈(2n+1)/3⌉ signatures) is the block's ``quorum`` seal. The main chain's
genesis registers the same committee for the sub-chain, so a Type-II anchor
needs that quorum too (``edgefl.consensus.endorse``).
"""

from __future__ import annotations

import shutil
from typing import Callable, Iterable, Mapping, Sequence

from edgefl.consensus.epoch import EpochSpec
from edgefl.consensus.proposal import ProposalSpec
from edgefl.crypto import SigningKey, VerifyingKey
from edgefl.ledger import Chain, ChainSpec, Committee, QuorumSealer, SingleSealer
from edgefl.ledger.sealer import Sealer

MIN_BFT = 4  # the smallest committee that survives one byzantine member (a sub-chain's least)


def members_of(fog: str, devices: Sequence[str], size: int) -> list[str]:
    """The sub-chain committee of ``fog``: itself and up to ``size - 1`` devices, or itself alone."""
    chosen = [fog, *sorted(devices)[:max(0, size - 1)]]
    return chosen if len(chosen) >= MIN_BFT else [fog]


def spec_fields(keys: Iterable[tuple[str, VerifyingKey]], *, epoch_blocks: int = 0, seats: int = MIN_BFT) -> dict:
    """The ChainSpec fields of a chain kept by these members (the first is the one that serves it): PBFT with a
    BFT quorum, or one sealer. With ``epoch_blocks`` and more members than ``seats``, they are the pool of a
    committee re-drawn every ``epoch_blocks`` blocks; the first ``seats`` sit in epoch 0 and the first always."""
    keys = list(keys)
    if len(keys) == 1:
        return {"sealer": "single", "committee": Committee.of(keys)}
    fields = {"sealer": "quorum", "committee": Committee.bft(keys), "proposal": ProposalSpec("pbft")}
    if epoch_blocks and len(keys) > seats:
        fields["epochs"] = EpochSpec(blocks=epoch_blocks, seats=seats, first=sorted(i for i, _ in keys[:seats]),
                                     always=[keys[0][0]])
    return fields


def main_fields(cloud: str, keys: Iterable[tuple[str, VerifyingKey]]) -> dict:
    """The main chain's final committee: the cloud and the fog aggregators, every one voting on its
    checkpoints (FFG, equal weights: a block is final once members holding two thirds of the weight justified
    it and its child) and making its blocks: PBFT, each view's leader drawn in proportion to its credit, every
    member a replica. Two or three members tolerate no byzantine one, so their quorum is all of them: no
    member alone can write the main chain, but any one stopped stops it. A cloud alone seals alone."""
    keys = list(keys)
    ids = [i for i, _ in keys]
    votes = {i: 1 for i in ids} if len(ids) > 1 else None
    if len(ids) > 1:
        return {"sealer": "quorum", "committee": Committee.bft(keys), "finality": votes,
                "proposal": ProposalSpec("pbft", credit=dict(votes))}
    return {"sealer": "single", "committee": Committee.of(keys), "finality": votes}


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


def site_geneses(cloud: str, fogs: Mapping[str, Sequence[str]], config: Callable, public: Callable[[str], VerifyingKey],
                 ts: int) -> dict[str, ChainSpec]:
    """What `edgefl ledger init` gives a site: holder -> ChainSpec for the cloud's main chain and each fog's
    sub-chain. The main chain registers every sub-chain's committee (its anchors' signers); ``config(node)``
    and ``public(node)`` are a node's configuration and public key."""
    from edgefl.ledger.service import chain_id  # the service builds on this module

    def keys(nodes: Iterable[str]) -> list:
        return [(n, public(n)) for n in nodes]

    members = {f: members_of(f, ds, config(f).ledger.committee_size) for f, ds in fogs.items()}
    main = config(cloud)
    specs = {cloud: ChainSpec(
        chain=chain_id(main), role="main", **main_fields(cloud, keys([cloud, *fogs])),
        max_block=main.ledger.max_block_bytes, ts=ts, subchains={f: registered(keys(m)) for f, m in members.items()})}
    for f, m in members.items():
        led = config(f).ledger
        specs[f] = ChainSpec(chain=chain_id(config(f)), role="sub",
                             **spec_fields(keys(m), epoch_blocks=led.epoch_blocks, seats=led.epoch_seats),
                             max_block=config(f).ledger.max_block_bytes, ts=ts, parent=main.ledger.main,
                             parent_committee=Committee.of(keys([cloud])))
    return specs


def write_genesis(spec: ChainSpec, holder: str, config: Callable, private: Callable[[str], SigningKey]) -> None:
    """Block 0 of ``spec`` in its holder's store, and the same file in every other member's (their replicas)."""
    from edgefl.ledger.service import db_path

    first = db_path(config(holder), spec.chain)
    first.parent.mkdir(parents=True, exist_ok=True)
    Chain.create(first, spec, genesis_sealer(spec, holder, {i: private(i) for i in spec.committee.ids})).close()
    for member in spec.committee.ids:
        if member != holder:
            path = db_path(config(member), spec.chain)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first, path)


def is_pbft(spec) -> bool:
    return spec.proposal is not None and spec.proposal.name == "pbft" and len(spec.committee.members) > 1
