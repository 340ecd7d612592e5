"""Batch proofs (Protocol 2): many transactions against one accumulator value, checked at once."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.crypto import accumulator
from edgefl.ledger.errors import ProofError
from edgefl.ledger.proofs import MAX_BATCH, BatchProof, verify_batch_proof
from tests.ledger_helpers import fill, new_chain, sub_spec


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    c = new_chain(tmp_path_factory.mktemp("batch"), sub_spec())
    ids = fill(c, 12, 3)
    yield c, ids
    c.close()


def _wire(proof: BatchProof) -> BatchProof:
    """Through canonical CBOR and the schema check, as a peer would receive it."""
    return BatchProof.from_wire(codec.decode(codec.encode_message(proof), canonical=True))


def _acc(c, at):
    return accumulator.from_bytes(c.store.block_row(at)[3])


@settings(max_examples=25, deadline=None)
@given(data=st.data(), method=st.sampled_from(["aggregated", "weighted"]))
def test_any_subset_verifies_at_any_later_height(chain, data, method):
    c, ids = chain
    picked = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=10, unique=True))
    lowest_ok = max(c.store.tx(t)[0] for t in picked)
    at = data.draw(st.integers(lowest_ok, c.tip.height))
    proof = c.batch_proof(picked, at, method)
    opened = verify_batch_proof(_wire(proof), _acc(c, at), chain=c.id, at=at)
    assert [info.id for info, _ in opened] == picked
    assert [h.height for _, h in opened] == [c.store.tx(t)[0] for t in picked]


def test_a_batch_is_rejected_against_an_older_or_other_value(chain):
    c, ids = chain
    proof = c.batch_proof([ids[0], ids[20]], c.tip.height)
    with pytest.raises(ProofError) as err:
        verify_batch_proof(proof, _acc(c, c.tip.height - 1))  # the right proof, the wrong trusted value
    assert err.value.reason == "not_member"
    with pytest.raises(ProofError, match="height"):
        verify_batch_proof(proof, _acc(c, c.tip.height), at=c.tip.height - 1)
    with pytest.raises(ProofError, match="not 'fog-b'"):
        verify_batch_proof(proof, _acc(c, c.tip.height), chain="fog-b")


@pytest.mark.parametrize("method", ["aggregated", "weighted"])
def test_tampered_batches_are_rejected(chain, method):
    c, ids = chain
    at = c.tip.height
    acc = _acc(c, at)
    proof = c.batch_proof([ids[1], ids[10], ids[30]], at, method)
    # a transaction swapped for another one of the same block: the Merkle path no longer leads to the root
    other = c.store.tx(ids[2])[2]
    swapped = dataclasses.replace(proof, items=[dataclasses.replace(proof.items[0], tx=other), *proof.items[1:]])
    with pytest.raises(ProofError) as err:
        verify_batch_proof(swapped, acc)
    assert err.value.reason == "bad_path"
    # a witness changed: the memberships fail together
    if method == "aggregated":
        w = accumulator.from_bytes(proof.aggregate[0])
        bad = dataclasses.replace(proof, aggregate=[accumulator.to_bytes(accumulator.update(w, 3)), proof.aggregate[1]])
    else:
        w = accumulator.from_bytes(proof.items[1].witness)
        item = dataclasses.replace(proof.items[1], witness=accumulator.to_bytes(accumulator.update(w, 3)))
        bad = dataclasses.replace(proof, items=[proof.items[0], item, proof.items[2]])
    with pytest.raises(ProofError) as err:
        verify_batch_proof(bad, acc)
    assert err.value.reason == "not_member"
    # the aggregate of a subset does not prove a superset
    if method == "aggregated":
        smaller = c.batch_proof([ids[1], ids[10]], at)
        mixed = dataclasses.replace(proof, aggregate=smaller.aggregate)
        with pytest.raises(ProofError):
            verify_batch_proof(mixed, acc)


def test_the_unsound_product_check_is_refused_at_both_ends(chain):
    c, ids = chain
    with pytest.raises(ProofError, match="unweighted"):
        c.batch_proof(ids[:2], method="unweighted")
    proof = c.batch_proof(ids[:2], method="weighted")
    with pytest.raises(ProofError, match="unweighted"):
        verify_batch_proof(dataclasses.replace(proof, method="unweighted"), _acc(c, c.tip.height))


def test_forged_witness_pair_that_fools_protocol_3_is_rejected(chain):
    """w1·z^{x2} and w2·z^{−x1} keep ∏ w^x unchanged (Protocol 3 accepts them); the weighted check does not."""
    c, ids = chain
    at = c.tip.height
    proof = c.batch_proof([ids[0], ids[33]], at, "weighted")
    (w1, w2) = [accumulator.from_bytes(i.witness) for i in proof.items]
    _, (h1, h2) = zip(*verify_batch_proof(proof, _acc(c, at)))
    x1, x2 = h1.element(), h2.element()
    group = accumulator.RSA2048
    z = group.pow(group.generator, 12345)
    f1 = group.canonical(w1 * group.pow(z, x2) % group.modulus)
    f2 = group.canonical(w2 * pow(group.pow(z, x1), -1, group.modulus) % group.modulus)
    assert accumulator.batch_verify([(x1, _acc(c, at)), (x2, _acc(c, at))], [f1, f2], method="unweighted")
    forged = dataclasses.replace(proof, items=[dataclasses.replace(proof.items[0], witness=accumulator.to_bytes(f1)),
                                               dataclasses.replace(proof.items[1], witness=accumulator.to_bytes(f2))])
    with pytest.raises(ProofError) as err:
        verify_batch_proof(forged, _acc(c, at))
    assert err.value.reason == "not_member"


def test_prover_errors_are_typed(chain):
    c, ids = chain
    with pytest.raises(ProofError) as err:
        c.batch_proof([b"\x11" * 32])
    assert err.value.reason == "not_found"
    with pytest.raises(ProofError) as err:
        c.batch_proof([ids[-1]], at=1)
    assert err.value.reason == "not_anchored"
    with pytest.raises(ProofError, match="a batch holds"):
        c.batch_proof([])
    with pytest.raises(ProofError, match="a batch holds"):
        c.batch_proof(ids[:1] * (MAX_BATCH + 1))
