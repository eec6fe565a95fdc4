"""``/metrics``: the service's own figures as Prometheus metric families.

``ServiceCollector`` is a ``prometheus_client`` custom collector: at each
scrape it reads ``service.stats()``, the latency histograms of
``service.metrics`` and the HTTP side's counts, and turns them into metric
families. Nothing is counted twice: the service keeps its counters as it
always has (``stats`` shows the same numbers), the exporter only renames and
labels them. Every family is prefixed ``interest_``; ``prometheus_client``'s
own ``ProcessCollector`` adds the usual ``process_*`` families (CPU, RSS, open
files).

Families (labels in braces):

- ingest: ``interest_ingest_events_total{outcome}`` (``accepted``: valid and
  new, handed to the writer; ``duplicate``; ``rejected``: failed validation),
  ``interest_events_applied_total`` (applied by the user-state projection),
  ``interest_writer_*`` (commits, committed events, queue and pending events);
- api: ``interest_api_requests_total{op}``, ``interest_api_errors_total{code}``,
  ``interest_api_request_duration_seconds{op}`` (histogram since start),
  ``interest_api_latency_seconds{op,quantile}`` (p50/p99 of the last requests);
- log and projections: ``interest_head``, ``interest_projection_position``,
  ``..._lag_events``, ``..._lag_seconds`` ``{projection}``, dead letters;
- actors: ``interest_live_actors``, activations, passivations;
- model: ``interest_model_available``, ``interest_model_queue_depth{priority}``,
  ``interest_model_tokens_per_second``, ``interest_model_in_flight``,
  ``interest_model_<counter>_total``, ``interest_cache_hit_ratio{cache}``,
  ``interest_profiles_<counter>_total`` (the profile scheduler),
  ``interest_item_profiles_<counter>_total`` and ``interest_item_profiles_{queued,
  in_flight,outstanding,waiting_embed}`` (the item profiler);
- recommender: ``interest_fusion_weight{segment,source}``;
- process: ``interest_rss_bytes``, ``interest_threads``, ``interest_up``,
  ``interest_ready``, ``interest_uptime_seconds``;
- HTTP: ``interest_http_responses_total{status}``, in progress, connections,
  refused requests and connections;
- every other ``stats.counters`` entry ``NAME`` as ``interest_NAME_total``
  (names that others add later appear without touching this file).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

# stats.counters shown in a labelled family of their own (not again as interest_NAME_total)
INGEST_OUTCOMES = {"duplicates": "duplicate", "rejected": "rejected"}
OWN_COUNTERS = {"received", "applied", "duplicates", "rejected"}
MODEL_COUNTERS = ("tokens", "generations", "generation_s", "completed", "errors",
                  "preemptions", "deadline_drops", "coalesced", "tokens_wasted", "embedded",
                  "unavailable")
CACHES = {"profile": "profile_hit_rate", "embed": "embed_hit_rate"}
#: item profiler sizes (the rest of its stats are counters)
ITEM_PROFILE_GAUGES = frozenset({"queued", "in_flight", "outstanding", "waiting_embed"})


def metric_name(name: str) -> str:
    """A stats key as a metric name part: anything outside [a-zA-Z0-9_] becomes ``_``."""
    out = re.sub(r"[^a-zA-Z0-9_]", "_", str(name))
    return f"_{out}" if out[:1].isdigit() else out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class _Families:
    """Families by name; a name is declared once (a second declaration with another
    type is ignored, so a stray counter name can never break the exposition)."""

    def __init__(self):
        self.by_name: dict[str, Metric] = {}

    def _family(self, cls, name: str, doc: str, labels: tuple[str, ...]) -> Metric | None:
        family = self.by_name.get(name)
        if family is None:
            family = cls(name, doc, labels=list(labels))
            self.by_name[name] = family
        elif not isinstance(family, cls) or tuple(family._labelnames) != labels:
            return None
        return family

    def gauge(self, name: str, doc: str, value: Any, **labels) -> None:
        self._add(GaugeMetricFamily, name, doc, value, labels)

    def counter(self, name: str, doc: str, value: Any, **labels) -> None:
        self._add(CounterMetricFamily, name, doc, value, labels)

    def _add(self, cls, name: str, doc: str, value: Any, labels: dict) -> None:
        number = _number(value)
        if number is None:
            return
        family = self._family(cls, name, doc, tuple(labels))
        if family is not None:
            family.add_metric([str(v) for v in labels.values()], number)

    def histogram(self, name: str, doc: str, buckets: list, sum_value: float, **labels) -> None:
        family = self._family(HistogramMetricFamily, name, doc, tuple(labels))
        if family is not None:
            family.add_metric([str(v) for v in labels.values()],
                              [("+Inf" if bound == float("inf") else repr(float(bound)), count)
                               for bound, count in buckets], sum_value)


def families(stats: dict, histograms: dict, http: dict | None = None,
             ready: bool | None = None, uptime_s: float | None = None) -> list[Metric]:
    """The metric families of one ``stats()`` reply (and the HTTP side's counts)."""
    m = _Families()
    m.gauge("interest_up", "1 while the service answers", 1)
    m.gauge("interest_ready", "1 when /readyz answers 200", ready)
    m.gauge("interest_uptime_seconds", "seconds since the service started", uptime_s)
    _ingest(m, stats)
    _api(m, stats, histograms)
    _log(m, stats)
    _model(m, stats.get("inference") or {})
    fusion = ((stats.get("recommender") or {}).get("fusion") or {}).get("segments") or {}
    for segment, weights in fusion.items():
        for source, weight in (weights or {}).items():
            m.gauge("interest_fusion_weight", "source weight used for a user segment",
                    weight, segment=segment, source=source)
    if stats.get("rss_mb") is not None:
        m.gauge("interest_rss_bytes", "resident memory of the service process",
                int(stats["rss_mb"] * 2**20))
    m.gauge("interest_threads", "Python threads in the service process", stats.get("threads"))
    m.gauge("interest_last_gc_seconds", "duration of the last scheduled full collection",
            (stats.get("last_gc_ms") or 0) / 1000)
    if http is not None:
        _http(m, http)
    for name, value in sorted((stats.get("counters") or {}).items()):
        if name in OWN_COUNTERS or name.startswith(("op.", "error.")) or \
                f"interest_{metric_name(name)}" in m.by_name:
            continue
        m.counter(f"interest_{metric_name(name)}", f"service counter {name} (stats.counters)",
                  value)
    return list(m.by_name.values())


def _ingest(m: _Families, stats: dict) -> None:
    counters = stats.get("counters") or {}
    doc = ("events that reached the service, by outcome (accepted: valid and new; "
           "duplicate: an id already in its stream; rejected: failed validation)")
    received, duplicates = counters.get("received", 0), counters.get("duplicates", 0)
    m.counter("interest_ingest_events", doc, max(0, received - duplicates), outcome="accepted")
    for key, outcome in INGEST_OUTCOMES.items():
        m.counter("interest_ingest_events", doc, counters.get(key, 0), outcome=outcome)
    m.counter("interest_events_applied", "events applied by the user-state projection",
              counters.get("applied", 0))
    writer = stats.get("writer") or {}
    m.counter("interest_writer_commits", "group commits", writer.get("commits"))
    m.counter("interest_writer_events", "events committed (duplicates included)",
              writer.get("events"))
    m.counter("interest_writer_failed_commits", "group commits that failed", writer.get("failed"))
    m.gauge("interest_writer_queue_jobs", "jobs waiting for the writer", writer.get("queue"))
    m.gauge("interest_writer_pending_events", "events waiting to be committed",
            writer.get("pending_events"))


def _api(m: _Families, stats: dict, histograms: dict) -> None:
    for name, value in sorted((stats.get("counters") or {}).items()):
        if name.startswith("op."):
            m.counter("interest_api_requests", "api requests handled, by op", value,
                      op=name[3:])
        elif name.startswith("error."):
            m.counter("interest_api_errors", "api requests answered with an error, by code",
                      value, code=name[6:])
    for op, h in sorted(histograms.items()):
        m.histogram("interest_api_request_duration_seconds",
                    "api request latency since start, by op (ZeroMQ and HTTP)",
                    h["buckets"], h["sum_s"], op=op)
    for op, lat in sorted((stats.get("latency") or {}).items()):
        for quantile, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
            if lat.get(key) is not None:
                m.gauge("interest_api_latency_seconds",
                        "api latency percentiles over the last requests, by op",
                        lat[key] / 1000, op=op, quantile=quantile)


def _log(m: _Families, stats: dict) -> None:
    m.gauge("interest_head", "position of the last committed entry of the log",
            stats.get("head"))
    for name, p in sorted((stats.get("projections") or {}).items()):
        m.gauge("interest_projection_position", "log position a projection has applied",
                p.get("position"), projection=name)
        m.gauge("interest_projection_lag_events", "entries a projection is behind the head",
                p.get("lag_events"), projection=name)
        m.gauge("interest_projection_lag_seconds",
                "age of the oldest entry a projection has not applied", p.get("lag_s"),
                projection=name)
    dead = stats.get("dead_letters") or {}
    m.gauge("interest_dead_letters", "entries in the dead-letter table", dead.get("total"))
    for name, n in sorted((dead.get("by_projection") or {}).items()):
        m.counter("interest_projection_dead_letters",
                  "entries a projection could not apply, since start", n, projection=name)
    m.gauge("interest_live_actors", "user actors in memory", stats.get("live_actors"))
    m.counter("interest_actor_activations", "user actors activated", stats.get("activations"))
    m.counter("interest_actor_passivations", "user actors passivated",
              stats.get("passivations"))
    m.gauge("interest_catalog_items", "items in the catalog", stats.get("catalog_items"))


def _model(m: _Families, inference: dict) -> None:
    m.gauge("interest_model_available", "1 when a language model is loaded",
            bool(inference.get("available")))
    m.gauge("interest_model_queued", "model jobs waiting, all priorities",
            inference.get("queued"))
    for priority, depth in sorted((inference.get("queue_depth") or {}).items()):
        m.gauge("interest_model_queue_depth", "model jobs waiting, by priority", depth,
                priority=priority)
    m.gauge("interest_model_in_flight", "model jobs running", inference.get("in_flight"))
    m.gauge("interest_model_tokens_per_second", "generated tokens per second (recent)",
            inference.get("tokens_per_s"))
    for key in MODEL_COUNTERS:
        m.counter(f"interest_model_{key}", f"inference counter {key}", inference.get(key))
    for cache, key in CACHES.items():
        m.gauge("interest_cache_hit_ratio", "share of lookups answered from a cache",
                inference.get(key), cache=cache)
    for name, value in sorted((inference.get("profiles") or {}).items()):
        m.counter(f"interest_profiles_{metric_name(name)}", f"profile scheduler counter {name}",
                  value)
    for name, value in sorted((inference.get("item_profiles") or {}).items()):
        if name in ITEM_PROFILE_GAUGES:
            m.gauge(f"interest_item_profiles_{name}", f"item profiles {name}", value)
        else:
            m.counter(f"interest_item_profiles_{metric_name(name)}",
                      f"item profiler counter {name}", value)


def _http(m: _Families, http: dict) -> None:
    m.gauge("interest_http_in_progress", "HTTP requests being handled", http.get("in_progress"))
    m.gauge("interest_http_connections", "open HTTP connections", http.get("connections"))
    for status, n in sorted((http.get("responses") or {}).items()):
        m.counter("interest_http_responses", "HTTP responses by status", n, status=status)
    m.counter("interest_http_refused_requests", "HTTP requests refused (too many in progress)",
              http.get("refused_requests"))
    m.counter("interest_http_refused_connections", "HTTP connections refused (too many open)",
              http.get("refused_connections"))


class ServiceCollector(Collector):
    """Reads the figures at every scrape: ``read()`` returns the keyword arguments of
    ``families`` (stats, histograms, http, ready, uptime_s)."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from families(**self.read())
