"""edgefl: asyncio edge runtime for blockchain-secured, hierarchical,
privacy-preserving federated learning on Raspberry-Pi-class devices."""

__version__ = "0.1.0"
