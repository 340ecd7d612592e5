"""Cross-chain verification (Protocol 1): a verifier on sub-chain A checks transaction tx_Q of chain B.

1. Take the main chain's accumulator from A's latest Type-III (A's own, validated chain).
2. Ask the main chain's node for the Type-II carrying B's latest accumulator up to that
   main height, with its membership proof (and the main genesis spec, with its proof).
3. Verify both proofs against the main accumulator, and the Type-II's signatures
   against B's committee as registered in the main chain's genesis.
4. Extract B's accumulator (and height) from the Type-II.
5. Ask B's node for tx_Q's membership proof against that height.
6. Verify it against B's accumulator.

Every step is reported as it happens; the verdict is ACCEPT, REJECT (with the
failing step and why) or PENDING (tx_Q is newer than B's last anchor that A
has seen through the main chain).  The same path verifies a transaction on
the main chain itself (steps 2-4 collapse) or on A (its own accumulator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from edgefl.crypto import KeyRegistry, accumulator
from edgefl.errors import EdgeflError
from edgefl.ledger.block import decode_header
from edgefl.ledger.chain import Chain
from edgefl.ledger.errors import InvalidTx, LedgerError, ProofError
from edgefl.ledger.proofs import MAX_BATCH, BatchProof, TxProof, verify_batch_proof, verify_proof
from edgefl.ledger.protocol import AnchorQuery, BatchProofQuery, ProofQuery
from edgefl.ledger.tx import ChainSpec, TxInfo
from edgefl.transport import RemoteError, RequestTimeout, Session

ACCEPT, REJECT, PENDING = "ACCEPT", "REJECT", "PENDING"


@dataclass
class Verdict:
    verdict: str = REJECT
    steps: list[str] = field(default_factory=list)
    reason: str = ""
    tx: TxInfo | None = None
    height: int | None = None  # block of tx_Q on B
    txs: list[TxInfo] = field(default_factory=list)  # verify_txs: every transaction, in the order asked

    @property
    def ok(self) -> bool:
        return self.verdict == ACCEPT


class Failed(EdgeflError):
    """A verification step that did not pass: its verdict and why."""

    def __init__(self, verdict: str, reason: str):
        super().__init__(reason)
        self.verdict = verdict
        self.reason = verdict.lower()


def _short(b: bytes) -> str:
    return b[:8].hex() + "…"


@dataclass(frozen=True)
class Trusted:
    """An accumulator value of ``chain`` at ``height`` that the verifier trusts, and how it got it."""

    chain: str
    height: int
    acc: int


class CrossChain:
    """Protocol 1 from a node that holds sub-chain A (read from its own store)."""

    def __init__(self, session: Session, local: Chain, *, main_node: str, server_of: Callable[[str], str],
                 registry: KeyRegistry | None = None, report: Callable[[str], None] | None = None,
                 timeout: float | None = None):
        self.session = session
        self.local = local
        self.main_node = main_node
        self.server_of = server_of
        self.registry = registry
        self.report = report or (lambda line: None)
        self.timeout = timeout

    def _say(self, verdict: Verdict, line: str) -> None:
        verdict.steps.append(line)
        self.report(line)

    async def _ask(self, node: str, msg, what: str):
        try:
            return (await self.session.request(node, msg, timeout=self.timeout)).message
        except RemoteError as exc:
            if exc.reason == "not_anchored":
                raise Failed(PENDING, f"{what}: {exc}") from None
            raise Failed(REJECT, f"{what}: {node} answered {exc}") from None
        except RequestTimeout:
            raise Failed(REJECT, f"{what}: no answer from {node}") from None

    async def anchor_of(self, chain: str, v: Verdict) -> Trusted:
        """Steps 1-4: the accumulator of ``chain`` that A can trust through the main chain."""
        a = self.local
        main = a.spec.parent if a.spec.role == "sub" else a.id
        if chain == a.id:
            self._say(v, f"1-4. {chain} is this node's own chain: its tip at height {a.tip.height} "
                         f"(accumulator {_short(accumulator.to_bytes(a.tip.acc))})")
            return Trusted(chain, a.tip.height, a.tip.acc)
        beacon = a.store.latest_anchor(main)
        if beacon is None:
            raise Failed(PENDING, f"step 1: {a.id} has recorded no Type-III from {main} yet")
        m_height, m_acc_bytes = beacon[0], beacon[1]
        m_acc = accumulator.from_bytes(m_acc_bytes)
        self._say(v, f"1. main accumulator from {a.id}'s latest Type-III (in {a.id} block {beacon[3]}): "
                     f"{main} height {m_height}, accumulator {_short(m_acc_bytes)}")
        if chain == main:
            return Trusted(main, m_height, m_acc)
        ap = await self._ask(self.main_node, AnchorQuery(chain, m_height), "step 2")
        self._say(v, f"2. asked {self.main_node} for {chain}'s latest Type-II up to {main} height {m_height}: "
                     f"in {main} block {decode_header(ap.anchor.header).height}")
        try:
            anchor, _ = verify_proof(ap.anchor, m_acc, chain=main, at=m_height, what="anchor")
            spec_tx, spec_header = verify_proof(ap.spec, m_acc, chain=main, at=m_height, what="spec")
        except ProofError as exc:
            raise Failed(REJECT, f"step 3: {exc}") from None
        if spec_tx.kind.name != "genesis" or spec_header.height != 0 or spec_tx.body.role != "main":
            raise Failed(REJECT, "step 3: the main chain's block 0 does not hold its genesis spec")
        spec: ChainSpec = spec_tx.body
        committee = (spec.subchains or {}).get(chain)
        if anchor.kind.name != "anchor" or anchor.body.chain != chain or committee is None:
            raise Failed(REJECT, f"step 3: the main chain answered with something that is not a Type-II of {chain}")
        try:
            committee.verify_quorum(anchor.digest, anchor.sigs, field="anchor.sigs", error=ProofError)
        except ProofError as exc:
            raise Failed(REJECT, f"step 3: {exc}") from None
        self._say(v, f"3. verified: the Type-II is in {main}'s accumulator (Merkle path + witness), signed by "
                     f"{len(anchor.sigs)} of {len(committee.members)} members of {chain}'s committee "
                     f"(quorum {committee.threshold}, from {main}'s genesis)")
        head = decode_header(anchor.body.header)
        self._say(v, f"4. {chain}'s accumulator at height {head.height}: {_short(head.acc)}")
        return Trusted(chain, head.height, accumulator.from_bytes(head.acc))

    async def prove(self, trusted: Trusted, txid: bytes, v: Verdict, *, step: str = "5") -> TxInfo:
        """Steps 5-6: tx ``txid`` of ``trusted.chain`` against its trusted accumulator."""
        if trusted.chain == self.local.id:
            try:
                proof = self.local.proof(txid, trusted.height)
            except ProofError as exc:
                raise Failed(PENDING if exc.reason == "not_anchored" else REJECT, f"step {step}: {exc}") from None
            node = "the local store"
        else:
            node = self.server_of(trusted.chain)
            proof: TxProof = await self._ask(node, ProofQuery(txid, trusted.height), f"step {step}")
        header = decode_header(proof.header)
        self._say(v, f"{step}. asked {node} for the proof of {txid.hex()[:16]}… against height {trusted.height}: "
                     f"block {header.height}, index {proof.index}")
        try:
            info, header = verify_proof(proof, trusted.acc, chain=trusted.chain, at=trusted.height, what="proof")
        except ProofError as exc:
            raise Failed(REJECT, f"step {int(step) + 1}: {exc}") from None
        if info.id != txid:
            raise Failed(REJECT, f"step {int(step) + 1}: the proof is for another transaction")
        v.height = header.height
        self._say(v, f"{int(step) + 1}. verified: the transaction is in block {header.height} of {trusted.chain}, "
                     f"a member of the accumulator at height {trusted.height}{self._signature_note(info)}")
        return info

    async def prove_many(self, trusted: Trusted, txids: list[bytes], v: Verdict, *, method: str = "aggregated",
                         step: str = "5") -> list[TxInfo]:
        """Steps 5-6 for several transactions of ``trusted.chain``: one batch proof per ``MAX_BATCH`` of them."""
        node = "the local store" if trusted.chain == self.local.id else self.server_of(trusted.chain)
        out: list[TxInfo] = []
        for start in range(0, len(txids), MAX_BATCH):
            part = txids[start:start + MAX_BATCH]
            if trusted.chain == self.local.id:
                try:
                    proof = self.local.batch_proof(part, trusted.height, method)
                except ProofError as exc:
                    raise Failed(PENDING if exc.reason == "not_anchored" else REJECT, f"step {step}: {exc}") from None
            else:
                proof: BatchProof = await self._ask(node, BatchProofQuery(part, trusted.height, method),
                                                    f"step {step}")
            self._say(v, f"{step}. asked {node} for one {method} batch proof of {len(part)} transaction(s) against "
                         f"height {trusted.height}")
            try:
                opened = verify_batch_proof(proof, trusted.acc, chain=trusted.chain, at=trusted.height,
                                            what="proof")
            except ProofError as exc:
                raise Failed(REJECT, f"step {int(step) + 1}: {exc}") from None
            if [info.id for info, _ in opened] != part:
                raise Failed(REJECT, f"step {int(step) + 1}: the batch proves other transactions than asked")
            blocks = sorted({h.height for _, h in opened})
            self._say(v, f"{int(step) + 1}. verified at once: {len(part)} transaction(s) in block(s) "
                         f"{', '.join(map(str, blocks))} of {trusted.chain}, members of the accumulator at height "
                         f"{trusted.height}")
            for info, _ in opened:
                note = self._signature_note(info)
                if note:
                    self._say(v, f"   {info.id.hex()[:16]}…{note}")
                out.append(info)
        return out

    async def verify_txs(self, chain: str, txids: list[bytes], *, method: str = "aggregated") -> Verdict:
        """Protocol 1 for several transactions of ``chain``: steps 1-4 once, then one batch proof (Protocol 2)."""
        v = Verdict()
        try:
            trusted = await self.anchor_of(chain, v)
            v.txs = await self.prove_many(trusted, list(txids), v, method=method)
            v.verdict = ACCEPT
        except Failed as exc:
            v.verdict, v.reason = exc.verdict, str(exc)
        except LedgerError as exc:
            v.verdict, v.reason = REJECT, str(exc)
        return v

    def _signature_note(self, info: TxInfo) -> str:
        if info.kind.name != "record":
            return ""
        try:
            info.kind.admit(info, None, self.registry)
        except InvalidTx as exc:
            if exc.reason in ("unknown_sender", "unknown_signer"):
                return f"; signer {info.body.signer!r} unknown here, its signature not checked"
            raise Failed(REJECT, f"step 6: {exc}") from None
        return f"; record {info.body.type!r} signed by {info.body.signer!r} (signature verified)"

    async def verify_tx(self, chain: str, txid: bytes) -> Verdict:
        v = Verdict()
        try:
            trusted = await self.anchor_of(chain, v)
            v.tx = await self.prove(trusted, txid, v)
            v.verdict = ACCEPT
        except Failed as exc:
            v.verdict, v.reason = exc.verdict, str(exc)
        except LedgerError as exc:
            v.verdict, v.reason = REJECT, str(exc)
        return v
