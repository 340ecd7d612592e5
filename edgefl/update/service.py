"""Each role's part in an update, a service of the running node (``services(cfg, session, node)``).

* cloud: records what `edgefl update publish` left in ``update/outbox`` on the main chain, then
  announces it (retained ``release``); at start it announces the latest release the chain holds.
* fog: relays the cloud's announcement once it holds the wheel, so its devices can fetch it here.
* device: stages a newer release with its wheel for root to install (``edgefl.update.apply``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from edgefl.ledger import BlobStore, LedgerError
from edgefl.ledger.blobs import fetch
from edgefl.ledger.records import SoftwareRelease
from edgefl.runtime import METRICS, Backoff, Config, retry
from edgefl.transport import RemoteError, RequestTimeout, Session, topics
from edgefl.update.release import ReleaseError, ReleaseNotice, UpdateState, verify_release, version_key

log = logging.getLogger("edgefl.update")
RETRY_S = (0.5, 30.0)
OUTBOX_POLL_S = 2.0


def outbox(cfg: Config) -> Path:
    return cfg.path("{data_dir}/update/outbox")


def services(cfg: Config, session: Session, node) -> dict:
    """The update service of ``node`` (a CloudNode, FogNode or DeviceNode), by name."""
    role = cfg.node.role
    if role == "cloud":
        return {"update": lambda: announce(cfg, session, node.ledger)}
    if role == "fog":
        return {"update": lambda: relay(cfg, session, node.blobs)}
    return {"update": lambda: stage(cfg, session, node.blobs)}


def _refused(exc: ReleaseError, sender: str) -> None:
    METRICS.inc("update_refused", reason=exc.reason)
    log.warning("release from %s refused: %s", sender, exc)


async def _fetch(session: Session, peer: str, rel: SoftwareRelease, blobs: BlobStore) -> bytes:
    def later(exc: BaseException, delay: float) -> None:
        log.info("wheel of %s %s not available from %s yet: %s", rel.package, rel.version, peer, exc)

    wheel = await retry(lambda: fetch(session, peer, rel.wheel, blobs),  # the content id is the wheel's SHA-256
                        retry_on=(RemoteError, RequestTimeout, LedgerError, ConnectionError), on_retry=later,
                        backoff=Backoff(*RETRY_S))
    assert wheel is not None  # no deadline: fetched, or the task is cancelled
    return wheel


async def _announcements(session: Session, node: str, signers: list[str]):
    """Every verified, newer announcement on ``node``'s release topic: (notice, release)."""
    newest = None
    async with session.subscribe(topics.pattern(node=node, kind="release")) as sub:
        async for rx in sub:
            if not isinstance(rx.message, ReleaseNotice):
                continue
            try:
                rel = verify_release(rx.message.tx, session.verifier.registry, signers)
            except ReleaseError as exc:
                _refused(exc, rx.envelope.sender)
                continue
            if newest is not None and version_key(rel.version) <= version_key(newest):
                continue  # a stale retained copy, or the same one again
            newest = rel.version
            yield rx.message, rel


# --------------------------------------------------------------------------- cloud


async def announce(cfg: Config, session: Session, ledger) -> None:
    box = outbox(cfg)
    latest = await ledger.call(_latest, ledger.chain)
    if latest is not None:
        await session.publish("release", latest, retain=True)
    while True:
        for path in sorted(box.glob("*.tx")) if box.exists() else []:
            await _record(cfg, session, ledger, path)
        await asyncio.sleep(OUTBOX_POLL_S)


def _latest(chain) -> ReleaseNotice | None:
    """The newest release on the main chain (by version), as announced."""
    best = None
    for txid, rec in chain.records(SoftwareRelease.TYPE, limit=256):
        height, _, raw = chain.store.tx(txid)
        version = rec.unwrap().version
        if best is None or version_key(version) > version_key(best[0]):
            best = (version, ReleaseNotice(raw, height))
    return best[1] if best else None


async def _record(cfg: Config, session: Session, ledger, path: Path) -> None:
    raw = path.read_bytes()
    done = path.parent.parent / "published"
    try:
        rel = verify_release(raw, session.verifier.registry, [cfg.node.id])
        receipt = await ledger.submit(raw)
    except (ReleaseError, LedgerError) as exc:
        METRICS.inc("update_refused", reason=getattr(exc, "reason", "invalid"))
        log.error("release %s not recorded: %s (moved to %s)", path.name, exc, done)
        done.mkdir(parents=True, exist_ok=True)
        path.rename(done / (path.name + ".refused"))
        return
    done.mkdir(parents=True, exist_ok=True)
    path.rename(done / path.name)
    latest = await ledger.call(_latest, ledger.chain)  # announce the newest, which may be an earlier one
    await session.publish("release", latest or ReleaseNotice(raw, receipt.height), retain=True)
    METRICS.inc("update_released")
    log.info("release %s %s recorded in main block %d and announced", rel.package, rel.version, receipt.height)


# --------------------------------------------------------------------------- fog


async def relay(cfg: Config, session: Session, blobs: BlobStore) -> None:
    cloud = cfg.ledger.main_node
    async for notice, rel in _announcements(session, cloud, [cloud]):
        await _fetch(session, cloud, rel, blobs)  # mirror it first: its devices fetch it from here
        await session.publish("release", notice, retain=True)
        log.info("release %s %s mirrored from %s and relayed", rel.package, rel.version, cloud)


# --------------------------------------------------------------------------- device


async def stage(cfg: Config, session: Session, blobs: BlobStore) -> None:
    state = UpdateState(cfg.path("{data_dir}"))
    async for notice, rel in _announcements(session, cfg.node.fog, [cfg.ledger.main_node]):
        if not state.wanted(rel):
            log.info("release %s %s: nothing to do (running %s)", rel.package, rel.version, state.current())
            continue
        wheel = await _fetch(session, cfg.node.fog, rel, blobs)
        try:
            state.stage(rel, notice.tx, wheel)
        except ReleaseError as exc:
            _refused(exc, cfg.node.fog)
            continue
        finally:
            with contextlib.suppress(OSError):
                blobs.path(rel.wheel).unlink()  # staged beside its record; the store need not keep it
        METRICS.inc("update_staged")
        log.info("release %s %s staged for installation (running %s)", rel.package, rel.version, state.current())
