"""Behaviour evidence: signed statements, equivocation proofs and their checks, as Type-I records."""

from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefl.codec import MaxLen, Range, message
from edgefl.consensus.evidence import (
    Behaviour,
    InvalidEvidence,
    Statement,
    check_behaviour,
    decode_statement,
    encode_statement,
    equivocation,
)
from edgefl.ledger.tx import decode_tx, record_tx
from tests.ledger_helpers import KEYS, committee

C = committee("fog-a", "dev-1", "dev-2", "peer-1")


@message("test.vote")
class Vote(Statement):
    signer: Annotated[str, MaxLen(128)]
    view: Annotated[int, Range(0)]
    height: Annotated[int, Range(0)]
    digest_: Annotated[bytes, MaxLen(32)]
    sig: Annotated[bytes, MaxLen(64)] = b""

    def slot(self):
        return (self.view, self.height)


def vote(signer="dev-1", view=0, height=1, d=b"a" * 32, key=None):
    return Vote(signer, view, height, d).signed(key or KEYS[signer])


def test_an_equivocation_is_proved_by_two_signed_conflicting_votes():
    a, b = vote(d=b"a" * 32), vote(d=b"b" * 32)
    rec = equivocation(a, b, chain="fog-a", view=0, height=1)
    assert rec == equivocation(b, a, chain="fog-a", view=0, height=1)  # one canonical record per pair
    sts = check_behaviour(rec, C)
    assert {s.digest_ for s in sts} == {b"a" * 32, b"b" * 32}
    # it travels as a Type-I record and comes back intact
    raw = record_tx(rec, "fog-a", KEYS["fog-a"])
    info = decode_tx(raw)
    assert info.body.unwrap() == rec


@pytest.mark.parametrize("second, reason", [
    (lambda: vote(d=b"a" * 32), "no_conflict"),  # the same vote twice
    (lambda: vote(height=2, d=b"b" * 32), "no_conflict"),  # another slot: no conflict
    (lambda: vote(signer="dev-2", d=b"b" * 32), "wrong_signer"),  # someone else's vote
    (lambda: Vote("dev-1", 0, 1, b"b" * 32).signed(KEYS["dev-2"]), "bad_signature"),  # forged
])
def test_what_is_no_proof_of_equivocation_is_refused(second, reason):
    first = encode_statement(vote(d=b"a" * 32))
    rec = Behaviour("fog-a", "dev-1", "equivocated", 0, 1, 0, sorted([first, encode_statement(second())]))
    with pytest.raises(InvalidEvidence) as err:
        check_behaviour(rec, C)
    assert err.value.reason == reason and err.value.field.startswith("behaviour.proof")


def test_other_kinds_and_outsiders():
    check_behaviour(Behaviour("fog-a", "dev-1", "voted", 0, 1, 0, [encode_statement(vote())]), C)
    check_behaviour(Behaviour("fog-a", "dev-2", "silent", 3, 9, 0, []), C)
    with pytest.raises(InvalidEvidence) as err:
        check_behaviour(Behaviour("fog-a", "dev-2", "voted", 0, 1, 0, []), C)
    assert err.value.field == "behaviour.proof"
    with pytest.raises(InvalidEvidence) as err:
        check_behaviour(Behaviour("fog-a", "cloud-1", "silent", 0, 1, 0, []), C)
    assert err.value.reason == "not_member"
    outsider = vote(signer="fog-b")
    with pytest.raises(InvalidEvidence) as err:
        check_behaviour(Behaviour("fog-a", "fog-b", "voted", 0, 1, 0, [encode_statement(outsider)]), C)
    assert err.value.reason == "not_member"
    with pytest.raises(ValueError):
        Behaviour("fog-a", "dev-1", "lied", 0, 1, 0, [])


@given(st.binary(max_size=200))
def test_statement_decoding_never_raises_anything_but_typed_errors(data):
    try:
        decode_statement(data)
    except InvalidEvidence as exc:
        assert exc.field


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40), st.binary(min_size=32, max_size=32))
def test_statements_round_trip_and_any_change_breaks_the_signature(view, height, d):
    v = vote(view=view, height=height, d=d)
    back = decode_statement(encode_statement(v))
    assert back == v
    back.verify(C)
    with pytest.raises(InvalidEvidence):
        Vote("dev-1", view + 1, height, d, v.sig).verify(C)
