"""Shared pieces of the ledger tests: keys, specs, chains, signed records."""

from __future__ import annotations

import time

from edgefl.crypto.envelope import StaticKeyRegistry
from edgefl.crypto.keys import SigningKey
from edgefl.ledger.chain import Chain
from edgefl.ledger.committee import Committee
from edgefl.ledger.records import Note
from edgefl.ledger.sealer import SingleSealer
from edgefl.ledger.tx import ChainSpec, record_tx

KEYS = {name: SigningKey(bytes([i + 1]) * 32) for i, name in enumerate(
    ["cloud-1", "fog-a", "fog-b", "fog-c", "dev-1", "dev-2", "peer-1", "peer-2"])}
T0 = 1_700_000_000_000


def registry(*extra) -> StaticKeyRegistry:
    return StaticKeyRegistry({n: k.public_key for n, k in KEYS.items()})


def committee(*ids, threshold=None) -> Committee:
    return Committee.of([(i, KEYS[i].public_key) for i in ids], threshold)


def main_spec(subchains=("fog-a", "fog-b"), max_block=1 << 20, **kw) -> ChainSpec:
    return ChainSpec(chain="main", role="main", sealer="single", committee=committee("cloud-1"), max_block=max_block,
                     ts=T0, subchains={s: committee(s) for s in subchains}, **kw)


def sub_spec(chain="fog-a", max_block=1 << 20, sealer="single", members=None, threshold=None) -> ChainSpec:
    return ChainSpec(chain=chain, role="sub", sealer=sealer, committee=committee(*(members or [chain]),
                                                                                   threshold=threshold),
                     max_block=max_block, ts=T0, parent="main", parent_committee=committee("cloud-1"))


def sealer_for(chain: str) -> SingleSealer:
    node = "cloud-1" if chain == "main" else chain
    return SingleSealer(node, KEYS[node])


def new_chain(tmp_path, spec: ChainSpec, **kw) -> Chain:
    return Chain.create(tmp_path / f"{spec.chain}.db", spec, sealer_for(spec.chain), registry=registry(), **kw)


def note(i: int, size: int = 32, signer: str = "dev-1", device: str | None = "dev-1") -> bytes:
    data = i.to_bytes(8, "big") + bytes(max(0, size - 8))
    return record_tx(Note("test", data[:max(size, 8)]), signer, KEYS[signer], device=device, ts_ms=T0 + i)


def fill(chain: Chain, blocks: int, per_block: int, start: int = 0, size: int = 32) -> list[bytes]:
    """Append ``blocks`` blocks of ``per_block`` notes; returns the tx ids in order."""
    ids, i = [], start
    for _block in range(blocks):
        for _ in range(per_block):
            ids.append(chain.submit(note(i, size)).id)
            i += 1
        chain.mine(sealer_for(chain.id), ts_ms=T0 + 1000 * (chain.tip.height + 1))
    return ids


def tick() -> int:
    return time.time_ns() // 1_000_000
