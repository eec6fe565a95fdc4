"""Answers the router puts together from every partition's: ``ping``, ``stats``, ``flush``.

Each function takes the partitions' results in partition order, each a reply
map or an ``InterestError`` (a partition that is down or did not answer).
"""

from __future__ import annotations

from interest.engine.errors import InterestError

#: numeric stats summed across partitions (nested maps are summed key by key)
SUMMED = ("applied", "duplicates", "head", "live_actors", "activations", "passivations",
          "snapshots", "threads", "rss_mb", "counters", "writer", "dead_letters")
#: of each projection's stats, what adds up across partitions (the rest is per partition)
PROJECTION_SUMS = ("position", "head", "lag_events")


def entries(results: list) -> list[dict]:
    """One entry per partition: its reply, or ``{partition, ok: false, error}``."""
    out = []
    for index, result in enumerate(results):
        if isinstance(result, InterestError):
            out.append({"partition": index, "ok": False, "error": result.to_wire()})
        else:
            body = {k: v for k, v in result.items() if k not in ("rid", "ok")}
            out.append({"partition": index, "ok": True, **body})
    return out


def down(results: list) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, InterestError)]


def combine_ping(results: list, version: int, uptime_s: float) -> dict:
    """The router answers for itself; each partition's answer (or error) is listed."""
    return {"version": version, "uptime_s": uptime_s, "partitions": entries(results),
            "partitions_down": down(results)}


def combine_flush(results: list) -> dict | InterestError:
    """``applied`` summed once every partition has flushed; else the first error."""
    for result in results:
        if isinstance(result, InterestError):
            return result
    return {"applied": sum(r.get("applied", 0) for r in results)}


def combine_stats(results: list, router: dict) -> dict:
    """Totals summed over the partitions that answered, each partition's own stats,
    and the router's. ``received``/``rejected`` are the router's: events it took in
    (counted once, though a catalog event goes to every partition) and rejected,
    itself or as the partitions answered."""
    answered = [r for r in results if not isinstance(r, InterestError)]
    out: dict = {key: sum_numbers([r.get(key) for r in answered]) for key in SUMMED}
    names = dict.fromkeys(name for r in answered for name in r.get("projections", {}))
    out["projections"] = {name: {key: sum_numbers([r["projections"].get(name, {}).get(key)
                                                  for r in answered])
                                 for key in PROJECTION_SUMS}
                          for name in names}
    out["catalog_items"] = max((r.get("catalog_items", 0) for r in answered), default=0)
    counters = router["counters"]
    by_partitions = counters.get("rejected_by_partitions", 0)
    out["received"] = counters.get("received", 0) - by_partitions
    out["rejected"] = counters.get("rejected", 0) + by_partitions
    out["latency"] = router["latency"]
    out["partitions"] = entries(results)
    out["partitions_down"] = down(results)
    out["router"] = router
    return out


def sum_numbers(values: list):
    """Sum numbers, or maps of numbers key by key (recursively); None and anything
    else is skipped."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, dict) for v in present):
        keys = dict.fromkeys(k for v in present for k in v)
        return {k: sum_numbers([v.get(k) for v in present]) for k in keys}
    numbers = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers:
        return sum(numbers)
    return present[0] if present else None

