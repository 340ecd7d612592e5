"""Logging set-up: human-readable lines, or JSON lines for devices shipping logs elsewhere."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup_logging(level: str | int = "INFO", json_lines: bool = False, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


class RateLimited:
    """Log at most ``per_second`` records per key; the rest are counted and summarised.

    A flood of bad messages must not turn into a flood of log lines on an SD card.
    """

    def __init__(self, logger: logging.Logger, per_second: float = 10.0):
        self.logger = logger
        self.per_second = per_second
        self._window: dict[str, tuple[float, int, int]] = {}

    def warning(self, key: str, msg: str, *args: object, **extra: Any) -> None:
        now = time.monotonic()
        start, shown, suppressed = self._window.get(key, (now, 0, 0))
        if now - start >= 1.0:
            if suppressed:
                self.logger.warning("%d more %s messages suppressed", suppressed, key)
            start, shown, suppressed = now, 0, 0
        if shown < self.per_second:
            self.logger.warning(msg, *args, extra=extra or None)
            shown += 1
        else:
            suppressed += 1
        self._window[key] = (start, shown, suppressed)
