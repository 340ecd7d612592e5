"""Block proposal: who may propose the next block, and the claim in the header that proves it.

One small class per strategy, chosen by name in the chain spec
(``ChainSpec.proposal``) like the sealers; the sealer then says who closes
the block.  Without a ``proposal`` entry a chain keeps its original rule
(any committee member proposes; the sealer checks membership).

* ``pbft``   — the primary of the header's ``view``: committee member
  ``view mod n`` in id order (the default for sub-chains); with ``credit``
  (the main chain's final committee), a draw weighted by credit from a hash
  of the chain and the view, so each member leads a share of the views in
  proportion to its credit.  PBFT's view change needs every replica to know
  the next view's leader before anyone speaks, so this draw is public, not a
  VRF claim as in ``credit`` below.
* ``credit`` — proof of credit (the default for the main chain): a member is
  eligible in round ``view`` after the previous block when its VRF output on
  ``prev hash || "propose/" || view`` selects it in a sortition weighted by
  its credit (``consensus.sortition``: probability ∝ credit, ``tau`` expected
  proposers per round); the header carries the VRF proof (``vrf``) and anyone
  checks it against the member's committee key (the VRF and the ECDSA keys
  are the same secp256k1 key).  When several are eligible, replicas prefer the
  highest priority (``sortition.leader``); a round without an eligible member
  is followed by the next round after a timeout.
* ``pow``    — proof of work, the baseline of blockchain-FL frameworks: the
  header's ``nonce`` makes tagged_hash("edgefl/ledger/pow/v1", content)
  start with ``difficulty`` zero bits.  The work covers the header's content
  digest, which binds everything but the accumulator (which it determines),
  so a nonce try costs one hash, not an accumulator step.

``claim`` fills in a proposer's header fields (mining, for ``pow``);
``check`` is what every replica runs in block validation.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Callable, ClassVar

from edgefl.codec import MaxLen, Message, Range, message
from edgefl.consensus import sortition
from edgefl.crypto import tagged_hash
from edgefl.ledger import Header, InvalidBlock, LedgerError, Tip

POW_TAG = b"edgefl/ledger/pow/v1"
PRIMARY_TAG = b"edgefl/ledger/pbft-primary/v1"
MAX_DIFFICULTY = 64
ROLE = "propose/"


@message("ledger.proposal")
class ProposalSpec(Message):
    """A chain's proposal rule on the wire: its name and parameters."""

    name: Annotated[str, MaxLen(16)]
    difficulty: Annotated[int, Range(1, MAX_DIFFICULTY)] | None = None  # pow: leading zero bits
    credit: Annotated[dict[Annotated[str, MaxLen(128)], Annotated[int, Range(1, sortition.MAX_WEIGHT)]],
                      MaxLen(64)] | None = None  # credit: each member's weight
    tau: Annotated[int, Range(1, 64)] | None = None  # credit: expected eligible proposers per round


def _bad(message: str, field: str):
    raise InvalidBlock(message, field=field, reason="bad_proposer")


class Proposal:
    name: ClassVar[str]
    bft: ClassVar[bool] = False  # a committee consensus: quorums must tolerate f of 3f+1 (see check_spec)

    def __init__(self, spec: ProposalSpec):
        self.spec = spec

    def validate(self, committee, field: str) -> None:
        """Spec-level checks of the parameters (LedgerError naming the field)."""

    def claim(self, header: Header, tip: Tip, committee, *, member: str, secret: bytes | None = None,
              view: int = 0) -> Header:
        """``header`` with this rule's proof for ``member`` filled in (before the accumulator is computed)."""
        return dataclasses.replace(header, proposer=member)

    def check(self, header: Header, tip: Tip, committee) -> None:
        raise NotImplementedError


PROPOSALS: dict[str, type[Proposal]] = {}


def proposal(cls: type[Proposal]) -> type[Proposal]:
    PROPOSALS[cls.name] = cls
    return cls


def _check_credit(spec: ProposalSpec, committee, field: str) -> None:
    credit = spec.credit or {}
    if set(credit) != {m.id for m in committee.members}:
        raise LedgerError("credit lists every committee member and only them", field=f"{field}.credit")


@proposal
class PbftLeader(Proposal):
    name = "pbft"
    bft = True

    def validate(self, committee, field):
        if self.spec.credit is not None:
            _check_credit(self.spec, committee, field)

    def primary(self, committee, view: int, chain: str = "") -> str:
        ids = committee.ids
        credit = self.spec.credit
        if not credit:
            return ids[view % len(ids)]
        total = sum(credit[i] for i in ids)
        point = int.from_bytes(tagged_hash(PRIMARY_TAG, chain.encode() + b"\0" + view.to_bytes(8, "big"))[:8], "big") % total
        for i in ids:  # id order: the cumulative credit up to ``point``
            point -= credit[i]
            if point < 0:
                return i
        raise AssertionError("unreachable: point < total")

    def claim(self, header, tip, committee, *, member, secret=None, view=0):
        return dataclasses.replace(header, proposer=member, view=view or None)

    def check(self, header, tip, committee):
        want = self.primary(committee, header.view or 0, header.chain)
        if header.proposer != want:
            _bad(f"{header.proposer!r} proposed in view {header.view or 0}, whose primary is {want!r}",
                 "header.proposer")


@proposal
class ProofOfCredit(Proposal):
    name = "credit"
    bft = True

    def validate(self, committee, field):
        _check_credit(self.spec, committee, field)
        if sum(self.spec.credit.values()) < (self.spec.tau or 1):
            raise LedgerError("total credit must be at least tau", field=f"{field}.tau")

    def _selection(self, header, tip, committee, proof: bytes) -> sortition.Selection | None:
        credit = self.spec.credit
        key = committee.key_of(header.proposer)
        if key is None or header.proposer not in credit:
            return None
        return sortition.verify(key.raw, proof, tip.hash, f"{ROLE}{header.view or 0}", credit[header.proposer],
                                sum(credit.values()), self.spec.tau or 1, header.proposer)

    def eligible(self, tip: Tip, committee, member: str, secret: bytes, view: int = 0) -> sortition.Selection:
        """``member``'s draw for round ``view`` after ``tip`` (``selected`` says whether it may propose)."""
        credit = self.spec.credit
        return sortition.draw(secret, tip.hash, f"{ROLE}{view}", credit[member], sum(credit.values()),
                              self.spec.tau or 1, member)

    def claim(self, header, tip, committee, *, member, secret=None, view=0):
        sel = self.eligible(tip, committee, member, secret, view)
        if not sel.selected:
            raise LedgerError(f"{member} is not eligible to propose in round {view}", reason="not_eligible")
        return dataclasses.replace(header, proposer=member, view=view or None, vrf=sel.proof)

    def check(self, header, tip, committee):
        if header.vrf is None:
            _bad("a proof-of-credit header carries the proposer's VRF proof", "header.vrf")
        sel = self._selection(header, tip, committee, header.vrf)
        if sel is None:
            _bad(f"the VRF proof of {header.proposer!r} does not verify", "header.vrf")
        if not sel.selected:
            _bad(f"{header.proposer!r} was not drawn to propose in round {header.view or 0}", "header.vrf")


def pow_hash(header: Header) -> bytes:
    return tagged_hash(POW_TAG, header.content())


@proposal
class ProofOfWork(Proposal):
    name = "pow"

    def validate(self, committee, field):
        if self.spec.difficulty is None:
            raise LedgerError("proof of work needs a difficulty", field=f"{field}.difficulty")

    def _meets(self, header: Header) -> bool:
        return int.from_bytes(pow_hash(header), "big") >> (256 - self.spec.difficulty) == 0

    def claim(self, header, tip, committee, *, member, secret=None, view=0):
        header = dataclasses.replace(header, proposer=member, nonce=0)
        while not self._meets(header):
            header = dataclasses.replace(header, nonce=header.nonce + 1)
        return header

    def check(self, header, tip, committee):
        if header.nonce is None or not self._meets(header):
            _bad(f"the nonce does not give {self.spec.difficulty} leading zero bits", "header.nonce")


def from_spec(spec: ProposalSpec, committee=None, field: str = "genesis.proposal") -> Proposal:
    cls = PROPOSALS.get(spec.name)
    if cls is None:
        raise LedgerError(f"unknown proposal {spec.name!r} (known: {', '.join(sorted(PROPOSALS))})",
                          field=f"{field}.name")
    p = cls(spec)
    if committee is not None:
        p.validate(committee, field)
    return p


def check_header(spec, header: Header, tip: Tip) -> None:
    """Block validation's check of the header's proposer claim under the chain's rule (none: nothing to check)."""
    if spec.proposal is not None and header.height > 0:
        from_spec(spec.proposal).check(header, tip, spec.committee)

def claimer(spec, tip: Tip, member: str, key=None, view: int = 0):
    """The ``claim`` callable ``Chain.propose``/``mine`` take: ``member``'s proof under the chain's rule."""
    if spec.proposal is None:
        return None
    rule = from_spec(spec.proposal)
    secret = key.secret if key is not None else None
    return lambda header: rule.claim(header, tip, spec.committee, member=member, secret=secret, view=view)


def primary_of(spec) -> Callable[[int], str] | None:
    """A PBFT chain's leader schedule, view -> member (None: the replica's default, ``view mod n``)."""
    if spec.proposal is None or spec.proposal.name != "pbft" or not spec.proposal.credit:
        return None
    rule = PbftLeader(spec.proposal)
    return lambda view: rule.primary(spec.committee, view, spec.chain)
