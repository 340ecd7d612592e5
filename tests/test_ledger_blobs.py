"""Content-addressed blob store: atomic writes, digest checks, limits, garbage collection, fetch over MQTT."""

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefl.ledger import blobs as blobstore
from edgefl.ledger.blobs import BlobData, BlobGet, BlobStore, cid_of, parse_cid
from edgefl.ledger.errors import BlobCorrupt, BlobError, BlobNotFound, BlobTooLarge
from edgefl.transport.session import RemoteError
from tests.conftest import Nodes, connected


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=5000))
def test_put_get_roundtrip_is_content_addressed(tmp_path_factory, data):
    store = BlobStore(tmp_path_factory.mktemp("b"))
    cid = store.put(data)
    assert cid == cid_of(data) and store.get(cid) == data and store.has(cid)
    assert store.put(data) == cid  # idempotent
    assert list(store) == [cid]
    assert parse_cid(cid.hex()) == cid


def test_corruption_limits_and_missing(tmp_path):
    store = BlobStore(tmp_path, max_blob=1000)
    cid = store.put(b"x" * 1000)
    with pytest.raises(BlobTooLarge):
        store.put(b"x" * 1001)
    path = store.path(cid)
    path.write_bytes(b"y" + path.read_bytes()[1:])  # bit rot on disk
    with pytest.raises(BlobCorrupt):
        store.get(cid)
    with pytest.raises(BlobNotFound):
        store.get(cid_of(b"never stored"))
    with pytest.raises(BlobError):
        parse_cid("abc")


def test_stale_temporary_files_are_swept(tmp_path):
    BlobStore(tmp_path)
    (tmp_path / "tmp" / "deadbeef.123.456").write_bytes(b"half a blob")
    store = BlobStore(tmp_path)
    assert not any(store.tmp.iterdir()) and list(store) == []


def test_gc_keeps_referenced_and_recent_blobs(tmp_path):
    store = BlobStore(tmp_path)
    keep, old, young = (store.put(b"keep"), store.put(b"old"), store.put(b"young"))
    past = time.time() - 7200
    for cid in (keep, old):
        os.utime(store.path(cid), (past, past))
    removed = store.gc({keep}, grace_s=3600)
    assert removed == [old]
    assert set(store) == {keep, young}


async def test_fetch_over_mqtt_checks_the_digest(broker, tmp_path):
    nodes = Nodes(broker.port, "fog-a", "fog-b", "liar")
    holder, fetcher, liar = (nodes.session(n, role="fog") for n in ("fog-a", "fog-b", "liar"))
    served = BlobStore(tmp_path / "a")
    local = BlobStore(tmp_path / "b")
    payload = os.urandom(3 << 20)  # larger than one MQTT packet: travels in chunks
    cid = served.put(payload)
    blobstore.serve(holder, served)

    async def lie(env):
        return BlobData(env.message.cid, b"not what you asked for")

    liar.serve(BlobGet, lie)
    async with holder, fetcher, liar:
        await connected(holder, fetcher, liar)
        assert await blobstore.fetch(fetcher, "fog-a", cid, local) == payload
        assert local.get(cid) == payload  # kept, digest-checked
        with pytest.raises(RemoteError) as err:
            await blobstore.fetch(fetcher, "fog-a", cid_of(b"absent"), local)
        assert err.value.reason == "not_found"
        with pytest.raises(BlobCorrupt):
            await blobstore.fetch(fetcher, "liar", cid_of(b"anything"), local)
        assert not local.has(cid_of(b"anything"))


def test_opening_a_store_keeps_the_temporary_files_of_live_writers(tmp_path):
    """Opening a store sweeps what crashed writers left in tmp/; it also deleted the file a running node
    was writing when a command opened the node's store beside it (`ledger audit`, `ledger gc`), and the
    node's rename then failed."""
    import subprocess

    BlobStore(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    live, dead = (tmp_path / "tmp" / f".{'ab' * 32}.{pid}.1.tmp" for pid in (os.getppid(), gone.pid))
    live.write_bytes(b"half")
    dead.write_bytes(b"half")
    BlobStore(tmp_path)
    assert live.exists() and not dead.exists()
