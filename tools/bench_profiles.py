"""`interest bench profiles`: do model summaries keep up with the users who are active?

    interest bench profiles [--movielens ../shared/data/ml-100k] [--n 10] [--max-wait-s 600]

Starts a fresh service in a temporary directory with the configured model
(the bundled SmolLM2-135M by default), publishes MovieLens-100K to its ingest
socket over ZeroMQ (items, users, then the ratings in time order, as
`interest publish` does), waits until every event is applied, then watches
the model work until its refresh queue is empty or ``--max-wait-s`` passed.

``coverage``: the share of active users, those with an event in the last
``--window-s`` (default one hour) of *stream* time (the ratings' timestamps),
whose model summary is younger than ``--n`` behaviour events (fewer than N
events since their last profile). N defaults to 10, the number of recent
items a profile prompt shows: a summary younger than 10 events was made from
a window that still overlaps the user's current one. The same figure is
printed for N = 5 and 20 and for wider windows (a day, a week, every user),
over time since the publish ended (``timeline``: seconds, coverage per
window), with the model's queue right after publishing and the generations
it ran.

Prints ONE JSON object. Takes ``--max-wait-s`` plus about a minute of
publishing on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from interest.engine import movielens
from interest.engine.config import load_config

WINDOWS = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0, "all": float("inf")}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="interest bench profiles",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="config file overlaid on the defaults")
    p.add_argument("--movielens", default=str(movielens.DEFAULT_PATH),
                   help="MovieLens-100K folder (default: %(default)s)")
    p.add_argument("--ratings", type=int, default=0,
                   help="publish only the first N ratings (0 = all 100,000; default 0)")
    p.add_argument("--n", type=int, default=10,
                   help="a summary counts when younger than this many events (default 10)")
    p.add_argument("--window-s", type=float, default=3600.0,
                   help="active users: an event in this much stream time before the last "
                        "one (default 3600)")
    p.add_argument("--max-wait-s", type=float, default=600.0,
                   help="stop watching after this long past the publish (default 600)")
    p.add_argument("--poll-s", type=float, default=10.0,
                   help="seconds between coverage samples (default 10)")
    p.add_argument("--target", type=float, default=0.9,
                   help="report when coverage first reaches this (default 0.9)")
    return p.parse_args(argv)


def active_users(ratings: list[dict], window_s: float) -> set[str]:
    """Users with an event within ``window_s`` of the newest event's time."""
    if not ratings:
        return set()
    newest = max(float(r["ts"]) for r in ratings)
    return {r["user"] for r in ratings if float(r["ts"]) >= newest - window_s}


def coverage(states: dict, users: set[str], n: int) -> float | None:
    """Share of ``users`` whose state has a profile fewer than ``n`` events old."""
    if not users:
        return None
    fresh = sum(1 for u in users
                if states[u].profile is not None and states[u].since_profile < n)
    return round(fresh / len(users), 3)


def publish(server, events: list[dict], batch: int = 100, timeout_s: float = 1800.0) -> float:
    """Send ``events`` to the ingest socket, then wait until they are all applied (flush)."""
    from interest.engine.serving.client import Client, Publisher  # noqa: PLC0415
    t0 = time.perf_counter()
    with Client(server.api, timeout=timeout_s) as client:
        before = client.call("stats")["received"]
        with Publisher(server.ingest) as publisher:
            for start in range(0, len(events), batch):
                publisher.send(events[start:start + batch])
        deadline = time.monotonic() + timeout_s
        while client.call("stats")["received"] < before + len(events):
            if time.monotonic() > deadline:
                raise TimeoutError("the service did not take in every event")
            time.sleep(0.5)
        client.call("flush", timeout_ms=int(timeout_s * 1000))
    return time.perf_counter() - t0


def _states(service, users: set[str]) -> dict:
    return {u: service.reader.state_of(u) for u in users}


def _idle(service) -> bool:
    """No user refresh left anywhere. Background work (catalog embeddings, item profiles:
    ``[inference] item_profiles``, which go on for as long as the catalog takes) does not
    count: it runs beside the refreshes being measured, as it does in service."""
    queue = service.profiles.queue()
    depth = service.inference.stats()["queue_depth"]
    return (not queue["waiting"] and not queue["ready"] and not queue["running"]
            and not depth.get("online") and not depth.get("interactive"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from interest.actors.inference import Inference  # noqa: PLC0415 - loads llama.cpp
    from interest.engine.serving.server import Server  # noqa: PLC0415
    data = movielens.load(args.movielens)
    ratings = data.ratings[: args.ratings or None]
    windows = {name: active_users(ratings, w) for name, w in WINDOWS.items()}
    windows["active"] = active_users(ratings, args.window_s)
    config = load_config(args.config, store={"sync": False})
    out: dict[str, Any] = {"events": len(ratings), "n": args.n, "window_s": args.window_s,
                           "active_users": len(windows["active"]),
                           "users_by_window": {k: len(v) for k, v in windows.items()}}
    with tempfile.TemporaryDirectory(prefix="bench-profiles-") as tmp:
        inference = Inference.start(config, Path(tmp) / "cache")
        if not inference.available:
            raise SystemExit(f"interest bench profiles: no model: {inference.reason}")
        server = Server(config, Path(tmp) / "data", ingest="tcp://127.0.0.1:*",
                        api="tcp://127.0.0.1:*", inference=inference)
        try:
            service = server.service
            out["model"] = inference.model_id
            out["publish_s"] = round(publish(server, data.items + data.users + ratings), 1)
            out["after_publish"] = {"scheduler": service.profiles.queue(),
                                    "model_queue": inference.stats()["queue_depth"],
                                    "generations": inference.stats().get("generations", 0)}
            out.update(_watch(service, windows, args))
            stats = inference.stats()
            out["generations"] = stats.get("generations", 0)
            out["tokens_per_s"] = round(stats.get("tokens_per_s", 0.0), 1)
            out["preemptions"] = stats.get("preemptions", 0)
            out["deadline_drops"] = stats.get("deadline_drops", 0)
            out["profiles"] = service.profiles.stats()
            if service.item_profiler is not None:      # its generations are in the counts above
                out["item_profiles"] = service.item_profiler.stats()
        finally:
            server.stop(30)
    return out


def _watch(service, windows: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Sample coverage every ``poll_s`` until the model is idle or ``max_wait_s`` passed."""
    everyone = set().union(*windows.values())
    timeline, reached_at = [], None
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        states = _states(service, everyone)
        sample = {name: coverage(states, users, args.n) for name, users in windows.items()}
        timeline.append({"s": round(elapsed, 1), **sample})
        print(json.dumps(timeline[-1]), file=sys.stderr, flush=True)
        if reached_at is None and (sample["active"] or 0) >= args.target:
            reached_at = round(elapsed, 1)
        idle = _idle(service)
        if idle or elapsed >= args.max_wait_s:
            break
        time.sleep(min(args.poll_s, max(0.0, args.max_wait_s - elapsed)))
    active = windows["active"]
    return {
        "coverage": timeline[-1]["active"],
        "coverage_by_n": {str(n): coverage(states, active, n) for n in (5, 10, 20)},
        "coverage_by_window": {k: v for k, v in timeline[-1].items() if k != "s"},
        "seconds_to_target": reached_at,
        "watched_s": timeline[-1]["s"],
        "drained": idle,
        "timeline": timeline,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args)
    except FileNotFoundError as exc:
        print(f"interest bench profiles: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
