"""Device, fog and cloud nodes: small compositions of the runtime, transport, crypto and ledger packages."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "node": ["run_node"],
    "site": ["LocalSite"],
    "device": ["DeviceNode"],
    "fog": ["FogNode"],
    "cloud": ["CloudNode"],
})
