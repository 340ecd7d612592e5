"""hosts: the cloud and two fogs on hosts of their own, joined by Mosquitto bridges; a fog's link cut mid-round.

Three network namespaces joined by veth pairs to a switch on the cloud's host (``edgefl.chaos.netns``):
the cloud at 10.77.0.1, the fogs at 10.77.0.11 and .12, each fog's devices on its host.  Every host
runs its own Mosquitto from the configuration `edgefl site init` rendered (mTLS on 8883 with the site's
certificates, the ACL; the fogs bridged to the cloud's broker at its address), every node an
`edgefl run` process on its host with its profile as written.  The task runs its rounds across them;
one fog verifies a training step the other fog recorded (`edgefl ledger verify-tx`,
Protocol 1: the anchor from the cloud, the proof from the other fog, over both bridges) and audits that
device's steps (`edgefl ledger audit`: the records and the blobs fetched from the other fog, the steps
replayed) — after the task, so its last round also shows that the healed bridges carry it.  In the
last round a seeded fog's link goes down (``ip link set eth0 down`` on its host) a seeded moment after
the fog fetched the round's global model (its devices, done with the round before, are paused with
SIGSTOP until then, so that nothing of the round has happened yet); the fog side goes on (its devices'
releases, the training and aggregation, all on its own host) while its update to the cloud waits in its
broker's bridge queue; the link comes back and the bridge delivers what was queued.  Then every chain holds every
record once.
"""

from __future__ import annotations

import select
import signal
import subprocess
import time

from edgefl import codec
from edgefl.chaos import checks
from edgefl.chaos.deploy import Deployment, die_with_parent
from edgefl.chaos.netns import Network
from edgefl.chaos.scenario import Scenario
from edgefl.chaos.task import TASK, closed, settle, small_task, start_all
from edgefl.fl import Aggregation, FogUpdate
from edgefl.fl.protocol import run_id
from edgefl.ledger import TrainingStep
from edgefl.ml.privacy import PrivacySpend
from edgefl.runtime import StateFile
from edgefl.transport import topics


class Hosts(Scenario):
    name = "hosts"
    summary = ("the cloud and two fogs as network namespaces over veth pairs, each with its own mTLS Mosquitto, "
               "the fogs bridged to the cloud; Protocol 1 and an audit across sites; a fog's link cut mid-round "
               "and healed: nothing lost, nothing duplicated")

    def run(self) -> None:
        rounds = 2 if self.short else 3
        fogs = ({"fog-1": ["dev-1"], "fog-2": ["dev-2"]} if self.short
                else {"fog-1": ["dev-1", "dev-3"], "fog-2": ["dev-2", "dev-4"]})
        with Network("cloud-1", list(fogs)) as net, Deployment(
                self.workdir, fogs, network=net, settings=small_task(rounds),
                per_node={"cloud-1": ["fl.items=128"]}) as dep:
            self.say("  hosts: " + ", ".join(f"{h} {a} ({net.names[h]})" for h, a in net.addresses.items()))
            took = start_all(dep)
            self.say(f"  brokers up and bridged, task recorded after {took:.1f} s")
            tally = self.result.tally
            victim = self.rng.choice(list(fogs))
            with _ModelWatch(dep, victim) as watch:  # from the start: the cut follows the last round's model closely
                for r in range(rounds - 1):
                    if r == rounds - 2:  # its devices, done with this round, pause until the cut (SIGSTOP)
                        dep.wait(lambda: all(self._acked(dep, d, r) for d in fogs[victim]), 240,
                                 f"{victim}'s devices done with round {r}", every=0.01)
                        for d in fogs[victim]:
                            dep.procs[d].kill(signal.SIGSTOP)
                    dep.wait(lambda: closed(dep, r), 240, f"round {r} aggregated on the main chain", every=0.1)
                    self.say(f"  round {r} closed")
                model = watch.until(rounds - 1, timeout=240)
            # a fog fetches the round's model from the cloud as the round opens: once it holds it, the rest of
            # its round (its devices' releases, the training, the aggregation) needs no other site
            cfg = dep.config(victim)
            blob = cfg.path(cfg.ledger.blob_dir) / model.hex()[:2] / model.hex()
            dep.wait(blob.exists, 120, f"{victim} holding round {rounds - 1}'s global model", every=0.005)
            self._cut_mid_round(dep, net, victim, rounds - 1, tally)
            dep.wait(lambda: closed(dep, rounds - 1), 240, "the last round aggregated on the main chain", every=0.1)
            self.say(f"  round {rounds - 1} closed")
            self._across_sites(dep, tally, rounds - 2)
            settle(dep, 60)
            checks.task_records(dep, TASK, range(rounds), tally)
            checks.interlock(dep, tally)
            checks.verify_all(dep, tally)
            self.result.figures["link cuts"] = net.cuts

    @staticmethod
    def _acked(dep: Deployment, device: str, round: int) -> bool:
        cfg = dep.config(device)
        state = StateFile(cfg.path(cfg.fl.state_file)).load({"rounds": {}})
        return bool(state["rounds"].get(str(round), {}).get("acked"))

    def _across_sites(self, dep: Deployment, tally: checks.Tally, round: int) -> None:
        """fog-2's host verifies dev-1's recorded step of ``round`` on fog-1 (Protocol 1) and audits its steps,
        by the CLI under fog-2's own name (beside the running fog-2)."""
        rid = run_id(TASK, round)
        steps = {s.step: txid for txid, rec in dep.records("fog-1", TrainingStep.TYPE, device="dev-1")
                 if (s := rec.unwrap()).task == rid}
        txid = steps[max(steps)].hex()
        deadline, out, tries = time.monotonic() + 90, None, 0
        while time.monotonic() < deadline:  # PENDING until fog-1's anchor of that block is final on main
            out = dep.cli("fog-2", "ledger", "verify-tx", "--chain", "fog-1", "--tx", txid, "--timeout", "20")
            tries += 1
            if out.returncode != 2:
                break
            time.sleep(1.0)
        self.result.figures["Protocol 1 runs"] = tries
        verdict = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-300:]
        tally.check("fog-2 verifies dev-1's step on fog-1 across the bridges (Protocol 1)", out.returncode == 0,
                    verdict)
        self.say(f"  Protocol 1 from fog-2's host of fog-1's tx {txid[:16]}…: {verdict}")
        out = dep.cli("fog-2", "ledger", "audit", "--chain", "fog-1", "--device", "dev-1", "--task", rid,
                      "--steps", "2", "--seed", str(self.seed), "--timeout", "30")
        verdict = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-300:]
        tally.check("fog-2 audits dev-1's steps on fog-1, blobs fetched across the bridges", out.returncode == 0,
                    verdict)
        self.say(f"  audit from fog-2's host of dev-1's steps on fog-1: {verdict}")

    def _cut_mid_round(self, dep: Deployment, net: Network, victim: str, r: int, tally: checks.Tally) -> None:
        """Cut ``victim``'s link a seeded moment after it fetched round ``r``'s global model."""
        delay, hold = self.rng.uniform(0, 0.2), self.rng.uniform(0.5, 2.0)
        time.sleep(delay)
        net.cut(victim)
        self.result.faults += 1
        t0 = time.monotonic()
        for d in dep.fogs[victim]:  # its devices go on: they release to their fog, on its host
            dep.procs[d].kill(signal.SIGCONT)
        released = sum(1 for _, rec in dep.records(victim, PrivacySpend.TYPE)
                       if (s := rec.unwrap()).task == TASK and s.round == r)
        self.say(f"  round {r}: {victim}'s link cut {1000 * delay:.0f} ms after it fetched the round's model "
                 f"({released} of its {len(dep.fogs[victim])} devices had released)")

        def aggregated() -> bool:  # the fog side goes on: everything up to its update is on its own chain
            return any(rec.signer == victim and (a := rec.unwrap()).task == TASK and a.round == r
                       for _, rec in dep.records(victim, Aggregation.TYPE))

        def delivered() -> bool:
            return any((u := rec.unwrap()).fog == victim and u.round == r and u.task == TASK
                       for _, rec in dep.records(dep.cloud, FogUpdate.TYPE))

        dep.wait(aggregated, 120, f"{victim} aggregating round {r} while cut off", every=0.05)
        went_on = time.monotonic() - t0
        time.sleep(hold)
        tally.check(f"{victim} went on while cut off; its update did not reach the cloud", not delivered(),
                    f"round {r} aggregated on its own chain {went_on:.1f} s into the cut; link down "
                    f"{time.monotonic() - t0:.1f} s")
        net.heal(victim)
        t1 = time.monotonic()
        dep.wait(delivered, 180, f"{victim}'s update delivered by the bridge", every=0.05)
        self.result.figures["cut"] = f"{victim} {t1 - t0:.1f} s"
        self.say(f"  link healed after {t1 - t0:.1f} s: {victim}'s queued update on the main chain "
                 f"{time.monotonic() - t1:.1f} s later")


class _ModelWatch:
    """``mosquitto_sub`` on a fog's own broker (as that fog, a reader there): the cloud's retained global
    model as it reaches the fog's host.  Only MQTT: it signs nothing."""

    def __init__(self, dep: Deployment, fog: str):
        tls = dep.host(fog) / "tls"
        self.proc = subprocess.Popen(
            [*dep.prefix(fog), "mosquitto_sub", "-h", "127.0.0.1", "-p", str(dep.ports[fog]), "-q", "1",
             "--cafile", str(tls / "ca.pem"), "--cert", str(tls / f"{fog}.pem"), "--key", str(tls / f"{fog}.key"),
             "-i", f"{fog}-probe", "-t", topics.pattern(node=dep.cloud, kind="model"), "-F", "%x"],
            # unbuffered: select() sees only the pipe, so a line read ahead into a buffer would wait unseen
            # (round 1's model behind round 0's) until the next message came
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            bufsize=0)

    def until(self, round: int, timeout: float) -> bytes:
        """The content id of the global model of ``round`` once it reached the fog's broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("mosquitto_sub on the fog's broker exited")
            wire = bytes.fromhex(line.decode().strip())
            _, start = codec.decode_first(wire)
            msg = codec.decode(wire[start:], codec.Limits(max_size=1 << 20))["msg"]
            if msg["round"] >= round:
                return msg["model"]
        raise TimeoutError(f"round {round}'s global model at the fog's broker: not within {timeout:g} s")

    def __enter__(self) -> "_ModelWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()
