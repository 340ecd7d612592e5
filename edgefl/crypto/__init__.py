"""Keys, signatures, signed envelopes and hashing (native hot paths with pure twins)."""
