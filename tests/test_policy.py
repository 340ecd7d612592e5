"""Endorsement policies: each accepts exactly the endorser sets it should, at admission and in block validation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.consensus.policy import POLICIES, PolicySpec, from_spec
from edgefl.crypto.keys import SigningKey
from edgefl.ledger.errors import InvalidBlock, InvalidTx
from edgefl.ledger.records import Note
from edgefl.ledger.tx import KINDS, ChainSpec, decode_tx, endorse, genesis_tx, record_tx
from edgefl.ledger.validation import build_block
from tests.ledger_helpers import KEYS, T0, registry, sealer_for, sub_spec

IDS = sorted(KEYS)
members = st.lists(st.sampled_from(IDS), min_size=1, max_size=len(IDS), unique=True).map(sorted)


def spec_with(p: PolicySpec, rtype: str = "*") -> ChainSpec:
    return dataclasses.replace(sub_spec(), policies={rtype: p})


def endorsed(signer: str, endorsers, i: int = 0) -> bytes:
    return record_tx(Note("t", i.to_bytes(8, "big")), signer, KEYS[signer], ts_ms=T0 + i,
                     endorsers=[(e, KEYS[e]) for e in endorsers if e != signer])


def admitted(raw: bytes, spec: ChainSpec) -> bool:
    try:
        KINDS["record"].admit(decode_tx(raw), spec, registry())
        return True
    except InvalidTx as exc:
        assert exc.reason == "endorsement_policy" and exc.field == "tx.sigs"
        return False


@st.composite
def case(draw):
    name = draw(st.sampled_from(sorted(POLICIES)))
    listed = draw(members) if name != "k-of-any" else None
    k = draw(st.integers(1, len(listed) if listed else 4)) if name in ("k-of", "k-of-any") else None
    signer = draw(st.sampled_from(IDS))
    endorsers = set(draw(st.lists(st.sampled_from(IDS), unique=True))) | {signer}
    return PolicySpec(name, listed, k), signer, endorsers


def expected(p: PolicySpec, endorsers: set[str]) -> bool:
    """The policies' definitions, stated over the endorser set."""
    if p.name == "and":
        return all(m in endorsers for m in p.members)
    if p.name == "or":
        return any(m in endorsers for m in p.members)
    if p.name == "k-of":
        return sum(m in endorsers for m in p.members) >= p.k
    return len(endorsers) >= p.k


@settings(max_examples=120, deadline=None)
@given(case())
def test_each_policy_accepts_exactly_what_it_should(c):
    p, signer, endorsers = c
    spec = spec_with(p)
    assert admitted(endorsed(signer, endorsers), spec) == expected(p, endorsers)


@settings(max_examples=40, deadline=None)
@given(case())
def test_policies_round_trip_canonically_in_the_chain_spec(c):
    p = c[0]
    spec = spec_with(p, "note")
    raw = genesis_tx(spec)
    back = decode_tx(raw).body
    assert back == spec and codec.encode_message(back.policies["note"]) == codec.encode_message(p)
    assert from_spec(back.policies["note"]).spec == p


def test_two_of_any_rejects_a_record_endorsed_by_one_malicious_member():
    spec = spec_with(PolicySpec("k-of-any", None, 2))
    mallory = "peer-1"
    alone = endorsed(mallory, [])
    assert not admitted(alone, spec)
    # a second signature under an honest member's name that mallory cannot make: refused, not ignored
    forged = endorse(alone, "peer-2", SigningKey(bytes([99]) * 32))
    with pytest.raises(InvalidTx) as err:
        KINDS["record"].admit(decode_tx(forged), spec, registry())
    assert err.value.reason == "bad_signature" and err.value.field == "tx.sigs[1]"
    # mallory signing twice does not make two endorsers: the list is one signature per signer
    tx = decode_tx(alone)
    twice = codec.encode_message(dataclasses.replace(
        codec.lookup("ledger.tx", 1).from_wire(codec.decode(alone)), sigs=[tx.sigs[0], tx.sigs[0]]))
    with pytest.raises(InvalidTx, match="one each"):
        KINDS["record"].admit(decode_tx(twice), spec, registry())
    # an honest member's endorsement makes it acceptable
    assert admitted(endorse(alone, "peer-2", KEYS["peer-2"]), spec)


def test_the_policy_is_per_record_type_and_endorsements_without_a_policy_are_refused():
    spec = spec_with(PolicySpec("and", ["fog-a"]), Note.TYPE)
    assert not admitted(endorsed("dev-1", []), spec)
    assert admitted(endorsed("dev-1", ["fog-a"]), spec)
    other = spec_with(PolicySpec("and", ["fog-a"]), "no.such.type")
    assert admitted(endorsed("dev-1", []), other)  # the policy names another type
    with pytest.raises(InvalidTx, match="exactly one signature"):
        KINDS["record"].admit(decode_tx(endorsed("dev-1", ["fog-a"])), sub_spec(), registry())


def test_bad_policies_are_refused_in_the_spec_naming_the_field():
    for bad, field in [(PolicySpec("xor", ["fog-a"]), "name"), (PolicySpec("and", []), "members"),
                       (PolicySpec("k-of", ["fog-a"], 2), "k"), (PolicySpec("k-of-any", ["fog-a"], 1), "members"),
                       (PolicySpec("or", ["fog-b", "fog-a"]), "members")]:
        with pytest.raises(InvalidTx) as err:
            genesis_tx(spec_with(bad))
        assert err.value.field == f"genesis.policies['*'].{field}"


def test_block_validation_checks_the_policy_too(tmp_path):
    from edgefl.ledger.chain import Chain
    spec = spec_with(PolicySpec("k-of", ["fog-a", "peer-1", "peer-2"], 2))
    chain = Chain.create(tmp_path / "c.db", spec, sealer_for("fog-a"), registry=registry())
    good = endorsed("dev-1", ["fog-a", "peer-2"], 1)
    chain.submit(good)
    chain.mine(sealer_for("fog-a"), ts_ms=T0 + 1000)
    weak = endorsed("dev-1", ["peer-1"], 2)
    with pytest.raises(InvalidTx):
        chain.submit(weak)
    # a proposer that skips admission: every replica's block validation refuses the block
    block = build_block(chain.tip, chain.id, [decode_tx(weak)], sealer_for("fog-a"), T0 + 2000)
    with pytest.raises(InvalidBlock) as err:
        chain.append(block.raw)
    assert err.value.reason == "endorsement_policy" and err.value.field.startswith("block.txs[0]")
    assert chain.verify() == 2
