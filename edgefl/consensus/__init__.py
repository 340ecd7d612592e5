"""Consensus: VRF sortition and epoch randomness (PBFT and endorsement policies build on them)."""
