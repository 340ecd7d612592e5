"""The session's inbound path as pure code: every outcome without a broker."""

from edgefl.crypto.envelope import Signer, StaticKeyRegistry, Verifier
from edgefl.crypto.keys import SigningKey
from edgefl.runtime.metrics import Metrics
from edgefl.transport import chunking, topics
from edgefl.transport.inbound import Inbound
from edgefl.transport.messages import Ping, Status

KEY = SigningKey()


def pipeline(registry=None):
    m = Metrics()
    v = Verifier(registry or StaticKeyRegistry({"dev-a": KEY.public_key}), metrics=m)
    return Inbound(v, chunking.Reassembler(metrics=m), metrics=m, name="fog-1"), m, Signer("dev-a", KEY)


def t(kind, target=None):
    return topics.topic("s", "device", "dev-a", kind, target)


def test_a_delivery_and_its_duplicate():
    inbound, m, s = pipeline()
    wire = s.seal(Ping(nonce=b"n"), to="fog-1")
    rx = inbound.receive(t("req", "fog-1"), wire)
    assert rx.envelope.sender == "dev-a" and rx.topic.target == "fog-1" and rx.message.nonce == b"n"
    assert inbound.receive(t("req", "fog-1"), wire) is None
    assert m.get("duplicate_delivery") == 1 and m.total("inbound_rejected") == 0


def test_every_rejection_is_counted_with_its_reason():
    inbound, m, s = pipeline()
    cases = [
        ("not/an/edgefl/topic", s.seal(Ping(nonce=b"1")), "topic"),
        (t("msg", "fog-1"), b"\x00garbage", "malformed"),
        (topics.topic("s", "device", "dev-b", "msg"), s.seal(Ping(nonce=b"2")), "topic_mismatch"),
        (t("status"), s.seal(Ping(nonce=b"3")), "wrong_type"),
        (t("status"), s.seal(Status(state="dancing", session=b"x")), "bad_status"),
        (t("msg"), chunking.split(b"x" * 10_000, 4096)[0][:-3], "chunk_malformed"),
    ]
    for topic, wire, reason in cases:
        assert inbound.receive(topic, wire) is None
        assert m.get("inbound_rejected", reason=reason) == 1, reason
    assert m.total("inbound_rejected") == len(cases)


def test_expected_types_per_kind():
    inbound, m, s = pipeline()
    inbound.expect("model", Status)
    assert inbound.receive(t("model"), s.seal(Ping(nonce=b"p"))) is None
    assert inbound.receive(t("model"), s.seal(Status(state="online", session=b"s"))) is not None
    assert m.get("inbound_rejected", reason="wrong_type") == 1


def test_retained_kinds_move_forward_and_a_stale_will_is_ignored():
    inbound, m, s = pipeline()
    older, newer = s.seal(Ping(nonce=b"old")), s.seal(Ping(nonce=b"new"))
    assert inbound.receive(t("task"), newer) is not None
    assert inbound.receive(t("task"), older) is None
    assert m.get("inbound_rejected", reason="stale_retained") == 1
    will = s.seal(Status(state="offline", session=b"first"))
    assert inbound.receive(t("status"), s.seal(Status(state="online", session=b"second"))) is not None
    assert inbound.receive(t("status"), will) is None  # signed before, and of an older session
    assert inbound.peers["dev-a"] == ("online", b"second")
    assert m.get("inbound_rejected", reason="stale_status") == 1


def test_a_bug_below_is_a_counted_rejection_not_an_exception():
    class Broken:
        def key_for(self, sender, at, role=None):
            raise TypeError("a bug")

    inbound, m, s = pipeline(Broken())
    assert inbound.receive(t("msg"), s.seal(Ping(nonce=b"n"))) is None
    assert m.get("inbound_rejected", reason="internal") == 1


def test_chunks_are_reassembled_before_verification():
    inbound, m, s = pipeline()
    wire = s.seal(Ping(nonce=b"big", payload=b"p" * 20_000), to="fog-1")
    frames = chunking.split(wire, 4096)
    out = [inbound.receive(t("msg", "fog-1"), f) for f in frames]
    assert out[:-1] == [None] * (len(frames) - 1) and out[-1].message.payload == b"p" * 20_000


def test_a_message_of_the_wrong_type_is_refused_before_its_body_is_decoded(monkeypatch):
    """A 459 KB CRL envelope cost 36 ms to open (70x a ping of its size), wherever it was sent."""
    from edgefl.crypto.pki import Crl, Revocation, sign_crl

    inbound, m, s = pipeline()
    crl = sign_crl(KEY, "dev-a", 1, [Revocation(serial=i + 1, at=1) for i in range(2000)], this_update=1,
                   next_update=2)
    wire = s.seal(crl)
    decoded = []
    monkeypatch.setattr(Crl, "from_wire", classmethod(lambda cls, *a: decoded.append(1)))
    assert inbound.receive(t("status"), wire) is None
    assert m.get("inbound_rejected", reason="wrong_type") == 1 and not decoded


def test_a_flooding_sender_is_cut_to_its_rate_before_any_signature_check():
    from edgefl.transport.inbound import RateLimit

    now = [0.0]
    m = Metrics()
    v = Verifier(StaticKeyRegistry({"dev-a": KEY.public_key, "dev-b": KEY.public_key}), metrics=m)
    inbound = Inbound(v, chunking.Reassembler(metrics=m), metrics=m, rate=RateLimit(10, 5, clock=lambda: now[0]))
    s = Signer("dev-a", KEY)
    flood = [inbound.receive(t("msg"), s.seal(Ping(nonce=b"%d" % i))) for i in range(20)]
    assert sum(rx is not None for rx in flood) == 5  # the burst
    assert m.get("inbound_rejected", reason="rate_limited") == 15 and m.get("envelope_accepted") == 5
    other = Signer("dev-b", KEY).seal(Ping(nonce=b"b"))
    assert inbound.receive(topics.topic("s", "device", "dev-b", "msg"), other) is not None  # its own bucket
    now[0] = 0.5  # five tokens back
    assert sum(inbound.receive(t("msg"), s.seal(Ping(nonce=b"x%d" % i))) is not None for i in range(10)) == 5
