"""Consensus: VRF sortition and epoch randomness (PBFT and endorsement policies build on them)."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "pbft": ["Replica"],
    "shell": ["PbftProducer"],
    "simnet": ["Sim"],
    "finality": ["ChainFinality", "FfgCall", "HonestVoter", "Vote", "FinalityError"],
    "policy": ["PolicySpec"],
    "proposal": ["ProposalSpec"],
    "evidence": ["Behaviour", "InvalidEvidence", "check_behaviour"],
    "sortition": ["SortitionClaim", "Selection"],
    "epoch": ["EpochError", "EpochChange"],
    "byzantine": ["ByzantineProducer"],
    "votelog": ["VoteLog"],
})
