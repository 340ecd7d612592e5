"""`edgefl site init` and `edgefl provision`."""

from __future__ import annotations

import os
from pathlib import Path


def register(sub) -> None:
    site = sub.add_parser("site", help="a whole site's material: PKI, every node's keys, profile, broker, genesis")
    actions = site.add_subparsers(dest="site_cmd", metavar="ACTION")
    p = actions.add_parser("init", help="create a site directory, or add devices to it (re-runnable)")
    p.add_argument("dir", help="the site directory (keep it offline: it holds the root's key)")
    p.add_argument("--fogs", default="", help="fogs as ID[=HOST],… (HOST: what devices connect to; "
                                              "default ID.local); needed the first time")
    p.add_argument("--devices", action="append", default=[], metavar="N|ID,…|FOG=ID,…",
                   help="devices: N in all (dev-1 … dev-N, dealt to the fogs with fewest), or ids at the only "
                        "fog, or ids at FOG (repeatable)")
    p.add_argument("--cloud", help="the cloud as ID[=HOST] (default cloud-1=cloud-1.local)")
    p.add_argument("--port", type=int, help="the brokers' mTLS port (default 8883)")
    p.add_argument("--days", type=int, help="certificate lifetime (default 365)")
    p.add_argument("--board", help="the devices' default board profile (default pi4)")
    p.add_argument("--committee", type=int, help="members of each fog's sub-chain committee, the fog and its "
                   "first devices (default 7; under 4 the fog seals alone; fixed once the site exists)")
    p.add_argument("--epoch-blocks", type=int, help="re-draw each such committee from its members every B blocks "
                   "by VRF sortition, the fog always seated (default 0: never; fixed once the site exists)")
    p.add_argument("--seats", type=int, help="the seats of a re-drawn committee (default 4)")
    p.set_defaults(func=site_init)
    site.set_defaults(func=lambda args: site.print_help() or 2)

    p = sub.add_parser("provision", help="one node of a site as a bundle for its card's boot partition "
                                         "(or a host's folder)")
    p.add_argument("--site", required=True, help="the site directory (`edgefl site init`)")
    p.add_argument("--device", "--node", dest="node", required=True, help="the node id")
    p.add_argument("--profile", dest="board", help="the board's profile: pi4, pi5, pi3bplus, pizero2w, … "
                                                   "(default: the site's board for devices)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="a directory: the card's mounted boot partition, or any folder")
    where.add_argument("--image", help="a Raspberry Pi OS image (.img): written into its FAT boot partition "
                                       "without mounting it (mtools)")
    p.add_argument("--os", choices=["bookworm", "trixie"], help="the card's Raspberry Pi OS: first boot by "
                                                                "firstrun.sh (bookworm) or cloud-init (trixie)")
    p.add_argument("--hostname", default="", help="default: the node id")
    p.add_argument("--admin-user", default="edgefl-admin", help="the login made with --ssh-key")
    p.add_argument("--ssh-key", help="an OpenSSH public key file: key-only SSH for the admin user")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-psk", default=os.environ.get("EDGEFL_WIFI_PSK", ""),
                   help="WPA passphrase (or EDGEFL_WIFI_PSK, kept out of the process list)")
    p.add_argument("--wifi-country", default="GB", help="regulatory domain (ISO 3166 code, default GB)")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--wheel", help="the edgefl wheel to carry (default: built from this source tree)")
    code.add_argument("--index-url", default="", help="carry no wheel: install edgefl==VERSION from this package "
                                                      "index at first boot (e.g. a mirror on the fog)")
    p.set_defaults(func=provision_cmd)


def site_init(args) -> int:
    from edgefl.provision.site import SiteDirectory, parse_nodes

    sd = SiteDirectory(args.dir)
    cloud, cloud_host = next(iter(parse_nodes(args.cloud).items())) if args.cloud else (None, None)
    done = sd.init(fogs=parse_nodes(args.fogs), devices=args.devices, cloud=cloud, cloud_host=cloud_host or None,
                   port=args.port, days=args.days, board=args.board, committee=args.committee,
                   epoch_blocks=args.epoch_blocks, seats=args.seats)
    site = sd.load()
    for node in site.nodes():
        what = "created" if node in done["created"] else "updated" if node in done["updated"] else "unchanged"
        fog = site.fogs.get(node)
        extra = (f"host {fog.host}, devices {', '.join(fog.devices)}" if fog else
                 f"at {site.fog_of(node)}" if site.role(node) == "device" else f"host {site.cloud_host}")
        print(f"{what:9} {site.role(node):6} {node:16} {extra}  {sd.node_dir(node)}")
    print(f"site {sd.path}: {len(site.fogs)} fogs, {len(site.devices())} devices; the root's key is in "
          f"{sd.ca.path} (keep it offline); next: `edgefl provision --site {sd.path} --device ID …`")
    return 0


def provision_cmd(args) -> int:
    from edgefl.provision import bundle

    opts = bundle.Options(os=args.os, hostname=args.hostname, admin_user=args.admin_user,
                          ssh_key=Path(args.ssh_key).read_text().strip() if args.ssh_key else "",
                          wifi_ssid=args.wifi_ssid, wifi_psk=args.wifi_psk, wifi_country=args.wifi_country,
                          wheel=Path(args.wheel) if args.wheel else None, index_url=args.index_url)
    if args.image:
        from edgefl.provision.image import ImageBoot

        boot: bundle.Boot = ImageBoot(args.image)
        where = f"the boot partition of {args.image}"
    else:
        boot = bundle.BootDir(args.out)
        where = args.out
    names = bundle.provision(args.site, args.node, boot, opts, board=args.board)
    first = {"bookworm": "firstrun.sh (from cmdline.txt)", "trixie": "cloud-init (user-data, network-config)",
             None: "none: run edgefl/setup.sh on the host"}[args.os]
    print(f"{args.node}: {len(names)} files into {where}; first boot: {first}")
    if args.os:
        print("flash the image (or put the card in), boot it: the node installs itself, then runs as "
              "edgefl-device.service (journalctl -u edgefl-device)")
    return 0
