"""Device, fog and cloud nodes: small compositions of the runtime, transport, crypto and ledger packages."""
