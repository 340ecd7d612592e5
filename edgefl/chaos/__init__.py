"""Chaos scenarios: faults injected into the real parts, each ending with PASS/FAIL and its figures.

A scenario deploys a site from `edgefl site init` (mTLS brokers rendered from broker/, every node an
`edgefl run` process; ``edgefl.chaos.deploy``), runs a task or a ledger load, injects its faults at
points drawn from ``--seed`` (the same seed, the same points), and then checks the chains alone
(``edgefl.chaos.checks``): nothing a delivered message left is missing (lost) or there twice
(duplicates), and every chain verifies.

    broker-restart   a broker restarted mid-round (a fog's or the cloud's, SIGTERM and back)
    fog-kill         kill -9 of a fog during ledger writes, again and again
    device-kill      kill -9 of a device mid-upload, restarted
    committee        byzantine members of a fog's PBFT committee (equivocating, silent, bad signatures,
                     replays) at n = 4 and 16 during a task
    hosts            the cloud and two fogs as network namespaces over veth pairs, bridged; a fog's link cut
                     mid-round and healed
    main-committee   the main chain kept by PBFT among the cloud and three fogs; a fog killed mid-task

``edgefl chaos NAME [--seed N] [--short]``; ``scripts/chaos`` runs them all.
"""

from __future__ import annotations

import importlib

SCENARIOS = {  # name -> the Scenario class (edgefl.chaos.scenario) that plays it
    "broker-restart": "edgefl.chaos.broker_restart:BrokerRestart",
    "fog-kill": "edgefl.chaos.fog_kill:FogKill",
    "device-kill": "edgefl.chaos.device_kill:DeviceKill",
    "committee": "edgefl.chaos.committee:CommitteeFaults",
    "hosts": "edgefl.chaos.hosts:Hosts",
    "main-committee": "edgefl.chaos.main_committee:MainCommittee",
}


def scenario_class(name: str):
    module, _, cls = SCENARIOS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
