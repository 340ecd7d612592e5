"""`edgefl site init` and `edgefl provision`."""

from __future__ import annotations


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
    p.set_defaults(func=site_init)
    site.set_defaults(func=lambda args: site.print_help() or 2)


def site_init(args) -> int:
    from edgefl.provision.site import SiteDirectory, parse_nodes

    sd = SiteDirectory(args.dir)
    cloud, cloud_host = next(iter(parse_nodes(args.cloud).items())) if args.cloud else (None, None)
    done = sd.init(fogs=parse_nodes(args.fogs), devices=args.devices, cloud=cloud, cloud_host=cloud_host or None,
                   port=args.port, days=args.days, board=args.board)
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
