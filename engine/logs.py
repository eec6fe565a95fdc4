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
