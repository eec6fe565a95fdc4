"""One thread-safe place for the counters and latencies every thread bumps.

Keys are bounded: latencies are kept only for the protocol's ops (anything
else is recorded under ``"other"``), so a client sending random op names
cannot grow memory or the ``stats`` reply.
"""

from __future__ import annotations

import threading
from collections import deque

from interest.engine.serving.requests import OPS as REQUEST_OPS

OPS = tuple(REQUEST_OPS)           # the protocol's ops, as engine.serving.requests parses them


def op_key(op) -> str:
    """The metrics key of an op name: itself when it is a protocol op, else ``other``."""
    return op if isinstance(op, str) and op in OPS else "other"


class Metrics:
    def __init__(self, reservoir: int = 2048):
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._latency = {op: deque(maxlen=reservoir) for op in (*OPS, "other", "invalid")}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def get(self, name: str) -> int:
        return self._counters.get(name, 0)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def latency(self, op: str, ms: float) -> None:
        samples = self._latency.get(op)
        if samples is None:
            samples = self._latency["other"]
        samples.append(ms)          # deque.append is atomic

    def latencies(self) -> dict:
        out = {}
        for op, samples in self._latency.items():
            data = sorted(list(samples))
            if data:
                out[op] = {"n": len(data), "p50_ms": round(data[len(data) // 2], 3),
                           "p99_ms": round(data[min(len(data) - 1, int(len(data) * 0.99))], 3)}
        return out
