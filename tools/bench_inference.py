"""Benchmark of the inference actor with the real bundled model.

    .venv/bin/python -m tools.bench_inference [--online 8] [--background-depth 6] ...

Prints ONE JSON object:

    online_p50_idle_ms, online_p99_idle_ms   online profile refreshes, actor otherwise idle
    online_p99_saturated_ms                  online requests while the actor is flooded with
                                             background refreshes (priority inbox)
    fifo_online_p99_saturated_ms             the same requests with a plain FIFO inbox
    tokens_per_s                             generated tokens / wall time through the actor
                                             (queueing, summary embedding, cache writes included)
    raw_tokens_per_s                         the same prompts in a bare llama.cpp loop
    cache_hit_rate                           hit rate when the same requests are repeated

Each measurement is a function ``(Context) -> dict`` in ``MEASUREMENTS``; add
one more by appending to that list (or passing ``measurements=`` to
``run``). Percentiles over few samples are rough: raise ``--online`` for
tighter numbers. The default run takes about 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interest.actors.inference import Inference, ProfileRequest, ProfileResult, deadline_in
from interest.engine.llm import prompts
from interest.engine.config import load_config
from interest.tools import bench_remote

VOCAB = (
    "action", "adventure", "animation", "children", "comedy", "crime", "documentary", "drama",
    "fantasy", "film-noir", "horror", "musical", "mystery", "romance", "sci-fi", "thriller",
    "war", "western",
)
CATALOG = (
    ("Star Wars (1977)", ("action", "adventure", "sci-fi", "war")),
    ("Alien (1979)", ("horror", "sci-fi", "thriller")),
    ("Blade Runner (1982)", ("film-noir", "sci-fi")),
    ("Toy Story (1995)", ("animation", "children", "comedy")),
    ("The Lion King (1994)", ("animation", "children", "musical")),
    ("Fargo (1996)", ("crime", "drama", "thriller")),
    ("Casablanca (1942)", ("drama", "romance", "war")),
    ("Pulp Fiction (1994)", ("crime", "drama")),
    ("Sleepless in Seattle (1993)", ("comedy", "romance")),
    ("The Godfather (1972)", ("action", "crime", "drama")),
    ("Unforgiven (1992)", ("western",)),
    ("Hoop Dreams (1994)", ("documentary",)),
    ("The Wizard of Oz (1939)", ("adventure", "children", "drama", "musical")),
    ("Vertigo (1958)", ("mystery", "thriller")),
    ("Braveheart (1995)", ("action", "drama", "war")),
    ("Scream (1996)", ("horror", "thriller")),
    ("Aladdin (1992)", ("animation", "children", "comedy", "musical")),
    ("The Usual Suspects (1995)", ("crime", "thriller")),
    ("Jurassic Park (1993)", ("action", "adventure", "sci-fi")),
    ("Groundhog Day (1993)", ("comedy", "romance")),
    ("Heat (1995)", ("action", "crime", "thriller")),
    ("Dances with Wolves (1990)", ("adventure", "drama", "western")),
    ("The Princess Bride (1987)", ("action", "adventure", "comedy", "romance")),
    ("Psycho (1960)", ("horror", "mystery", "thriller")),
)
EVENT_TYPES = ("view", "click", "rating", "purchase")


def user_inputs(name: str, seed: int) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    """A deterministic small history for one synthetic user."""
    rng = random.Random(f"{seed}:{name}")
    picks = rng.sample(range(len(CATALOG)), rng.randint(3, 6))
    items = tuple(
        {"item": str(i), "title": CATALOG[i][0], "tags": list(CATALOG[i][1]), "type": rng.choice(EVENT_TYPES)}
        for i in picks
    )
    queries = tuple(rng.sample(("space", "heist", "cartoon", "love story", "cowboys", "scary"), rng.randint(0, 2)))
    return items, queries


@dataclass
class Context:
    config: dict
    args: argparse.Namespace
    tmp: str
    notes: dict[str, Any] = field(default_factory=dict)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _wait_profile(inf: Inference, user: str, items, queries, priority: str, timeout_s: float) -> ProfileResult:
    return inf.profile(user, items, queries, VOCAB, priority=priority, timeout_s=timeout_s)


# -- measurements ------------------------------------------------------------


def _timed_online(inf: Inference, ctx: Context, prefix: str, n: int, timeout_s: float,
                  gap_s: float) -> list[float]:
    """Latencies (ms) of ``n`` online refreshes of distinct users, one after another."""
    lat = []
    for i in range(n):
        items, queries = user_inputs(f"{prefix}-{i}", ctx.args.seed)
        t0 = time.perf_counter()
        _wait_profile(inf, f"{prefix}-{i}", items, queries, "online", timeout_s)
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap_s)
    return lat


def measure_idle(ctx: Context) -> dict[str, Any]:
    """Online refreshes of distinct users, one at a time, nothing else running."""
    inf = Inference.start(ctx.config, None)
    try:
        _wait_profile(inf, "warmup", *user_inputs("warmup", ctx.args.seed), "online", 120)
        lat = _timed_online(inf, ctx, "idle", ctx.args.online, 120, gap_s=0.0)
        ctx.notes["model"] = inf.model_id
        ctx.notes["load_s"] = round(inf.load_s, 3)
    finally:
        inf.stop(timeout=30)
    return {"online_p50_idle_ms": _pct(lat, 50), "online_p99_idle_ms": _pct(lat, 99)}


def _saturated(ctx: Context, fifo: bool) -> tuple[list[float], dict]:
    """Keep ``background_depth`` background refreshes queued; submit online
    requests one after another (``online_gap_s`` apart) and time them."""
    inf = Inference.start(ctx.config, None, fifo=fifo)
    stop = threading.Event()
    counter = iter(range(10**9))
    lock = threading.Lock()

    def feed(_result: Any = None) -> None:
        if stop.is_set():
            return
        with lock:
            i = next(counter)
        items, queries = user_inputs(f"bg-{i}", ctx.args.seed)
        inf.submit_profile(ProfileRequest(
            f"bg-{i}", items, queries, VOCAB, "background", deadline_in(3600), feed,
        ))

    try:
        _wait_profile(inf, "warmup", *user_inputs("warmup", ctx.args.seed), "online", 120)
        for _ in range(ctx.args.background_depth):
            feed()
        time.sleep(ctx.args.online_gap_s)
        lat = _timed_online(inf, ctx, "sat", ctx.args.saturated_online, 600,
                            gap_s=ctx.args.online_gap_s)
        stats = inf.stats()
    finally:
        stop.set()
        inf.stop(timeout=60)
    return lat, stats


def measure_saturated(ctx: Context) -> dict[str, Any]:
    lat, stats = _saturated(ctx, fifo=False)
    ctx.notes["saturated_preemptions"] = stats["preemptions"]
    ctx.notes["saturated_online_p50_ms"] = _pct(lat, 50)
    return {"online_p99_saturated_ms": _pct(lat, 99)}


def measure_saturated_fifo(ctx: Context) -> dict[str, Any]:
    lat, _ = _saturated(ctx, fifo=True)
    ctx.notes["fifo_saturated_online_p50_ms"] = _pct(lat, 50)
    return {"fifo_online_p99_saturated_ms": _pct(lat, 99)}


def _throughput_requests(ctx: Context) -> list[tuple[str, tuple, tuple]]:
    return [(f"tp-{i}", *user_inputs(f"tp-{i}", ctx.args.seed)) for i in range(ctx.args.throughput)]


def measure_throughput_and_cache(ctx: Context) -> dict[str, Any]:
    """All requests submitted at once; tokens over wall time; then the same again."""
    reqs = _throughput_requests(ctx)
    inf = Inference.start(ctx.config, f"{ctx.tmp}/cache")
    try:
        _wait_profile(inf, "warmup", *user_inputs("warmup", ctx.args.seed), "online", 120)

        def run_all() -> list[Any]:
            done = threading.Event()
            results: list[Any] = []
            lock = threading.Lock()

            def on_done(r: Any) -> None:
                with lock:
                    results.append(r)
                    if len(results) == len(reqs):
                        done.set()

            for user, items, queries in reqs:
                inf.submit_profile(ProfileRequest(user, items, queries, VOCAB, "interactive", deadline_in(3600), on_done))
            done.wait(1800)
            return results

        tokens0 = inf.stats()["tokens"]
        t0 = time.perf_counter()
        first = run_all()
        wall = time.perf_counter() - t0
        tokens = inf.stats()["tokens"] - tokens0
        errors = [r for r in first if isinstance(r, Exception)]
        s0 = inf.stats()
        run_all()
        s1 = inf.stats()
        hits = s1["profile_hits"] - s0["profile_hits"]
        misses = s1["profile_misses"] - s0["profile_misses"]
        ctx.notes["throughput_errors"] = len(errors)
        ctx.notes["throughput_requests"] = len(reqs)
    finally:
        inf.stop(timeout=30)
    return {
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "cache_hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
    }


def measure_raw(ctx: Context) -> dict[str, Any]:
    """The same prompts in a bare llama.cpp loop (no actor, no embedding, no cache)."""
    if ctx.config["inference"]["backend"] == "openai":  # a bare loop of HTTP completions
        warmup = user_inputs("warmup", ctx.args.seed)
        return bench_remote.measure_raw_remote(ctx, _throughput_requests(ctx), VOCAB, warmup)
    import llama_cpp

    from interest.engine.llm.model_files import resolve_model_paths

    m, inf_cfg = ctx.config["model"], ctx.config["inference"]
    path, _ = resolve_model_paths(m)
    llm = llama_cpp.Llama(
        str(path), n_ctx=m["n_ctx"], n_threads=m["n_threads"], n_gpu_layers=m["n_gpu_layers"],
        seed=m["seed"], verbose=False,
    )
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(prompts.PROFILE_SCHEMA), verbose=False)
    kw = dict(max_tokens=inf_cfg["max_tokens"], temperature=inf_cfg.get("temperature", 0.0),
              repeat_penalty=inf_cfg.get("repeat_penalty", 1.2), grammar=grammar, seed=m["seed"])
    try:
        llm.create_completion(prompts.profile_prompt(*user_inputs("warmup", ctx.args.seed), VOCAB), **kw)
        tokens = 0
        t0 = time.perf_counter()
        for _user, items, queries in _throughput_requests(ctx):
            out = llm.create_completion(prompts.profile_prompt(items, queries, VOCAB), **kw)
            tokens += out["usage"]["completion_tokens"]
        wall = time.perf_counter() - t0
    finally:
        llm.close()
    return {"raw_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None}


def measure_calls_per_event(ctx: Context) -> dict[str, Any]:
    """Replay MovieLens-100K through the real service with the real model.

    ``calls_per_event``: profile refreshes the user actors asked the model for
    (after debounce, before the inference actor coalesces them) per ingested
    behaviour event: an upper bound on model calls. ``generations_per_event``:
    generations the model actually ran for user refreshes while the replay was going on
    (item profiles, ``[inference] item_profiles``, left out).
    """
    from interest.engine import movielens  # noqa: PLC0415
    from interest.engine.serving.requests import parse_batch  # noqa: PLC0415
    from interest.engine.serving.service import Service  # noqa: PLC0415
    try:
        data = movielens.load(ctx.args.movielens or movielens.DEFAULT_PATH)
    except FileNotFoundError as exc:
        ctx.notes["calls_per_event"] = f"skipped: {exc}"
        return {"calls_per_event": None}
    config = load_config(ctx.args.config, store={"sync": False}, inference=ctx.config["inference"])
    inference = Inference.start(config, os.path.join(ctx.tmp, "calls-cache"))
    service = Service(config, os.path.join(ctx.tmp, "calls-data"), inference=inference)
    try:
        ratings = data.ratings[: ctx.args.replay_events or None]
        events = data.items + data.users + ratings
        for start in range(0, len(events), 1000):
            while service.busy():
                time.sleep(0.001)
            parsed, _ = parse_batch(events[start:start + 1000], config["limits"])
            service.ingest_events(parsed)
        done = threading.Event()
        service.flush(lambda _applied: done.set())
        done.wait(600)
        profiles = service.profiles.stats()
        generated = inference.stats().get("generations", 0)
        if service.item_profiler is not None:     # catalog items' profiles are not refreshes
            generated -= service.item_profiler.stats()["profiled"]
    finally:
        service.stop()
    n = len(ratings)
    ctx.notes["calls_per_event_detail"] = {"events": n, **profiles, "generations": generated}
    return {"calls_per_event": round(profiles["refresh_requests"] / n, 4),
            "generations_per_event": round(generated / n, 4)}


MEASUREMENTS: list[Callable[[Context], dict[str, Any]]] = [
    measure_idle,
    measure_saturated,
    measure_saturated_fifo,
    measure_throughput_and_cache,
    measure_raw,
    measure_calls_per_event,
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="config file overlaid on the defaults")
    p.add_argument("--online", type=int, default=8, help="online requests in the idle run")
    p.add_argument("--saturated-online", type=int, default=5, help="online requests in each saturated run")
    p.add_argument("--background-depth", type=int, default=6, help="background refreshes kept queued")
    p.add_argument("--online-gap-s", type=float, default=0.3, help="pause between online requests")
    p.add_argument("--throughput", type=int, default=8, help="requests in the throughput / cache run")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic users (default 7)")
    p.add_argument("--notes", action="store_true", help="add a 'notes' object with extra facts")
    bench_remote.add_arguments(p)  # --backend openai [--url URL] [--embed-url URL]
    p.add_argument("--movielens", default=None, help="MovieLens-100K folder for calls_per_event "
                   "(default ../shared/data/ml-100k)")
    p.add_argument("--replay-events", type=int, default=0,
                   help="ratings replayed for calls_per_event (0 = all 100,000)")
    return p.parse_args(argv)


def run(argv: list[str], measurements: list[Callable[[Context], dict[str, Any]]] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = load_config(args.config)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp, \
            bench_remote.inference_tier(args, config) as config:
        ctx = Context(config, args, tmp)
        t0 = time.perf_counter()
        for m in measurements or MEASUREMENTS:
            result.update(m(ctx))
        if args.notes:
            ctx.notes["total_s"] = round(time.perf_counter() - t0, 1)
            result["notes"] = ctx.notes
    return result


def main(argv: list[str] | None = None) -> int:
    import sys

    result = run(sys.argv[1:] if argv is None else argv)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
