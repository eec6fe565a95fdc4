"""Warnings that cannot flood the log: at most ``burst`` per ``period_s`` per message
format, then one line saying how many were suppressed."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, burst: int = 10, period_s: float = 10.0):
        self.logger = logger
        self.burst = burst
        self.period_s = period_s
        self._lock = threading.Lock()
        self._windows: dict[str, list] = {}     # format -> [window start, logged, suppressed]

    def warning(self, fmt: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(fmt)
            if window is None or now - window[0] >= self.period_s:
                suppressed = window[2] if window else 0
                window = self._windows[fmt] = [now, 0, 0]
                if suppressed:
                    self.logger.warning("%d more like %r were not logged in the last %.0f s",
                                        suppressed, fmt, self.period_s)
            if window[1] >= self.burst:
                window[2] += 1
                return
            window[1] += 1
        self.logger.warning(fmt, *args)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (epoch seconds), level, logger, msg, and the
    ``extra={...}`` fields a call passes; an exception goes in ``exc``."""

    _PLAIN = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        import json  # noqa: PLC0415

        out = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._PLAIN})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """The process's root logger: ``fmt`` "text" (human lines) or "json" (one object a line)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
