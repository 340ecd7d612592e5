"""Type-I record kinds defined by the ledger itself.

A record (``edgefl.ledger.tx.Record``) can carry any registered @message; these
are the ones describing the life of a model.  Raw data and model weights never
go on chain: records hold their content ids (SHA-256 of the blob-store bytes).
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import SigningKey, VerifyingKey, tagged_hash

Cid = Annotated[bytes, MaxLen(32)]
Name = Annotated[str, MaxLen(128)]
DATA_TAG = b"edgefl/data-collected/v1"


@message("ledger.task")
class TaskAdvert(Message):
    """An FL task: what to train, from which initial model, with which trainer configuration."""

    task: Name
    description: Annotated[str, MaxLen(4096)]
    model: Cid  # initial model M_0
    trainer: Annotated[str, MaxLen(32)]
    config: Cid  # trainer configuration bytes
    rounds: Annotated[int, Range(1, 1 << 20)]


@message("ledger.model-upload")
class ModelUpload(Message):
    """A model handed to the next level (device → fog, fog → cloud); the record's signature signs its hash."""

    task: Name
    round: Annotated[int, Range(0)]
    model: Cid
    size: Annotated[int, Range(0)]


@message("ledger.data-collected")
class DataCollected(Message):
    """A device's attestation of data it collected: its signature over the data's digest."""

    device: Name
    data: Cid  # SHA-256 of the data as stored in the blob store
    size: Annotated[int, Range(0)]
    samples: Annotated[int, Range(0)]
    sig: Annotated[bytes, MaxLen(64)]  # the device's ECDSA over tagged_hash(DATA_TAG, data cid)

    @classmethod
    def of(cls, device: str, cid: bytes, size: int, samples: int, key: SigningKey) -> "DataCollected":
        return cls(device, cid, size, samples, key.sign(tagged_hash(DATA_TAG, cid)))

    def verify(self, key: VerifyingKey, data: bytes) -> bool:
        """``data`` is exactly what the holder of ``key`` attested (its digest, size and signature)."""
        return (len(data) == self.size and hashlib.sha256(data).digest() == self.data
                and key.verify(self.sig, tagged_hash(DATA_TAG, self.data)))


@message("ledger.train-step")
class TrainingStep(Message):
    """One local training step M_{i+1} = T(M_i, M_O, d_{i+1}); ``digest`` = H(M_{i+1} ‖ M_O ‖ d_{i+1} ‖ i+1)."""

    task: Name
    device: Name
    step: Annotated[int, Range(1)]
    trainer: Annotated[str, MaxLen(32)]
    config: Cid
    model_in: Cid  # M_i
    origin: Cid  # M_O
    data: Cid  # d_{i+1}
    model_out: Cid  # M_{i+1}
    digest: Annotated[bytes, MaxLen(32)]


@message("ledger.coin")
class CoinUpdate(Message):
    """Incentive bookkeeping: ``delta`` coins to ``account`` for ``reason``."""

    account: Name
    delta: int
    reason: Annotated[str, MaxLen(256)]


@message("ledger.note", max_size=80 << 10)
class Note(Message):
    """Free-form signed bytes (operator annotations; benchmark payloads)."""

    topic: Annotated[str, MaxLen(64)]
    data: Annotated[bytes, MaxLen(64 << 10)]


@message("ledger.software-release")
class SoftwareRelease(Message):
    """A version of the agent's code, released by its signer (the record's): the wheel every node installs.

    Devices learn it through their fog and install exactly the bytes whose SHA-256 is ``wheel``
    (``edgefl.update``); the main chain keeps who released what, and when.
    """

    package: Annotated[str, MaxLen(64)]
    version: Annotated[str, MaxLen(64)]
    wheel: Cid  # SHA-256 of the wheel file, its content id in the blob stores
    size: Annotated[int, Range(1, 1 << 30)]
    filename: Annotated[str, MaxLen(255)]  # as pip needs it: NAME-VERSION-PYTAG-ABITAG-PLATFORM.whl

    def check(self) -> None:
        """The file name is a wheel's of this package and version, and names nothing but one file."""
        name = self.filename
        parts = name[:-4].split("-") if name.endswith(".whl") else []
        if ("/" in name or "\\" in name or name.startswith(".") or len(parts) not in (5, 6)
                or parts[0].replace("_", "-").lower() != self.package.replace("_", "-").lower()
                or parts[1] != self.version):
            raise ValueError(f"software release: {name!r} is not a wheel file name of {self.package} {self.version}")
