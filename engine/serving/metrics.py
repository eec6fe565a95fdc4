"""One thread-safe place for the counters and latencies every thread bumps.

Keys are bounded: latencies are kept only for the protocol's ops (anything
else is recorded under ``"other"``), so a client sending random op names
cannot grow memory or the ``stats`` reply.

Each op's latencies are kept twice, both bounded: the last ``reservoir``
samples (``latencies()``: recent p50/p99 for ``stats``) and cumulative counts
per fixed bucket since start (``histograms()``: what ``/metrics`` exports as
a Prometheus histogram, so rates and quantiles over any window can be
computed by the scraper).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque

from interest.engine.serving.requests import OPS as REQUEST_OPS

OPS = tuple(REQUEST_OPS)           # the protocol's ops, as engine.serving.requests parses them
# upper bounds of the latency buckets, in milliseconds (the last bucket, +Inf, is implicit)
LATENCY_BUCKETS_MS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
                      1000.0, 2500.0, 5000.0, 10000.0, 30000.0)


def op_key(op) -> str:
    """The metrics key of an op name: itself when it is a protocol op, else ``other``."""
    return op if isinstance(op, str) and op in OPS else "other"


class _Histogram:
    __slots__ = ("counts", "sum_ms")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)     # per bucket, not cumulative
        self.sum_ms = 0.0


class Metrics:
    def __init__(self, reservoir: int = 2048):
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        keys = (*OPS, "other", "invalid")
        self._latency = {op: deque(maxlen=reservoir) for op in keys}
        self._histograms = {op: _Histogram() for op in keys}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def get(self, name: str) -> int:
        return self._counters.get(name, 0)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def latency(self, op: str, ms: float) -> None:
        if op not in self._latency:
            op = "other"
        self._latency[op].append(ms)          # deque.append is atomic
        bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, ms)
        histogram = self._histograms[op]
        with self._lock:
            histogram.counts[bucket] += 1
            histogram.sum_ms += ms

    def latencies(self) -> dict:
        out = {}
        for op, samples in self._latency.items():
            data = sorted(list(samples))
            if data:
                out[op] = {"n": len(data), "p50_ms": round(data[len(data) // 2], 3),
                           "p99_ms": round(data[min(len(data) - 1, int(len(data) * 0.99))], 3)}
        return out

    def histograms(self) -> dict:
        """Per op with at least one request since start: ``buckets`` (upper bound in
        seconds, cumulative count) ending with ``+inf``, ``sum_s`` and ``count``."""
        with self._lock:
            copies = {op: (list(h.counts), h.sum_ms) for op, h in self._histograms.items()}
        out = {}
        for op, (counts, sum_ms) in copies.items():
            total = sum(counts)
            if not total:
                continue
            running, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS_MS, float("inf")), counts):
                running += n
                buckets.append((bound / 1000, running))
            out[op] = {"buckets": buckets, "sum_s": sum_ms / 1000, "count": total}
        return out
