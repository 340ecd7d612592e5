"""Keys, signatures, signed envelopes and hashing (native hot paths with pure twins)."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "keys": ["SigningKey", "VerifyingKey", "KeyFileError", "load_public", "save_public"],
    "envelope": ["Envelope", "Signer", "Verifier", "KeyRegistry", "StaticKeyRegistry", "DirectoryKeyRegistry",
                 "SequenceCounter", "Rejected", "IdentityRejected"],
    "hashing": ["tagged_hash", "merkle_root", "merkle_path", "merkle_verify", "MerkleFrontier"],
    "pki": ["Certificate", "Crl", "PkiError", "PkiRegistry", "issue"],
    "vrf": ["VrfProofError", "prove", "verify", "proof_to_hash"],
})
