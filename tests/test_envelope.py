"""Signed envelopes: every tampering, wrong key, unknown sender, replay and stale timestamp is rejected and counted."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl import codec
from edgefl.crypto.envelope import (
    IdentityRejected,
    Rejected,
    ReplayWindow,
    SequenceCounter,
    Signer,
    StaticKeyRegistry,
    Verifier,
    envelope_digest,
)
from edgefl.crypto.keys import KeyFileError, SigningKey, load_public, save_public
from edgefl.runtime.metrics import Metrics
from edgefl.transport.messages import Ping

ALICE, BOB = SigningKey(), SigningKey()


def setup(now=None, **kw):
    metrics = Metrics()
    reg = StaticKeyRegistry({"alice": ALICE.public_key, "bob": BOB.public_key})
    v = Verifier(reg, metrics=metrics, clock=(lambda: now) if now is not None else time.time, **kw)
    return Signer("alice", ALICE), v, metrics


def rejected(v, wire, reason, **kw):
    with pytest.raises(Rejected) as exc:
        v.open(wire, **kw)
    assert exc.value.reason == reason, exc.value
    return exc.value


def test_seal_and_open():
    s, v, m = setup()
    env = v.open(s.seal(Ping(nonce=b"n", payload=b"p" * 100), to="bob", corr=b"c"))
    assert (env.sender, env.type, env.to, env.corr) == ("alice", "ping", "bob", b"c")
    assert env.message == Ping(nonce=b"n", payload=b"p" * 100)
    assert m.get("envelope_accepted") == 1
    assert ALICE.public_key.verify(env.signature, envelope_digest(env.signed))


def test_flipping_any_byte_is_rejected_and_counted():
    s, v, m = setup()
    wire = s.seal(Ping(nonce=b"nonce", payload=b"x" * 16), to="bob")
    for i in range(len(wire)):
        for bit in (0x01, 0x80):
            bad = bytearray(wire)
            bad[i] ^= bit
            with pytest.raises(Rejected):
                v.open(bytes(bad))
    assert m.total("envelope_rejected") == 2 * len(wire)
    assert m.get("envelope_rejected", reason="bad_signature") > len(wire)  # most flips hit signed bytes
    assert m.get("envelope_accepted") == 0
    v.open(wire)  # the original still opens: no flipped copy consumed its sequence number


def test_truncation_and_garbage():
    s, v, m = setup()
    wire = s.seal(Ping(nonce=b"n"))
    for cut in (0, 1, 5, len(wire) // 2, len(wire) - 1):
        with pytest.raises(Rejected):
            v.open(wire[:cut])
    rejected(v, wire + b"\x00", "bad_signature")  # extra byte changes the signed part
    rejected(v, b"\x83\x02\x65alice\x40", "unsupported_version")
    assert m.total("envelope_rejected") >= 7


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_escape_as_other_exceptions(data):
    _, v, _ = setup()
    with pytest.raises(Rejected):
        v.open(data)


def test_wrong_key_unknown_sender_and_sender_mismatch():
    s, v, m = setup()
    mallory = Signer("alice", SigningKey())  # claims to be alice
    rejected(v, mallory.seal(Ping(nonce=b"n")), "bad_signature")
    rejected(v, Signer("carol", SigningKey()).seal(Ping(nonce=b"n")), "unknown_sender")
    # bob signs a message whose head says alice: the head's sender picks the key, the check fails
    bob_as_alice = Signer("bob", BOB).seal(Ping(nonce=b"n"))
    forged = bob_as_alice.replace(b"\x63bob", b"\x65alice", 1)
    rejected(v, forged, "bad_signature")
    assert m.get("envelope_rejected", reason="unknown_sender") == 1


def test_signed_sender_must_match_head():
    """A valid signature by bob over a map claiming 'from: alice' is caught after verification."""
    s, v, m = setup()
    bob = Signer("bob", BOB)
    wire = bob.seal(Ping(nonce=b"n"))
    head, start = codec.decode_first(wire)
    body = codec.decode(wire[start:])
    body["from"] = "alice"
    signed = codec.encode(body)
    forged = codec.encode([1, "bob", BOB.sign(envelope_digest(signed))]) + signed
    rejected(v, forged, "sender_mismatch")


def test_a_message_breaking_its_own_invariants_is_rejected_not_raised():
    """Signed, well-formed CBOR whose message fails its type's __post_init__ (3 labels for 2 rows)."""
    import numpy as np

    from edgefl.ml.device import FeatureBatch

    s, v, m = setup()
    batch = FeatureBatch(task="t", round=0, model=b"m" * 32, ids=np.arange(2), labels=np.zeros(2, np.uint8),
                         features=np.zeros((2, 4), np.float32), grid=0.0, epsilon=1.0, unit="feature")
    body = codec.decode(s.seal(batch)[codec.decode_first(s.seal(batch))[1]:])
    body["msg"]["labels"] = np.zeros(3, np.uint8)
    signed = codec.encode(body)
    forged = codec.encode([1, "alice", ALICE.sign(envelope_digest(signed))]) + signed
    err = rejected(v, forged, "schema")
    assert "2 ids, 3 labels" in str(err) and m.get("envelope_rejected", reason="schema") == 1


def test_replay_and_window():
    s, v, m = setup(window=64)
    first = s.seal(Ping(nonce=b"1"), seq=50)
    v.open(first)
    rejected(v, first, "replay")
    seqs = [s.seal(Ping(nonce=b"x"), seq=100 + i) for i in range(70)]
    for w in reversed(seqs[6:]):  # out of order inside the window (top - 63 .. top) is fine
        v.open(w)
    e = rejected(v, seqs[0], "replay")  # 69 behind the newest, window is 64
    assert "too old" in str(e)
    assert m.get("envelope_rejected", reason="replay") == 2


def test_stale_and_future_timestamps():
    now = 1_700_000_000.0
    s, v, m = setup(now=now, max_skew_s=60)
    rejected(v, s.seal(Ping(nonce=b"n"), ts_ms=int((now - 61) * 1000)), "stale")
    rejected(v, s.seal(Ping(nonce=b"n"), ts_ms=int((now + 61) * 1000)), "future")
    v.open(s.seal(Ping(nonce=b"n"), ts_ms=int((now - 59) * 1000)))
    # a pre-signed last will is checked for authenticity but not freshness
    v.open(s.seal(Ping(nonce=b"w"), ts_ms=int((now - 3600) * 1000)), check_fresh=False)
    assert m.get("envelope_rejected", reason="stale") == 1 and m.get("envelope_rejected", reason="future") == 1


def test_topic_binding():
    s, v, _ = setup()
    rejected(v, s.seal(Ping(nonce=b"n")), "topic_mismatch", expect_sender="bob")
    rejected(v, s.seal(Ping(nonce=b"n"), to="carol"), "topic_mismatch", expect_to="bob")
    v.open(s.seal(Ping(nonce=b"n"), to="bob"), expect_sender="alice", expect_to="bob")


def test_registry_rejections_carry_their_reason():
    class Revoking(StaticKeyRegistry):
        def key_for(self, sender, at, role=None):
            raise IdentityRejected("revoked", f"{sender} revoked", sender)

    m = Metrics()
    v = Verifier(Revoking(), metrics=m)
    rejected(v, Signer("alice", ALICE).seal(Ping(nonce=b"n")), "revoked")
    assert m.get("envelope_rejected", reason="revoked") == 1


def test_oversize_rejected_before_work():
    s, v, m = setup(limits=codec.Limits(max_size=1000))
    rejected(v, s.seal(Ping(nonce=b"n", payload=b"x" * 2000)), "too_large")


class ModelWindow:
    """Reference: the set of accepted sequence numbers."""

    def __init__(self, size):
        self.size, self.seen = size, set()

    def offer(self, seq):
        top = max(self.seen, default=0)
        if seq in self.seen or (seq <= top and top - seq >= self.size):
            return False
        self.seen.add(seq)
        return True


@given(st.lists(st.integers(1, 400), max_size=300), st.sampled_from([8, 64, 100]))
@settings(max_examples=200, deadline=None)
def test_replay_window_matches_reference_model(seqs, size):
    w, ref = ReplayWindow(size), ModelWindow(size)
    for seq in seqs:
        ok = w.check(seq) is None
        if ok:
            w.commit(seq)
        assert ok == ref.offer(seq)


def test_sequence_counter_survives_restart_and_crash(tmp_path):
    path = tmp_path / "seq"
    c = SequenceCounter(path)
    first = [c.next() for _ in range(25)]
    assert first == sorted(set(first))
    # restart (or crash: the lane is claimed before its first number is used) never reuses a number
    c2 = SequenceCounter(path)
    assert c2.next() > first[-1] and c2.lane == c.lane + 1
    path.write_text("garbage")
    with pytest.raises(ValueError, match="corrupt"):
        SequenceCounter(path)
    assert SequenceCounter().next() > 1 << 62  # no file: a random lane of its own


def test_two_processes_signing_as_one_node_are_both_accepted(tmp_path):
    """A command run under a running node's name (`ledger verify-tx` on a fog's host) took the next block
    of numbers from the node's counter file; every peer's window then jumped past the node's own numbers
    and refused all its messages as replays (found by the chaos hosts scenario).  Each counter now has a
    lane, and receivers a window per lane."""
    node = Signer("alice", ALICE, SequenceCounter(tmp_path / "seq"))
    command = Signer("alice", ALICE, SequenceCounter(tmp_path / "seq"))
    s, v, m = setup()
    early = [node.seal(Ping(nonce=bytes([i]))) for i in range(3)]
    for wire in [*early[:2], command.seal(Ping(nonce=b"c")), command.seal(Ping(nonce=b"d")), early[2],
                 node.seal(Ping(nonce=b"n"))]:
        v.open(wire)
    rejected(v, early[0], "replay")  # a replay in either lane is still one
    assert m.get("envelope_rejected", reason="replay") == 1


def test_lanes_are_bounded_retired_and_forgotten():
    """A crash-looping node claims a lane per start: past MAX_LANES the least recently used is retired, its
    messages refused until they are all stale, then forgotten; a lane quiet that long is forgotten too."""
    from edgefl.crypto.envelope import LANE_BITS, MAX_LANES

    now = [1_700_000_000.0]
    s, v, m = setup(now=now[0], max_skew_s=60)
    v.clock = lambda: now[0]

    def seal(lane, n=1):
        return s.seal(Ping(nonce=b"n"), seq=lane << LANE_BITS | n, ts_ms=int(now[0] * 1000))

    first = seal(1)
    v.open(first)
    for lane in range(2, MAX_LANES + 3):  # two more lanes than are followed: lanes 1 and 2 are retired
        now[0] += 1
        v.open(seal(lane))
    assert "retired" in str(rejected(v, first, "replay"))
    assert "retired" in str(rejected(v, seal(2, 5), "replay"))  # even news from a retired lane, until stale
    v.open(seal(MAX_LANES + 2, 2))  # the followed ones go on
    now[0] += 121  # everything quiet for twice the skew: all of it stale, all of it forgotten
    v.open(seal(1, 7))
    lanes = v._windows["alice"]
    assert list(lanes.windows) == [1] and not lanes.retired


def test_key_files(tmp_path):
    k = SigningKey()
    path = k.save(tmp_path / "keys" / "a.key")
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(path).public_key == k.public_key
    save_public(k.public_key, tmp_path / "a.pub")
    assert load_public(tmp_path / "a.pub") == k.public_key
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        SigningKey.load(path)
    path.chmod(0o600)
    path.write_text("zz")
    with pytest.raises(KeyFileError, match="not a secp256k1 secret"):
        SigningKey.load(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        SigningKey.load(tmp_path / "missing.key")
    with pytest.raises(ValueError):
        k.sign(b"short")
    assert not k.public_key.verify(b"\x00" * 64, b"\x00" * 32)
    assert not k.public_key.verify(b"short", b"\x00" * 32)


def test_a_re_encoded_head_is_rejected():
    """The head was decoded without the canonical check: a re-encoded copy verified and slipped past the
    session's duplicate filter (keyed by the head's bytes) on retained kinds."""
    s, v, _ = setup()
    wire = s.seal(Ping(nonce=b"n"))
    assert wire[:2] == bytes([0x83, 0x01])
    longer = bytes([0x83, 0x18, 0x01]) + wire[2:]  # the version 1 in two bytes: the same value
    rejected(v, longer, "not_canonical", check_fresh=False)
    v.open(wire, check_fresh=False)
