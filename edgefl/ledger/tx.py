"""Transactions: one signed wire form; what a transaction means is its kind, chosen by name.

    tx    = canonical CBOR {"kind": str, "body": bstr, "sigs": [{"signer", "sig"}, ...]}
    body  = canonical CBOR of the kind's @message
    sig   = ECDSA-secp256k1 over tagged_hash("edgefl/ledger/tx/v1/" + kind, body)
    txid  = tagged_hash("edgefl/ledger/txid/v1", tx)

Kinds (one small class each, registered in ``KINDS``):

* ``genesis``  — the chain's spec (committee, sealer, limits, parent or sub-chains); block 0 only.
* ``record``   — Type-I: any registered @message (type, version, its canonical map) with its
                 signer, pointers to off-chain blobs and index keys (device, model).
* ``anchor``   — Type-II, main chain only: a sub-chain's head header and the content
                 digests of its blocks since its previous anchor, signed by a quorum of the
                 sub-chain's committee.  The main chain accepts it only if the new
                 accumulator extends the one it anchored before by exactly those blocks,
                 so a rewritten sub-chain history cannot be anchored.
* ``beacon``   — Type-III, sub-chains only: the main chain's head header, signed by a
                 quorum of the main committee.

``admit`` checks signatures and spec-level rules once per transaction (a node
caches the verdict by tx id, so a block whose transactions it already admitted
is validated without decoding them again); ``check`` and ``apply`` run the
rules that depend on the chain's state, in block order.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Iterable

from edgefl import codec
from edgefl.codec import MaxLen, Message, Range, message
from edgefl.consensus import EpochChange, PolicySpec, ProposalSpec
from edgefl.consensus import epoch as epochs
from edgefl.consensus import policy as policies
from edgefl.consensus import proposal as proposals
from edgefl.consensus.epoch import EpochSpec
from edgefl.crypto import IdentityRejected, KeyRegistry, SigningKey, accumulator, tagged_hash
from edgefl.ledger.block import Header, decode_header
from edgefl.ledger.committee import Committee, Sig, bft_threshold, sign_all
from edgefl.ledger.errors import InvalidTx, LedgerError, relabel
from edgefl.names import InvalidName, check_segment

TX_TAG = b"edgefl/ledger/tx/v1/"
TXID_TAG = b"edgefl/ledger/txid/v1"
MAX_TX = 1 << 20
MAX_ANCHOR_BLOCKS = 4096  # a sub-chain anchors at least this often
MAX_REFS = 1024 + 2  # a record may point at every input of one aggregation over 1,024 parties, and its ends
CID_BYTES = 32
TX_LIMITS = codec.Limits(max_size=MAX_TX, max_depth=4, max_items=256)
BODY_LIMITS = codec.Limits(max_size=MAX_TX, max_depth=8, max_items=2 * MAX_ANCHOR_BLOCKS + 64)
Cid = Annotated[bytes, MaxLen(CID_BYTES)]


# --------------------------------------------------------------------------- wire


@message("ledger.tx", max_size=MAX_TX)
class Tx(Message):
    kind: Annotated[str, MaxLen(32)]
    body: bytes
    sigs: Annotated[list[Sig], MaxLen(64)]


def txid(raw: bytes) -> bytes:
    return tagged_hash(TXID_TAG, raw)


def signing_digest(kind: str, body: bytes) -> bytes:
    return tagged_hash(TX_TAG + kind.encode(), body)


@dataclass(frozen=True, slots=True)
class TxInfo:
    """A decoded transaction (structure valid; signatures and chain rules not yet checked)."""

    id: bytes
    raw: bytes
    kind: "TxKind"
    body_bytes: bytes
    body: Message
    sigs: list[Sig]

    @property
    def digest(self) -> bytes:
        return signing_digest(self.kind.name, self.body_bytes)


def decode_tx(raw: bytes, field: str = "tx") -> TxInfo:
    try:
        tx = Tx.from_wire(codec.decode(raw, TX_LIMITS, canonical=True), field)
        kind = KINDS.get(tx.kind)
        if kind is None:
            raise InvalidTx(f"unknown kind {tx.kind!r}", field=f"{field}.kind", reason="unknown_kind")
        body = kind.body_type.from_wire(codec.decode(tx.body, BODY_LIMITS, canonical=True), f"{field}.{kind.name}")
    except codec.CodecError as exc:
        raise relabel(exc, InvalidTx, field) from None
    if len(tx.body) > kind.body_type.MAX_SIZE:
        raise InvalidTx(f"{len(tx.body)} bytes exceeds {kind.body_type.MAX_SIZE}", field=f"{field}.body",
                        reason="too_large")
    return TxInfo(txid(raw), raw, kind, tx.body, body, tx.sigs)


def make_tx(kind: str, body: Message, signers: Iterable[tuple[str, SigningKey]] = ()) -> bytes:
    body_bytes = codec.encode_message(body)
    sigs = sign_all(signing_digest(kind, body_bytes), signers)
    return codec.encode_message(Tx(kind, body_bytes, sigs))


# --------------------------------------------------------------------------- bodies


@message("ledger.spec", max_size=256 << 10)
class ChainSpec(Message):
    """Genesis: everything needed to validate the chain from block 0 on."""

    chain: Annotated[str, MaxLen(64)]
    role: Annotated[str, MaxLen(8)]  # "main" or "sub"
    sealer: Annotated[str, MaxLen(32)]
    committee: Committee
    max_block: Annotated[int, Range(4096, 64 << 20)]
    ts: Annotated[int, Range(0)]
    parent: Annotated[str, MaxLen(64)] | None = None  # sub: the main chain's id
    parent_committee: Committee | None = None  # sub: who signs Type-III beacons
    subchains: Annotated[dict[str, Committee], MaxLen(1024)] | None = None  # main: who signs Type-II
    # record type (or "*") -> who must endorse such a record (edgefl.consensus.policy); None: its signer alone
    policies: Annotated[dict[Annotated[str, MaxLen(64)], PolicySpec], MaxLen(256)] | None = None
    proposal: ProposalSpec | None = None  # who may propose a block (edgefl.consensus.proposal); None: any member
    # FFG finality (edgefl.consensus.finality): each committee member's voting weight; None: every block final
    finality: Annotated[dict[Annotated[str, MaxLen(128)], Annotated[int, Range(1, 1 << 32)]], MaxLen(64)] | None = None
    # the committee re-drawn every ``epochs.blocks`` blocks from ``committee`` (the pool); None: fixed at genesis
    epochs: EpochSpec | None = None


@message("ledger.record", max_size=128 << 10)
class Record(Message):
    """Type-I: a registered @message, who signed it, what it points at off-chain, how to find it."""

    type: Annotated[str, MaxLen(64)]
    v: Annotated[int, Range(0, 1 << 16)]
    msg: dict[str, Any]  # the message's map; its canonical bytes are part of the signed body
    signer: Annotated[str, MaxLen(128)]
    ts: Annotated[int, Range(0)]
    refs: Annotated[list[Cid], MaxLen(MAX_REFS)] = field(default_factory=list)  # blob CIDs (SHA-256)
    device: Annotated[str, MaxLen(128)] | None = None
    model: Cid | None = None

    def unwrap(self) -> Message:
        try:
            cls = record_type(self.type, self.v)
            msg = cls.from_wire(self.msg, f"record.{self.type}")
            if _self_check(cls):  # invariants beyond the schema (e.g. the PKI's CRLs)
                msg.check()
            return msg
        except codec.CodecError as exc:
            raise relabel(exc, InvalidTx, "record.msg") from None
        except ValueError as exc:  # a message type's own invariants (__post_init__)
            raise InvalidTx(str(exc), field=f"record.{self.type}", reason="schema") from None


# Modules whose @message types travel in Type-I records. They register their
# types with the codec when imported; a node imports them the first time a
# record names a type it does not know yet.
RECORD_MODULES = (
    "edgefl.ledger.records",  # tasks, model uploads, data collected, training steps, coins, notes
    "edgefl.crypto.pki",  # Crl: certificate revocation lists
    "edgefl.consensus.epoch",  # EpochSeed, ReputationPenalty
    "edgefl.consensus.evidence",  # Behaviour: proposing, voting, equivocating, silent committee members
    "edgefl.consensus.finality",  # Vote: FFG votes of the main chain's final committee
    "edgefl.ml.privacy",  # PrivacySpend: privacy budget spent by a device
    "edgefl.ml.export",  # ModelRelease: the extractor model a device may run
    "edgefl.fl.protocol",  # Task, Aggregation, FogUpdate, DeviceUpdate: a federated task and its rounds
    "edgefl.fl.reputation",  # Offence: a node's statement that an account misbehaved
    "edgefl.fl.selection",  # Selection: a fog's draw of a round's participants
    "edgefl.fl.leader",  # LeaderDraw: the draw of a round's aggregating fog
)


@functools.cache
def _self_check(cls: type[Message]) -> bool:
    """Whether a message type states its own invariants as a ``check()`` taking no arguments."""
    check = getattr(cls, "check", None)
    return callable(check) and len(inspect.signature(check).parameters) == 1  # just ``self``


def record_type(type_name: str, version: int) -> type[Message]:
    try:
        return codec.lookup(type_name, version)
    except (codec.UnknownType, codec.UnsupportedVersion):
        for module in RECORD_MODULES:
            importlib.import_module(module)
        return codec.lookup(type_name, version)


@message("ledger.anchor", max_size=(MAX_ANCHOR_BLOCKS + 64) * 40)
class Anchor(Message):
    """Type-II: a sub-chain's head and the content digests of its blocks since its last anchor."""

    chain: Annotated[str, MaxLen(64)]
    prev_height: Annotated[int, Range(-1)]
    digests: Annotated[list[Annotated[bytes, MaxLen(32)]], MaxLen(MAX_ANCHOR_BLOCKS)]
    header: Annotated[bytes, MaxLen(2048)]


@message("ledger.beacon", max_size=4096)
class Beacon(Message):
    """Type-III: the main chain's head header."""

    header: Annotated[bytes, MaxLen(2048)]


# --------------------------------------------------------------------------- state


@dataclass
class State:
    """What the kinds' rules depend on: the spec and the last anchored head of each other chain.

    On the main chain ``anchors`` maps each sub-chain to its last Type-II
    (height, accumulator bytes); on a sub-chain it holds the main chain's last
    Type-III.
    """

    spec: ChainSpec | None = None
    anchors: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # a chain with epochs (edgefl.consensus.epoch): the epoch, its seed, and the spec with its committee
    epoch: int = 0
    seed: bytes = b""
    current: ChainSpec | None = None
    banned: list[str] = field(default_factory=list)  # members proven to equivocate: never drawn again

    @property
    def effective(self) -> ChainSpec | None:
        """The spec the next block is checked against: the genesis spec with this epoch's committee."""
        return self.current or self.spec

    def copy(self) -> "State":
        return State(self.spec, dict(self.anchors), self.epoch, self.seed, self.current, list(self.banned))


@dataclass(frozen=True, slots=True)
class Index:
    """Columns the store keeps for lookups and garbage collection."""

    rtype: str | None = None
    signer: str | None = None
    device: str | None = None
    model: bytes | None = None
    refs: tuple[bytes, ...] = ()
    anchor: tuple[str, int, bytes] | None = None  # (chain, height, accumulator bytes)


# --------------------------------------------------------------------------- kinds


class TxKind:
    """What one kind of transaction means.

    ``admit`` checks signatures and everything that depends only on the chain
    spec; its verdict holds for the transaction's exact bytes on that chain,
    so a node caches it by tx id.  ``check`` applies the rules that depend on
    the chain's current state, and ``apply`` updates that state.
    """

    name: ClassVar[str]
    body_type: ClassVar[type[Message]]

    def admit(self, tx: TxInfo, spec: ChainSpec | None, registry: KeyRegistry | None) -> None:
        raise NotImplementedError

    def check(self, tx: TxInfo, state: State) -> None:
        pass

    def apply(self, tx: TxInfo, state: State) -> None:
        pass

    def index(self, tx: TxInfo) -> Index:
        return Index()


KINDS: dict[str, TxKind] = {}


def kind(cls: type[TxKind]) -> type[TxKind]:
    KINDS[cls.name] = cls()
    return cls


def _header(data: bytes, field: str) -> Header:
    try:
        return decode_header(data, field)
    except LedgerError as exc:
        raise relabel(exc, InvalidTx) from None


def check_spec(spec: ChainSpec, field: str = "genesis") -> None:
    try:
        check_segment(spec.chain, "chain id")
        if spec.role not in ("main", "sub"):
            raise LedgerError(f"role {spec.role!r} must be main or sub", field=f"{field}.role")
        spec.committee.validate(f"{field}.committee")
        if spec.role == "sub":
            if spec.parent is None or spec.parent_committee is None:
                raise LedgerError("a sub-chain names its parent and the parent's committee", field=f"{field}.parent")
            spec.parent_committee.validate(f"{field}.parent_committee")
        elif spec.parent is not None or spec.parent_committee is not None:
            raise LedgerError("the main chain has no parent", field=f"{field}.parent")
        if spec.role == "sub" and spec.subchains:
            raise LedgerError("only the main chain lists sub-chains", field=f"{field}.subchains")
        for name, committee in (spec.subchains or {}).items():
            check_segment(name, "sub-chain id")
            committee.validate(f"{field}.subchains[{name!r}]")
        for rtype, p in (spec.policies or {}).items():
            policies.from_spec(p, f"{field}.policies[{rtype!r}]")
        if spec.finality is not None and set(spec.finality) != {m.id for m in spec.committee.members}:
            raise LedgerError("finality weights name every committee member and only them",
                              field=f"{field}.finality")
        if spec.epochs is not None:
            _check_epochs(spec, f"{field}.epochs")
        if spec.proposal is not None:
            rule = proposals.from_spec(spec.proposal, spec.committee, f"{field}.proposal")
            n, need = len(spec.committee.members), bft_threshold(len(spec.committee.members))
            if rule.bft and spec.sealer == "quorum" and spec.committee.threshold < need:
                raise LedgerError(f"a {rule.name} committee of {n} tolerates f of 3f+1 only with a quorum of at "
                                  f"least ceil((2n+1)/3) = {need}, not {spec.committee.threshold}",
                                  field=f"{field}.committee.threshold")
    except InvalidName as exc:
        raise InvalidTx(str(exc), field=f"{field}.chain", reason="schema") from None
    except LedgerError as exc:
        raise InvalidTx(exc.detail, field=exc.field, reason="schema") from None


def _check_epochs(spec: ChainSpec, field: str) -> None:
    e, pool = spec.epochs, set(spec.committee.ids)
    if spec.sealer != "quorum" or spec.proposal is None or spec.proposal.name != "pbft" or spec.proposal.credit:
        raise LedgerError("a committee re-drawn per epoch is a PBFT committee (quorum sealer, pbft proposal "
                          "without credit)", field=field)
    if spec.finality is not None:
        raise LedgerError("finality weights name a fixed committee", field=field)
    if e.first != sorted(set(e.first)) or not set(e.first) <= pool or len(e.first) < epochs.MIN_SEATED:
        raise LedgerError(f"epoch 0's committee: at least {epochs.MIN_SEATED} pool members, sorted, no repeats",
                          field=f"{field}.first")
    if not set(e.always) <= set(e.first) or not set(e.weights or {}) <= pool:
        raise LedgerError("always-seated members sit in epoch 0; weights name pool members", field=field)


@kind
class GenesisKind(TxKind):
    name = "genesis"
    body_type = ChainSpec

    def admit(self, tx, spec, registry):
        if tx.sigs:
            raise InvalidTx("a genesis spec is authenticated by block 0's seal, not signed", field="tx.sigs")
        check_spec(tx.body)

    def check(self, tx, state):
        if state.spec is not None:
            raise InvalidTx("only block 0 holds a genesis spec", field="tx.kind", reason="misplaced")

    def apply(self, tx, state):
        state.spec = tx.body
        epochs.open_chain(state)


@kind
class EpochKind(TxKind):
    """The epoch block's committee change (``edgefl.consensus.epoch``), authenticated by that block's seal."""

    name = "epoch"
    body_type = EpochChange

    def admit(self, tx, spec, registry):
        if tx.sigs:
            raise InvalidTx("an epoch change is authenticated by its block's seal, not signed", field="tx.sigs")
        if spec is None or spec.epochs is None:
            raise InvalidTx("this chain's committee is fixed at genesis", field="tx.kind", reason="misplaced")

    def check(self, tx, state):
        try:
            epochs.check_change(tx.body, state.spec, state)
        except epochs.EpochError as exc:
            raise InvalidTx(str(exc), field="epoch", reason="bad_epoch") from None

    def apply(self, tx, state):
        epochs.enter(tx.body, state.spec, state)


@kind
class RecordKind(TxKind):
    name = "record"
    body_type = Record

    def admit(self, tx, spec, registry):
        rec: Record = tx.body
        policy = policies.for_record(spec.policies if spec is not None else None, rec.type)
        signers = [s.signer for s in tx.sigs]
        if policy is None and signers != [rec.signer]:
            raise InvalidTx(f"a record carries exactly one signature, by its signer {rec.signer!r}",
                            field="tx.sigs", reason="bad_signature")
        if rec.signer not in signers or signers != sorted(set(signers)):
            raise InvalidTx(f"signatures sorted by signer, one each, one by the record's signer {rec.signer!r}",
                            field="tx.sigs", reason="bad_signature")
        if any(len(c) != CID_BYTES for c in rec.refs) or (rec.model is not None and len(rec.model) != CID_BYTES):
            raise InvalidTx("content ids are 32-byte SHA-256 digests", field="record.refs", reason="schema")
        rec.unwrap()
        if registry is None:
            raise InvalidTx("no key registry to check record signatures", field="tx.sigs", reason="unknown_signer")
        for i, s in enumerate(tx.sigs):  # every endorsement must verify: a forged one is refused, never skipped
            try:
                key = registry.key_for(s.signer, rec.ts / 1000)
            except IdentityRejected as exc:
                raise InvalidTx(str(exc), field="record.signer" if s.signer == rec.signer else f"tx.sigs[{i}]",
                                reason=exc.reason) from None
            if not key.verify(s.sig, tx.digest):
                raise InvalidTx(f"signature of {s.signer!r} does not verify", field=f"tx.sigs[{i}]",
                                reason="bad_signature")
        if policy is not None and not policy.satisfied(frozenset(signers)):
            raise InvalidTx(f"endorsed by {', '.join(signers)}; {rec.type} records need {policy!r}",
                            field="tx.sigs", reason="endorsement_policy")

    def index(self, tx):
        rec: Record = tx.body
        return Index(rtype=rec.type, signer=rec.signer, device=rec.device, model=rec.model, refs=tuple(rec.refs))


def _quorum(committee: Committee, tx: TxInfo) -> None:
    committee.verify_quorum(tx.digest, tx.sigs, field="tx.sigs", error=InvalidTx)


@kind
class AnchorKind(TxKind):
    name = "anchor"
    body_type = Anchor

    def admit(self, tx, spec, registry):
        a: Anchor = tx.body
        if spec is None or spec.role != "main":
            raise InvalidTx("anchors (Type-II) belong on the main chain", field="tx.kind", reason="misplaced")
        committee = (spec.subchains or {}).get(a.chain)
        if committee is None:
            raise InvalidTx(f"{a.chain!r} is not a registered sub-chain", field="anchor.chain", reason="unknown_chain")
        head = _header(a.header, "anchor.header")
        if head.chain != a.chain:
            raise InvalidTx(f"header of chain {head.chain!r}", field="anchor.header.chain", reason="schema")
        if not a.digests or head.height != a.prev_height + len(a.digests):
            raise InvalidTx(f"{len(a.digests)} block digests do not lead from {a.prev_height} to {head.height}",
                            field="anchor.digests", reason="anchor_gap")
        if any(len(d) != 32 for d in a.digests) or a.digests[-1] != head.content():
            raise InvalidTx("last digest is not the head's content", field="anchor.digests", reason="anchor_head")
        _quorum(committee, tx)

    def check(self, tx, state):
        a: Anchor = tx.body
        last_height, last_acc = state.anchors.get(a.chain, (-1, None))
        if a.prev_height != last_height:
            raise InvalidTx(f"builds on height {a.prev_height}, last anchored is {last_height}",
                            field="anchor.prev_height", reason="anchor_gap")
        head = _header(a.header, "anchor.header")
        try:
            start = accumulator.from_bytes(last_acc) if last_acc is not None else accumulator.GENERATOR
            claimed = accumulator.from_bytes(head.acc)
        except ValueError as exc:
            raise InvalidTx(str(exc), field="anchor.header.acc", reason="schema") from None
        added = [accumulator.representative(d, last_height + 1 + i) for i, d in enumerate(a.digests)]
        if accumulator.update_witness(start, added) != claimed:  # start ** (product of the added elements)
            raise InvalidTx(f"accumulator at {head.height} does not extend the history anchored at {last_height}",
                            field="anchor.header.acc", reason="anchor_history")

    def apply(self, tx, state):
        head = _header(tx.body.header, "anchor.header")
        state.anchors[head.chain] = (head.height, head.acc)

    def index(self, tx):
        head = _header(tx.body.header, "anchor.header")
        return Index(anchor=(head.chain, head.height, head.acc))


@kind
class BeaconKind(TxKind):
    name = "beacon"
    body_type = Beacon

    def admit(self, tx, spec, registry):
        if spec is None or spec.role != "sub":
            raise InvalidTx("beacons (Type-III) belong on sub-chains", field="tx.kind", reason="misplaced")
        head = _header(tx.body.header, "beacon.header")
        if head.chain != spec.parent:
            raise InvalidTx(f"header of chain {head.chain!r}, parent is {spec.parent!r}",
                            field="beacon.header.chain", reason="schema")
        _quorum(spec.parent_committee, tx)

    def check(self, tx, state):
        head = _header(tx.body.header, "beacon.header")
        last = state.anchors.get(head.chain, (-1, b""))[0]
        if head.height <= last:
            raise InvalidTx(f"main height {head.height} is not after {last}", field="beacon.header.height",
                            reason="stale")

    def apply(self, tx, state):
        head = _header(tx.body.header, "beacon.header")
        state.anchors[head.chain] = (head.height, head.acc)

    def index(self, tx):
        head = _header(tx.body.header, "beacon.header")
        return Index(anchor=(head.chain, head.height, head.acc))


# --------------------------------------------------------------------------- builders


def record_tx(msg: Message, signer: str, key: SigningKey, *, refs: Iterable[bytes] = (), device: str | None = None,
              model: bytes | None = None, ts_ms: int | None = None,
              endorsers: Iterable[tuple[str, SigningKey]] = ()) -> bytes:
    """A signed Type-I transaction carrying ``msg`` (and the endorsements of ``endorsers``, if any)."""
    rec = Record(type=msg.TYPE, v=msg.VERSION, msg=codec.message_to_wire(msg), signer=signer,
                 ts=time.time_ns() // 1_000_000 if ts_ms is None else ts_ms, refs=list(refs), device=device,
                 model=model)
    return make_tx("record", rec, [(signer, key), *endorsers])


def endorse(raw: bytes, member: str, key: SigningKey) -> bytes:
    """``raw`` with ``member``'s endorsement added (replacing an earlier one of ``member``); sigs stay sorted."""
    info = decode_tx(raw)
    sigs = [s for s in info.sigs if s.signer != member] + sign_all(info.digest, [(member, key)])
    return codec.encode_message(Tx(info.kind.name, info.body_bytes, sorted(sigs, key=lambda s: s.signer)))


def anchor_tx(chain: str, prev_height: int, digests: list[bytes], header: bytes,
              signers: Iterable[tuple[str, SigningKey]]) -> bytes:
    return make_tx("anchor", Anchor(chain, prev_height, list(digests), header), signers)


def beacon_tx(header: bytes, signers: Iterable[tuple[str, SigningKey]]) -> bytes:
    return make_tx("beacon", Beacon(header), signers)


def genesis_tx(spec: ChainSpec) -> bytes:
    check_spec(spec)
    return make_tx("genesis", spec)

