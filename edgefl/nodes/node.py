"""A running node: one MQTT session under a supervisor, answering pings, watching liveness.

Role-specific behaviour (device extraction, fog training and sub-chain, cloud
main chain) is added as services on the same skeleton.
"""

from __future__ import annotations

import asyncio
import logging

from edgefl.runtime.config import Config
from edgefl.runtime.loop import Supervisor
from edgefl.runtime.metrics import METRICS
from edgefl.transport import topics
from edgefl.transport.session import Session

log = logging.getLogger("edgefl.node")


async def watch_liveness(session: Session) -> None:
    async with session.subscribe(topics.pattern(kind="status")) as sub:
        async for rx in sub:
            if rx.envelope.sender != session.node_id:
                log.info("peer %s (%s) is %s", rx.envelope.sender, rx.topic.role, rx.message.state)


async def report_metrics(every_s: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        log.info("metrics", extra={"metrics": METRICS.snapshot()})


async def run_node(cfg: Config, *, stop_after: float | None = None) -> str:
    """Run until SIGINT/SIGTERM (or ``stop_after`` seconds); returns why it stopped."""
    async with Session.from_config(cfg) as session, Supervisor() as sup:
        sup.spawn("liveness", lambda: watch_liveness(session))
        sup.spawn("metrics", report_metrics)
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, sup.stop, "time limit")
        log.info("%s %s/%s running; broker %s:%d", cfg.node.role, cfg.node.site, cfg.node.id,
                 cfg.mqtt.host, cfg.mqtt.port)
        return await sup.wait()
