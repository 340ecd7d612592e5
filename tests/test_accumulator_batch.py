"""Batch verification three ways (and the baseline), aggregated proofs, the unweighted forgery."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.crypto import accumulator as acc
from edgefl.crypto.accumulator import batch

N = acc.RSA2048_N
G = acc.RSA2048
SOUND = [name for name, v in batch.VERIFIERS.items() if v.sound]


@pytest.fixture(scope="module")
def chain():
    a = acc.Accumulator()
    for i in range(12):
        a.add(f"block {i}".encode())
    return a, a.witnesses()


def _claims(a, ws, idx):
    return [ws[i] for i in idx], [(a.elements[i], a.value) for i in idx]


@given(st.lists(st.integers(0, 11), min_size=1, max_size=8, unique=True), st.sampled_from(sorted(batch.VERIFIERS)),
       st.data())
@settings(max_examples=40, deadline=None)
def test_valid_batches_pass_and_broken_ones_fail(chain, idx, method, data):
    a, ws = chain
    verifier = batch.VERIFIERS[method]
    witnesses, statements = _claims(a, ws, idx)
    proof = verifier.prove(witnesses, statements)
    assert verifier.verify(statements, proof)
    assert batch.batch_verify(statements, proof, method=method)
    j = data.draw(st.integers(0, len(idx) - 1))
    outsider = acc.representative(b"not in the chain", idx[j])
    bad = list(statements)
    bad[j] = (outsider, a.value)  # a non-member
    assert not verifier.verify(bad, proof)
    older = list(statements)
    older[j] = (statements[j][0], a.values[5])  # another accumulator
    assert not verifier.verify(older, proof)
    if method != "aggregated":
        flipped = list(witnesses)
        flipped[j] = N - flipped[j]  # -w is not a canonical element
        assert not verifier.verify(statements, tuple(flipped))
        wrong = list(witnesses)
        wrong[j] = acc.GENERATOR if wrong[j] != acc.GENERATOR else ws[(idx[j] + 1) % 12]
        assert not verifier.verify(statements, tuple(wrong))


def test_claims_on_different_accumulators(chain):
    a, ws = chain
    # block i is proved against v_{i+1} (witness v_i) and against v_n (its full witness)
    statements = [(a.elements[i], a.values[i + 1]) for i in (0, 3, 7)] + [(a.elements[i], a.value) for i in (1, 4)]
    witnesses = [a.values[i] for i in (0, 3, 7)] + [ws[1], ws[4]]
    for name, verifier in batch.VERIFIERS.items():
        assert verifier.verify(statements, verifier.prove(witnesses, statements)), name
    proof = batch.Aggregated().prove(witnesses, statements)
    assert len(proof) == 4  # one aggregate per distinct accumulator
    assert not batch.Aggregated().verify(statements, proof[:3])
    assert not batch.Aggregated().verify(statements, proof[::-1])


def _forge(a, ws, z):
    """Two valid claims turned into two invalid ones whose product still checks out."""
    (x1, x2), (w1, w2) = a.elements[:2], ws[:2]
    w1f = G.canonical(w1 * pow(z, x2, N))
    w2f = G.canonical(w2 * pow(z, -x1, N))
    return [w1f, w2f], [(x1, a.value), (x2, a.value)]


@pytest.mark.parametrize("z", [2, 3, 12345, random.Random(7).randrange(2, N)])
def test_unweighted_batch_accepts_a_forgery_the_others_reject(chain, z):
    a, ws = chain
    forged, statements = _forge(a, ws, z)
    assert forged != ws[:2]
    for w, (x, v) in zip(forged, statements):
        assert not acc.verify_membership(w, x, v)  # each forged claim fails alone
    assert batch.Unweighted().verify(statements, tuple(forged))  # ...but Protocol 3 accepts both
    assert not batch.VERIFIERS["unweighted"].sound
    assert not batch.SmallExponent().verify(statements, tuple(forged))
    assert not batch.Independent().verify(statements, tuple(forged))
    aggregated = batch.Aggregated()
    assert not aggregated.verify(statements, aggregated.prove(forged, statements))
    # padded with honest claims, still rejected by the sound ones
    w_all = forged + ws[2:6]
    s_all = statements + [(x, a.value) for x in a.elements[2:6]]
    assert batch.Unweighted().verify(s_all, tuple(w_all))
    for name in SOUND:
        v = batch.VERIFIERS[name]
        assert not v.verify(s_all, v.prove(w_all, s_all)), name


def test_weights_are_fiat_shamir_128_bit_odd(chain):
    a, ws = chain
    witnesses, statements = _claims(a, ws, range(6))
    rs = batch.weights(statements, witnesses, G)
    assert rs == batch.weights(statements, witnesses, G)
    assert all(r % 2 == 1 and r.bit_length() <= 128 for r in rs) and len(set(rs)) == 6
    assert max(r.bit_length() for r in rs) > 120
    other = batch.weights(statements[:5] + [(statements[5][0], a.values[3])], witnesses, G)
    assert not set(rs) & set(other)  # any input change re-derives every weight


def test_aggregate_from_witnesses_equals_aggregate_from_the_set(chain):
    a, ws = chain
    idx = [1, 4, 5, 9]
    proof = batch.prove_aggregate([ws[i] for i in idx], [a.elements[i] for i in idx], a.value)
    assert proof == batch.prove_aggregate_from_set(a.elements, idx)
    xs = [a.elements[i] for i in idx]
    assert batch.verify_aggregate(proof, xs, a.value)
    assert batch.verify_aggregate(proof, xs[::-1], a.value)  # order does not matter
    assert not batch.verify_aggregate(proof, xs[:3], a.value)
    assert not batch.verify_aggregate(proof, xs + [a.elements[0]], a.value)
    assert not batch.verify_aggregate(proof, xs + [xs[0]], a.value)  # duplicates
    assert not batch.verify_aggregate(proof, [], a.value)
    assert not batch.verify_aggregate(batch.AggregateProof(proof.witness, G.canonical(proof.quotient * 2)),
                                      xs, a.value)
    assert not batch.verify_aggregate(batch.AggregateProof(N - proof.witness, proof.quotient), xs, a.value)
    assert not batch.verify_aggregate(batch.AggregateProof(proof.witness, proof.witness), xs, a.value)
    assert not batch.verify_aggregate(None, xs, a.value)
    # the aggregated witness is a witness for the product of the elements
    assert acc.update(proof.witness, int(batch.product(xs))) == a.value
    everything = batch.prove_aggregate_from_set(a.elements, range(12))
    assert everything.witness == acc.GENERATOR and batch.verify_aggregate(everything, a.elements, a.value)


def test_proof_of_exponentiation():
    u, x = acc.GENERATOR, (1 << 4000) + 12345
    w = G.pow(u, x)
    q = batch.poe_prove(u, x, w)
    assert batch.poe_verify(u, x, w, q)
    assert not batch.poe_verify(u, x + 2, w, q)
    assert not batch.poe_verify(u, x, G.pow(u, x + 1), q)
    ell = batch.poe_challenge(u, x, w, G)
    assert ell.bit_length() == batch.CHALLENGE_BITS and ell % 2


def test_shamir_combine_needs_coprime_elements(chain):
    a, ws = chain
    with pytest.raises(acc.InvalidExponent, match="share a factor"):
        batch.shamir_combine(ws[0], a.elements[0], ws[0], a.elements[0])
    w01 = batch.shamir_combine(ws[0], a.elements[0], ws[1], a.elements[1])
    assert acc.update(w01, a.elements[0] * a.elements[1]) == a.value
    with pytest.raises(acc.InvalidInput):
        batch.aggregate_witnesses([], [])


@pytest.mark.parametrize("name", sorted(batch.VERIFIERS))
def test_malformed_input_returns_false_never_raises(chain, name):
    a, ws = chain
    v = batch.VERIFIERS[name]
    witnesses, statements = _claims(a, ws, [0, 1])
    proof = v.prove(witnesses, statements)
    bad_statements = [
        None, "ab", [(1, a.value)], [(0, a.value), statements[1]], [(a.elements[0], 0), statements[1]],
        [(a.elements[0], N), statements[1]], [(-a.elements[0], a.value), statements[1]],
        [(a.elements[0] << 300, a.value), statements[1]], [(a.elements[0],), statements[1]], [1, 2],
    ]
    for s in bad_statements:
        assert v.verify(s, proof) is False, s
    for p in (None, 5, b"xx", (), (1, 2), (0, ws[1]), (ws[0],), [ws[0], ws[1], ws[2]]):
        assert v.verify(statements, p) is False, p
    assert v.verify([], ()) is True
    with pytest.raises(acc.InvalidElement):
        v.prove([0, ws[1]], statements)
    with pytest.raises(acc.InvalidInput):
        v.prove(witnesses[:1], statements)


def test_unknown_method():
    with pytest.raises(acc.InvalidInput, match="method"):
        batch.batch_verify([], (), method="fast")
