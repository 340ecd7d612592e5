"""Who aggregates the fogs' models in a round: a fog drawn by VRF sortition from the epoch seed (``fl.leader = "drawn"``).

As in the crowdsourcing design, where a selected miner aggregates: the task names the epoch seed its
round leaders are drawn from (``Task.leader_seed``); each fog puts its VRF proof on

    alpha = seed ‖ "aggregate/" ‖ round           (``edgefl.consensus.sortition.alpha``)

into its ``FogUpdate`` (its own key: the VRF and the ECDSA keys are one secp256k1 key, as for proof of
credit); the cloud, once the round's updates are in, weighs each fog that sent one by its reputation on
the main chain (``units``), reads off its sortition priority j — its selected sub-users among w of W
units at an expected ``TAU`` — and the fog of highest (j, VRF output) leads (the highest output alone
when nobody is selected, so a round always has a leader).  The cloud records the draw (``LeaderDraw``)
and asks the leader for the round's aggregation; anyone recomputes the draw from the record and the
fogs' certified keys (``check_leader``).

Why nobody picks the leader: the seed was fixed before the round (the closing ``EpochSeed`` of the last
epoch recorded on the main chain, or, before any, a hash of the main chain's genesis: ``epoch_seed``),
a fog's VRF output on it is unique and unknown to anyone else until it reveals it, and the role binds
the round but not the task, so a task owner cannot grind task names against a colluding fog's outputs.
A fog can only withhold its proof (send no update): then it is not drawn, and earns nothing that round.
The cloud is the fallback, not a candidate: it aggregates itself when the leader does not answer or
answers with an aggregation that does not recompute (``edgefl.nodes.leader``).
"""

from __future__ import annotations

from typing import Annotated, Callable, Mapping

from edgefl.codec import MaxLen, Message, Range, SchemaError, message
from edgefl.consensus import sortition
from edgefl.consensus.epoch import EpochSeed
from edgefl.crypto import tagged_hash, vrf
from edgefl.fl.protocol import MAX_PARTIES
from edgefl.fl.selection import weight

GENESIS_TAG = b"edgefl/epoch-genesis/v1"
ROLE = "aggregate/"
TAU = 2  # expected selected units per draw: few rounds without anyone selected, few ties among the selected
UNITS = 100  # weight units of reputation 1 (a reputation below the selection floor counts as the floor)

Name = Annotated[str, MaxLen(128)]


def genesis_seed(genesis_hash: bytes) -> bytes:
    """The seed before any epoch closed: the main chain's genesis block hash, tagged."""
    return tagged_hash(GENESIS_TAG, bytes(genesis_hash))


def epoch_seed(chain) -> bytes:
    """The main chain's current epoch seed: the last recorded ``EpochSeed``'s next seed, else the genesis seed."""
    for _, rec in chain.records(EpochSeed.TYPE, limit=1):
        return rec.unwrap().next_seed
    return genesis_seed(chain.store.block_row(0)[0])


def role(round: int) -> str:
    return f"{ROLE}{round}"


def prove(secret: bytes, seed: bytes, round: int) -> bytes:
    """A fog's claim for ``round``: its VRF proof on the seed and the round (deterministic)."""
    return vrf.prove(secret, sortition.alpha(seed, role(round)))


def units(reputation: float) -> int:
    return round(UNITS * weight(reputation))


@message("fl.leader")
class LeaderDraw(Message):
    """The draw of a round's leader among the fogs that sent an update, recorded on the main chain by the cloud."""

    task: Name
    round: Annotated[int, Range(0, 1 << 20)]
    seed: Annotated[bytes, MaxLen(32)]
    candidates: Annotated[list[Name], MaxLen(MAX_PARTIES)]  # sorted
    proofs: Annotated[list[Annotated[bytes, MaxLen(vrf.PROOF_SIZE)]], MaxLen(MAX_PARTIES)]
    weights: Annotated[list[Annotated[int, Range(1, sortition.MAX_WEIGHT)]], MaxLen(MAX_PARTIES)]
    leader: Name
    tau: Annotated[int, Range(1, 64)] = TAU

    def __post_init__(self):
        if not (len(self.candidates) == len(self.proofs) == len(self.weights)) or not self.candidates:
            raise SchemaError("one proof and one weight per candidate, at least one", field="fl.leader")
        if list(self.candidates) != sorted(set(self.candidates)) or self.leader not in self.candidates:
            raise SchemaError("candidates sorted, once each; the leader one of them", field="fl.leader.candidates")


def _leader(seed: bytes, round: int, claims: Mapping[str, tuple[bytes, int]],
            public_key: Callable[[str], bytes], tau: int) -> tuple[str | None, list[str]]:
    """(the leader, the candidates whose proof does not verify) of ``claims``: member -> (proof, weight)."""
    total = sum(w for _, w in claims.values())
    draws, bad = [], []
    for member, (proof, w) in sorted(claims.items()):
        try:
            sel = sortition.verify(public_key(member), proof, seed, role(round), w, total, min(tau, total), member)
        except (KeyError, ValueError):
            sel = None
        if sel is None:
            bad.append(member)
        else:
            draws.append(sel)
    # the highest priority j, then the larger VRF output: also when nobody is selected (every j = 0)
    return (max(draws).member if draws else None), bad


def draw_leader(task: str, seed: bytes, round: int, claims: Mapping[str, tuple[bytes, int]],
                public_key: Callable[[str], bytes], tau: int = TAU) -> tuple[LeaderDraw | None, list[str]]:
    """The round's draw among ``claims`` whose proof verifies (None if none does), and the ones that do not."""
    leader, bad = _leader(seed, round, claims, public_key, tau)
    if leader is None:
        return None, bad
    good = sorted(m for m in claims if m not in bad)
    return LeaderDraw(task=task, round=round, seed=seed, candidates=good, proofs=[claims[m][0] for m in good],
                      weights=[claims[m][1] for m in good], leader=leader, tau=tau), bad


def check_leader(record: LeaderDraw, public_key: Callable[[str], bytes]) -> bool:
    """A recorded draw is what its fields give: every proof verifies against the candidate's key and the
    leader is the candidate of highest priority."""
    claims = {m: (p, w) for m, p, w in zip(record.candidates, record.proofs, record.weights)}
    leader, bad = _leader(record.seed, record.round, claims, public_key, record.tau)
    return not bad and leader == record.leader
