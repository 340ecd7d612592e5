"""Provisioning: a whole site's material (``site``), boot-partition bundles for Raspberry Pi OS
(``bundle``), written into a card image without mounting it (``image``), and the hardened
systemd units the nodes run under (``units``)."""
