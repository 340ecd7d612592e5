"""Provisioning: a whole site's material (``site``), boot-partition bundles for Raspberry Pi OS
(``bundle``), written into a card image without mounting it (``image``), and the hardened
systemd units the nodes run under (``units``)."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "site": ["Site", "SiteDirectory", "SiteError"],
    "bundle": ["ProvisionError"],
    "image": ["ImageError"],
})
