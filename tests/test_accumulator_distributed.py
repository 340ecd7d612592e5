"""Distributed modulus generation (Boneh–Franklin, honest-but-curious).

The unit tests use small moduli (192–256 bits) so each run takes well under a
second; the 2048-bit run is what ``edgefl accumulator setup --distributed``
and ``edgefl bench accumulator --setup-bits 2048`` do (timed in docs/accumulator.md).
"""

import asyncio

import gmpy2
import pytest

from edgefl.crypto import accumulator as acc
from edgefl.crypto.accumulator import distributed as dist
from edgefl.runtime.metrics import Metrics
from tests.conftest import Nodes


def _factors(result):
    p = sum(peer.shares[0] for peer in result.peer_objects)
    q = sum(peer.shares[1] for peer in result.peer_objects)
    return p, q


@pytest.mark.parametrize("k,bits", [(3, 256), (4, 192), (5, 192)])
def test_peers_agree_on_a_biprime_modulus(k, bits):
    result = asyncio.run(dist.generate_local(k, bits, keep_shares=True, record=True))
    n = result.modulus
    assert n.bit_length() == bits
    p, q = _factors(result)
    assert p * q == n and p != q
    assert gmpy2.is_prime(p, 50) and gmpy2.is_prime(q, 50)
    assert p % 4 == 3 and q % 4 == 3
    assert result.stats.candidates >= result.stats.sieved >= result.stats.screened >= 1
    # the modulus works as an accumulator group
    grp = result.group
    x = acc.representative(b"block", 0)
    assert acc.verify_membership(grp.generator, x, acc.update(grp.generator, x, group=grp), group=grp)


def test_no_single_peer_sees_p_or_q():
    result = asyncio.run(dist.generate_local(3, 256, keep_shares=True, record=True))
    p, q = _factors(result)
    width = (result.modulus.bit_length() + 7) // 8
    secrets = {p, q}
    for peer in result.peer_objects:
        values = [v for _, vs in peer.view for v in vs]
        assert values, "the view records what the peer saw"
        assert not secrets & set(values), peer.me
        assert not secrets & set(peer.shares), peer.me
        received = b"".join(result.network.wire[peer.me])
        for s in secrets:
            assert s.to_bytes(width // 2 + 1, "big")[1:] not in received  # p and q take 128 bits each here
        # private shares travel encrypted: the plaintext share vectors are not on the wire either
        out = [vs for what, vs in peer.view if what == "my shares out"][-1]
        elsewhere = b"".join(w for o in result.peer_objects if o is not peer for w in result.network.wire[o.me])
        assert all(v.to_bytes(40, "big")[-16:] not in elsewhere for v in out)


def test_parameter_errors():
    net = dist.LocalNetwork(["a", "b", "c"])
    with pytest.raises(dist.SetupError, match="3.."):
        dist.Peer(net.channel("a"), ["a", "b"])
    with pytest.raises(dist.SetupError, match="not one of"):
        dist.Peer(net.channel("a"), ["b", "c", "d"])
    with pytest.raises(dist.SetupError, match="bits"):
        dist.Peer(net.channel("a"), ["a", "b", "c"], bits=255)
    with pytest.raises(dist.SetupError, match="distinct"):
        dist.Peer(net.channel("a"), ["a", "a", "c"])


def test_a_missing_peer_is_named_after_the_timeout():
    async def main():
        net = dist.LocalNetwork(["a", "b", "c"])
        peers = [dist.Peer(net.channel(n), ["a", "b", "c"], bits=128, timeout_s=0.5) for n in ("a", "b")]
        return await asyncio.gather(*(p.run() for p in peers), return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, dist.SetupError) for e in errors)
    assert all("from c" in str(e) for e in errors)


def test_malformed_and_foreign_messages():
    with pytest.raises(dist.SetupError, match="peer-2 n shares: 5 bytes, expected 3 values of 4 bytes"):
        dist._unpack(b"12345", 4, 3, "peer-2 n shares")
    metrics = Metrics()
    box = dist.Inbox(["a", "b", "c"], "a", metrics)
    box.put("mallory", dist.ModulusValues(b"s", 1, "n", b""), b"s")
    box.put("b", dist.ModulusValues(b"other", 1, "n", b""), b"s")
    assert metrics.get("setup_rejected", reason="foreign") == 2
    box.put("b", dist.ModulusValues(b"s", 1, "n", b"x"), b"s")
    assert box.take(("setup.values", 1, "n"), ["b", "c"]) is None
    assert box.missing(("setup.values", 1, "n"), ["b", "c"]) == ["c"]


def test_a_peer_sending_garbage_stops_the_run_with_its_name():
    class Liar(dist.LocalChannel):
        async def broadcast(self, msg):
            if isinstance(msg, dist.ModulusValues):
                msg = dist.ModulusValues(msg.session, msg.round, msg.stage, msg.data[:-1])
            await super().broadcast(msg)

    async def main():
        names = ["a", "b", "c"]
        net = dist.LocalNetwork(names)
        chans = [net.channel("a"), net.channel("b"), Liar(net, "c")]
        peers = [dist.Peer(ch, names, bits=128, timeout_s=1) for ch in chans]
        return await asyncio.gather(*(p.run() for p in peers), return_exceptions=True)

    results = asyncio.run(main())
    assert any(isinstance(r, dist.SetupError) and "c n products" in str(r) for r in results)


@pytest.mark.asyncio
async def test_setup_over_mosquitto(broker):
    names = ["fog-a", "fog-b", "fog-c"]
    nodes = Nodes(broker.port, *names)
    sessions = [nodes.session(n, role="fog", max_message_size=16 << 20) for n in names]
    for s in sessions:
        await s.__aenter__()
    try:
        for s in sessions:
            await s.wait_connected(10)
        results = await asyncio.wait_for(
            asyncio.gather(*(dist.run_over_mqtt(s, names, bits=192) for s in sessions)), 120)
    finally:
        for s in sessions:
            await s.__aexit__(None, None, None)
    assert len({r.modulus for r in results}) == 1
    n = results[0].modulus
    assert n.bit_length() == 192 and not gmpy2.is_prime(n) and gmpy2.gcd(n, gmpy2.primorial(10000)) == 1
    assert all(nodes.metrics[name].get("envelope_accepted") > 0 for name in names)
