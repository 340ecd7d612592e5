"""A running node: one MQTT session under a supervisor, answering pings, watching liveness,
and the services of its role (``node.role``):

    device   edgefl.nodes.device.DeviceNode   extract, privatise, record the spend, send the batch to its fog
    fog      edgefl.nodes.fog.FogNode         sub-chain; train every device's batch, record it, aggregate
    cloud    edgefl.nodes.cloud.CloudNode     main chain; the task, the global model round by round
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import zlib
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Protocol

from edgefl import codec
from edgefl.crypto import Crl, PkiError, PkiRegistry, identity
from edgefl.fl import AggregationError, attacks, parse_options
from edgefl.ml import Dataset, blas, load_dataset
from edgefl.runtime import METRICS, Config, ConfigError, DataDirLock, Supervisor, metrics, notify
from edgefl.runtime.config import reload_config
from edgefl.transport import Session, topics
from edgefl.transport.mqtt import LinkError
from edgefl.update import service as update

log = logging.getLogger("edgefl.node")


def watched_statuses(cfg: Config) -> list[str]:
    """Whose liveness a node follows: the node above it and the nodes directly below it.

    Never every status of the site: each connect publishes one (retained), so
    N nodes watching all of them is N² deliveries for nothing the node uses.
    """
    if cfg.node.role == "device":
        return [topics.pattern(node=cfg.node.fog, kind="status")] if cfg.node.fog else []
    if cfg.node.role == "fog":
        return [topics.pattern(site=cfg.node.site, role="device", kind="status"),
                topics.pattern(node=cfg.ledger.main_node, kind="status")]
    return [topics.pattern(role="fog", kind="status")]


async def watch_liveness(session: Session, patterns: list[str]) -> None:
    async def watch(pattern: str) -> None:
        async with session.subscribe(pattern) as sub:
            async for rx in sub:
                if rx.envelope.sender != session.node_id:
                    log.info("peer %s (%s) is %s", rx.envelope.sender, rx.topic.role, rx.message.state)

    async with asyncio.TaskGroup() as tg:
        for pattern in patterns:
            tg.create_task(watch(pattern))


async def crl_service(session: Session, registry: PkiRegistry, own_crl: Path | None = None,
                      poll_s: float = 5.0) -> None:
    """Keep revocations current: learn every CA's CRL from the retained ``crl`` topics and, on a CA,
    publish its own CRL file (retained), again whenever `edgefl pki revoke` rewrites it.

    A CRL is trusted for its own signature, whoever relays it; an older or
    badly signed one is refused, logged and counted (``crl_rejected``).
    A CA also closes the broker connections of the nodes its CRL revokes
    (once, and again whenever one of them comes back online, until the broker
    has reloaded its CRL file and refuses it).
    """
    closed: set[str] = set()

    async def shut_out(names: list[str]) -> None:
        for name in names:
            if name in closed and session.peers.get(name, ("",))[0] != "online":
                continue
            closed.add(name)
            session.peers.pop(name, None)  # online again later: a reconnection, closed again
            try:
                await session.close_client(name)
            except (OSError, LinkError) as exc:
                log.warning("cannot close %s's broker connection: %s", name, exc)

    async def publish_own() -> None:
        seen = None
        while True:
            await shut_out(registry.revoked_subjects(session.node_id))
            with contextlib.suppress(FileNotFoundError):
                stat = own_crl.stat()
                if (stat.st_mtime_ns, stat.st_size) != seen:
                    seen = (stat.st_mtime_ns, stat.st_size)
                    try:
                        crl = Crl.from_bytes(own_crl.read_bytes())
                        registry.add_crl(crl, persist=False)
                    except codec.CodecError as exc:
                        log.warning("%s: %s", own_crl, exc)
                        continue
                    except PkiError:
                        continue  # logged and counted by the registry
                    await session.publish("crl", crl, retain=True)
                    log.info("published CRL #%d of %s", crl.number, crl.issuer)
            await asyncio.sleep(poll_s)

    session.expect("crl", Crl)

    async def learn(role: str) -> None:  # only CAs (fogs, cloud nodes) sign CRLs: nobody else's are even read
        async with session.subscribe(topics.pattern(role=role, kind="crl")) as sub:
            async for rx in sub:
                with contextlib.suppress(PkiError):
                    registry.add_crl(rx.message)

    async with asyncio.TaskGroup() as tg:
        if own_crl is not None:
            tg.create_task(publish_own())
        for role in ("fog", "cloud"):
            tg.create_task(learn(role))


async def report_metrics(every_s: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        log.info("metrics", extra={"metrics": METRICS.snapshot()})


def local_data(cfg: Config) -> Dataset:
    """``fl.data`` of this node (at most ``fl.items``); generated digits are seeded by the node id: each differs."""
    return load_dataset(cfg.fl.data, cfg.fl.items, seed=zlib.crc32(cfg.node.id.encode()))


def node_attack(cfg: Config) -> attacks.Attack:
    """The behaviour ``fl.attack`` names (experiments and the demo; "none" by default)."""
    try:
        attack = attacks.make(cfg.fl.attack, **parse_options(cfg.fl.attack_options))
    except (attacks.AttackError, AggregationError) as exc:
        raise ConfigError("fl.attack_options", str(exc)) from None
    if attack.name != "none":
        log.warning("%s behaves maliciously: %s %s", cfg.node.id, attack.name, attack.options())
    return attack


def reload(cfg: Config, session: Session, node) -> None:
    """SIGHUP: learn what changed on disk since the node started — the certificates (or trusted keys) of
    nodes certified since, for its envelopes and its ledger, and whatever its role takes from a reloaded
    profile (a fog its ``fl.devices``) — without a restart. Everything else needs one."""
    try:
        fresh = reload_config(cfg)
    except ConfigError as exc:
        METRICS.inc("reload_failed")
        log.error("reload: the profile does not load, nothing changed: %s", exc)
        return
    registries = [session.verifier.registry]
    ledger = getattr(node, "ledger", None)
    if ledger is not None and ledger.chain.registry not in registries:
        registries.append(ledger.chain.registry)
    learned = sorted({name for r in registries if hasattr(r, "reload") for name in r.reload()})
    changed = node.reload(fresh) if hasattr(node, "reload") else []
    METRICS.inc("reload")
    log.info("reload: learned %s; changed %s", ", ".join(learned) or "no new identities",
             ", ".join(changed) or "no settings")


class Role(Protocol):
    """What ``node.role`` names: built on the node's session, it hands its services to the supervisor."""

    def __init__(self, cfg: Config, session: Session): ...

    @staticmethod
    def check(cfg: Config) -> None:
        """Refuse settings only this role can judge (raise ConfigError), before anything connects."""

    def services(self) -> dict[str, Callable[[], Awaitable]]: ...

    def close(self) -> None: ...

    # optional: ``reload(cfg) -> list[str]``, take what may change at run time from a reloaded profile


ROLES = {"device": "edgefl.nodes.device:DeviceNode", "fog": "edgefl.nodes.fog:FogNode",
         "cloud": "edgefl.nodes.cloud:CloudNode"}


def role_class(role: str) -> type[Role]:
    module, _, name = ROLES[role].partition(":")
    return getattr(importlib.import_module(module), name)


@contextlib.asynccontextmanager
async def running(cfg: Config, *, handle_signals: bool = True) -> AsyncIterator[tuple[Role, Supervisor]]:
    """The node of ``cfg`` with its services running; yields (role node, supervisor). Leaving stops it."""
    cls = role_class(cfg.node.role)
    cls.check(cfg)  # settings only the role can judge: fail before connecting
    if cfg.ml.blas_threads:  # the profile's thread count for numpy's BLAS (ml.threads is the extractor's)
        blas.set_threads(cfg.ml.blas_threads)
    identity.check(cfg)  # its key, certificate and TLS files belong together and to it
    async with DataDirLock(cfg.path("{data_dir}")), Session.from_config(cfg) as session:  # one process per dir
        node = cls(cfg, session)
        try:
            # exit within seconds of SIGTERM: the session's bounded drain, then at most a few seconds more
            async with Supervisor(handle_signals=handle_signals, exit_deadline_s=cfg.mqtt.drain_timeout_s + 5) as sup:
                sup.spawn("liveness", lambda: watch_liveness(session, watched_statuses(cfg)))
                sup.spawn("metrics", report_metrics)
                if cfg.metrics.port:  # Prometheus text format on a local port (off on devices)
                    sup.spawn("metrics-http", lambda: metrics.serve(cfg.metrics.bind, cfg.metrics.port))
                if isinstance(session.verifier.registry, PkiRegistry):
                    own = cfg.path(cfg.security.crl_dir) / f"{cfg.node.id}.crl" if cfg.node.role != "device" else None
                    sup.spawn("crl", lambda: crl_service(session, session.verifier.registry, own))
                for name, service in node.services().items():
                    sup.spawn(name, service)
                for name, service in update.services(cfg, session, node).items():  # signed OTA releases
                    sup.spawn(name, service)
                if handle_signals:  # `systemctl reload`: new certificates and settings without a restart
                    loop = asyncio.get_running_loop()
                    loop.add_signal_handler(signal.SIGHUP, reload, cfg, session, node)
                try:
                    yield node, sup
                finally:
                    if handle_signals:
                        loop.remove_signal_handler(signal.SIGHUP)
        finally:
            node.close()


async def run_node(cfg: Config, *, stop_after: float | None = None) -> str:
    """Run until SIGINT/SIGTERM (or ``stop_after`` seconds); returns why it stopped."""
    async with running(cfg) as (_, sup):
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, sup.stop, "time limit")
        if (interval := notify.watchdog_interval()) is not None:
            sup.spawn("watchdog", lambda: notify.watchdog(interval))
        log.info("%s %s/%s running; broker %s:%d", cfg.node.role, cfg.node.site, cfg.node.id,
                 cfg.mqtt.host, cfg.mqtt.port)
        notify.notify("READY=1", f"STATUS={cfg.node.role} {cfg.node.id} running")  # systemd Type=notify
        reason = await sup.wait()
        notify.notify("STOPPING=1", f"STATUS=stopping: {reason}")
        return reason
