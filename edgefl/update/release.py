"""A software release: its record, its announcement, the checks every node makes, and a node's update state.

    rel, tx = sign_release(wheel_path, signer, key)          # the cloud (``edgefl update publish``)
    rel = verify_release(tx, registry, signers=["cloud-1"])   # fog, device, root: ReleaseError if not
    state = UpdateState(data_dir); state.wanted(rel); state.stage(rel, tx, wheel)   # the device

A release is trusted for its record's signature, whoever relays it: the
announcement (``ReleaseNotice``) carries the signed transaction as the main
chain recorded it, and the wheel is accepted only if its SHA-256 is the one
the record names.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Annotated

from edgefl import __version__
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.crypto import KeyRegistry, SigningKey
from edgefl.errors import EdgeflError
from edgefl.ledger import InvalidTx, decode_tx, record_tx
from edgefl.ledger.records import SoftwareRelease
from edgefl.ledger.tx import MAX_TX
from edgefl.runtime import write_atomic

PACKAGE = "edgefl"
ROOT = Path("/opt/edgefl")  # the venvs, the link the unit runs, root's status.json
MAX_WHEEL = 64 << 20


class ReleaseError(EdgeflError, ValueError):
    """A release, or its wheel, that must not be installed; ``reason`` is counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@message("update.release", max_size=MAX_TX + 1024)
class ReleaseNotice(Message):
    """The latest release, as recorded on the main chain: its signed transaction and the block holding it."""

    tx: Annotated[bytes, MaxLen(MAX_TX)]
    height: Annotated[int, Range(0)]


def version_key(version: str) -> tuple:
    """Order versions as PEP 440 does for the forms used here: 1.2 < 1.2.1; 1.3.0rc1 < 1.3.0."""
    m = re.match(r"(\d+(?:\.\d+)*)(.*)", version)
    if m is None:
        raise ReleaseError("version", f"{version!r} does not start with a release number")
    numbers = tuple(int(x) for x in m.group(1).split("."))
    numbers += (0,) * (8 - len(numbers))
    return numbers, m.group(2) == "", m.group(2)


def wheel_release(path: str | Path, version: str | None = None) -> SoftwareRelease:
    """The release of the wheel at ``path`` (its name gives package and version unless ``version`` says)."""
    path = Path(path)
    data = path.read_bytes()
    parts = path.name[:-4].split("-") if path.name.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise ReleaseError("filename", f"{path.name} is not a wheel's file name")
    if version is not None and version != parts[1]:
        raise ReleaseError("version", f"{path.name} is version {parts[1]}, not {version}")
    rel = SoftwareRelease(parts[0], parts[1], hashlib.sha256(data).digest(), len(data), path.name)
    try:
        rel.check()
        version_key(rel.version)
    except ValueError as exc:
        raise ReleaseError("filename", str(exc)) from None
    return rel


def sign_release(path: str | Path, signer: str, key: SigningKey, *, version: str | None = None
                 ) -> tuple[SoftwareRelease, bytes]:
    """The release of a wheel and its signed Type-I transaction (pointing at the wheel's content id)."""
    rel = wheel_release(path, version)
    return rel, record_tx(rel, signer, key, refs=[rel.wheel], model=rel.wheel)


def verify_release(tx: bytes, registry: KeyRegistry, signers: list[str]) -> SoftwareRelease:
    """The release ``tx`` records, if it is a record of one signed by one of ``signers`` (ReleaseError if not)."""
    try:
        info = decode_tx(tx, "release")
        if info.kind.name != "record" or info.body.type != SoftwareRelease.TYPE:
            raise ReleaseError("not_a_release", f"a {info.kind.name} transaction, not a software release")
        if info.body.signer not in signers:
            raise ReleaseError("signer", f"released by {info.body.signer!r}; only {', '.join(signers)} may release")
        info.kind.admit(info, None, registry)  # its one signature, by its signer, against the site's registry
        return info.body.unwrap()
    except InvalidTx as exc:
        raise ReleaseError(exc.reason, str(exc)) from None


def check_wheel(rel: SoftwareRelease, data: bytes) -> bytes:
    """``data`` if it is exactly the wheel ``rel`` names (size and SHA-256)."""
    if len(data) != rel.size or hashlib.sha256(data).digest() != rel.wheel:
        raise ReleaseError("digest", f"{rel.filename}: {len(data)} bytes that are not the released wheel "
                                     f"({rel.size} bytes, SHA-256 {rel.wheel.hex()[:16]}…)")
    return data


class UpdateState:
    """A node's update files: what the agent staged (its data directory), what root installed (``root``).

    ``{data_dir}/update/pending.json`` (the agent writes it; ``edgefl-update.path`` watches it) names the
    staged release's transaction and wheel under ``staged/VERSION/``.  ``ROOT/status.json`` (root writes
    it beside the venvs, readable by all) holds the installed version, the previous one and every attempt,
    with the versions rolled back from; a staged release that has an attempt after it is no longer pending.
    Each side writes only its own folder: the agent cannot touch the code or its record, root needs no
    write access to the agent's data.
    """

    def __init__(self, data_dir: str | Path, root: str | Path = ROOT):
        self.dir = Path(data_dir) / "update"
        self.pending_file = self.dir / "pending.json"
        self.status_file = Path(root) / "status.json"

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return {"installed": None, "previous": None, "history": [], "failed": []}

    def pending(self) -> dict | None:
        """The staged release root has not tried yet."""
        try:
            doc = json.loads(self.pending_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        tried = any(h.get("version") == doc.get("version") and h.get("at", 0) >= doc.get("staged", 0)
                    for h in self.status().get("history", []))
        return None if tried else doc

    def current(self) -> str:
        """The version running: what root installed last, else this process's own."""
        return self.status().get("installed") or __version__

    def wanted(self, rel: SoftwareRelease) -> bool:
        """Whether to stage ``rel``: newer than what runs, not staged yet, never rolled back from."""
        if rel.package != PACKAGE or rel.version in self.status().get("failed", []):
            return False
        pending = self.pending()
        if pending is not None and pending.get("version") == rel.version:
            return False
        return version_key(rel.version) > version_key(self.current())

    def stage(self, rel: SoftwareRelease, tx: bytes, wheel: bytes) -> Path:
        """Keep the release and its checked wheel under ``staged/VERSION`` and say so in ``pending.json``."""
        check_wheel(rel, wheel)
        folder = self.dir / "staged" / rel.version
        write_atomic(folder / rel.filename, wheel, mode=0o600)
        write_atomic(folder / "release.tx", tx, mode=0o600)
        doc = {"version": rel.version, "tx": str(folder / "release.tx"), "wheel": str(folder / rel.filename),
               "staged": time.time()}
        write_atomic(self.pending_file, json.dumps(doc).encode(), mode=0o600)
        return folder

    def record(self, status: dict) -> None:
        write_atomic(self.status_file, (json.dumps(status, indent=1) + "\n").encode(), mode=0o644)
