"""Signed over-the-air updates through the ledger.

    cloud   `edgefl update publish WHEEL`: the wheel into its blob store, a signed ``SoftwareRelease``
            record (package, version, the wheel's SHA-256, size, file name) into its outbox; the running
            cloud records it on the main chain and announces it (retained ``release`` topic)
    fog     checks the record's signature, mirrors the wheel from the cloud (digest-checked), then
            relays the announcement on its own ``release`` topic: its devices only ever hear of a
            release whose wheel it can serve
    device  checks the record again, fetches the wheel from its fog (digest-checked) and stages it
            in its data directory (``update/pending.json``)
    root    `edgefl update apply` (``edgefl-update.service``, started by ``edgefl-update.path`` when
            the agent stages a release): checks record and wheel a third time, installs the wheel into a
            fresh venv beside the running one, switches ``/opt/edgefl/venv`` to it and restarts the agent;
            if the new one is not READY (sd_notify) within the watchdog window it switches back

The agent never writes the code it runs: it stages; root installs. Who may
release is the main chain's node (``ledger.main_node``), checked against
the site's key registry like every record; a release is installed only if
it is newer than the running version and has not been rolled back before.
"""
