"""``interest eval``: offline quality of the real service on MovieLens (or any event set).

Two protocols, each run through an in-process ``engine.serving.service.Service`` (the
same writer, actors and recommender as the server; LMDB with sync off):

* prequential (test-then-learn): events in time order; after a warm-up share,
  for each evaluated event ask the service for that user's top-k first, then
  ingest the event. Baselines see the same events and are asked at the same
  points: ``popularity`` (counts so far) and ``item_knn_last`` (cosine
  item-item co-occurrence over full user histories, scored from the user's
  last item). Reported overall, for cold users (fewer than 5 prior events)
  and per time window.
* leave-one-out: each user's last event held out, everything else ingested,
  then every other item ranked for each user (seen items excluded).

``service_no_llm`` is the service with its language-model sources switched
off (recommender ``use_llm=False``: no profile embedding/summary/tags, no item
vectors), and ``service_fixed_weights`` the service's sources fused with the
prior weights (``[recommend] fusion_prior``; no online learning of the fusion), both ranked from the same
state and snapshot at the same points.

Slices, for every system: ``cold_hr@k`` (users with fewer than 5 prior
events), ``cold_item_hr@k`` (the item had fewer than 5 interactions before
the point) and ``tail_hr@k`` (the item is outside the 20 % most popular
catalog items, by interactions before the point; in leave-one-out, in the
training events).

``--split validation`` evaluates on the validation split instead, where
settings are chosen (``--config`` overlays the candidates): for
leave-one-out each user's second-to-last event (the last one is dropped);
for prequential the points of the second half of the warm-up period (the
events after the warm-up are dropped). The reported test points are never
used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from interest.engine.errors import InterestError

#: single sources of the service, each ranked alone from the same snapshot (the fusion has
#: to beat the best of them)
SINGLE = ("sequential", "collaborative", "ease")
SYSTEMS = ("service", "service_no_llm", "service_fixed_weights",
           *(f"only_{name}" for name in SINGLE), "popularity", "item_knn_last")
COLD_BELOW = 5
#: the head: this share of the catalog's items, the most popular so far
HEAD_SHARE = 0.2


# ------------------------------------------------------------------ baselines

class Baselines:
    """Popularity-so-far and last-item item-kNN over a fixed item universe (numpy)."""

    def __init__(self, items: list[str]):
        self.index = {item: i for i, item in enumerate(items)}
        self.ids = list(items)
        n = len(items)
        self.counts = np.zeros(n, dtype=np.float64)
        self.cooc = np.zeros((n, n), dtype=np.float32)
        self.history: dict[str, list[int]] = {}

    def _idx(self, item: str) -> int:
        i = self.index.get(item)
        if i is None:     # an item not in the catalog: grow the universe
            i = self.index[item] = len(self.ids)
            self.ids.append(item)
            self.counts = np.append(self.counts, 0.0)
            n = len(self.ids)
            grown = np.zeros((n, n), dtype=np.float32)
            grown[:n - 1, :n - 1] = self.cooc
            self.cooc = grown
        return i

    def observe(self, user: str, item: str) -> None:
        b = self._idx(item)
        hist = self.history.setdefault(user, [])
        if hist:
            h = np.fromiter(set(hist) - {b}, dtype=np.int64)
            self.cooc[h, b] += 1.0
            self.cooc[b, h] += 1.0
        if b not in hist:
            hist.append(b)
        else:
            hist.remove(b)
            hist.append(b)
        self.counts[b] += 1.0

    def _top(self, scores: np.ndarray, user: str, k: int) -> list[str]:
        scores = scores.astype(np.float64, copy=True)
        hist = self.history.get(user)
        if hist:
            scores[hist] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.ids[i] for i in order]

    def count(self, item: str) -> float:
        i = self.index.get(item)
        return float(self.counts[i]) if i is not None else 0.0

    def in_tail(self, item: str) -> bool:
        """Outside the HEAD_SHARE most popular items (by interactions so far)."""
        head = max(1, math.ceil(HEAD_SHARE * len(self.counts)))
        threshold = np.partition(self.counts, len(self.counts) - head)[len(self.counts) - head]
        return threshold <= 0 or self.count(item) < threshold

    def popularity(self, user: str, k: int) -> list[str]:
        return self._top(self.counts, user, k)

    def item_knn_last(self, user: str, k: int) -> list[str]:
        hist = self.history.get(user)
        if not hist:
            return self.popularity(user, k)
        last = hist[-1]
        denom = np.sqrt(np.maximum(self.counts, 1.0) * max(self.counts[last], 1.0))
        return self._top(self.cooc[last] / denom, user, k)


# -------------------------------------------------------------------- metrics

class Metric:
    def __init__(self):
        self.n = 0
        self.hits = 0.0
        self.ndcg = 0.0

    def add(self, ranked: list[str], target: str, k: int) -> None:
        self.n += 1
        if target in ranked[:k]:
            rank = ranked.index(target)
            self.hits += 1.0
            self.ndcg += 1.0 / math.log2(rank + 2)

    @property
    def hr(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def nd(self) -> float:
        return self.ndcg / self.n if self.n else 0.0


class Only:
    """Fusion weights that keep one source alone (``Models.recommend``'s ``fusion``)."""

    def __init__(self, names: list[str], source: str):
        self.fixed = {name: 1.0 if name == source else 0.0 for name in names}

    def weights(self, user, segment, context=None) -> dict:
        return dict(self.fixed)


class Slices:
    """Per system: overall, cold users, cold items and tail items."""

    def __init__(self):
        self.overall = {s: Metric() for s in SYSTEMS}
        self.cold = {s: Metric() for s in SYSTEMS}
        self.cold_item = {s: Metric() for s in SYSTEMS}
        self.tail = {s: Metric() for s in SYSTEMS}

    def add(self, ranked: dict, target: str, k: int, *, cold_user: bool, cold_item: bool,
            tail: bool) -> None:
        for s in SYSTEMS:
            self.overall[s].add(ranked[s], target, k)
            for on, metric in ((cold_user, self.cold), (cold_item, self.cold_item),
                               (tail, self.tail)):
                if on:
                    metric[s].add(ranked[s], target, k)

    def report(self, k: int, cold_users: bool = True) -> dict:
        out = {}
        for s in SYSTEMS:
            row = {f"hr@{k}": self.overall[s].hr, f"ndcg@{k}": self.overall[s].nd}
            if cold_users:
                row[f"cold_hr@{k}"] = self.cold[s].hr
            row[f"cold_item_hr@{k}"] = self.cold_item[s].hr
            row[f"tail_hr@{k}"] = self.tail[s].hr
            out[s] = row
        return out


# ---------------------------------------------------------------- the service

class Harness:
    """An in-process service, fed and queried synchronously: each ingest returns once the
    user-state projection AND the model learner have applied it (test-then-learn needs
    the models to have learned every earlier event before the next question)."""

    def __init__(self, tmp: str, use_llm_shadow: bool = True, config_path: str | None = None,
                 vectors: dict | None = None):
        from interest.engine.config import load_config
        from interest.engine.serving.service import Service
        self.config = load_config(config_path, store={"sync": False}, projections={"learner": "thread"})
        self.limits = self.config["limits"]
        self.service = Service(self.config, Path(tmp) / "data")
        from interest.engine.recommend.fusion import PRIORS, Fusion
        names = list(self.service.learner.models.names)
        prior = PRIORS[self.config["recommend"]["fusion_prior"]]
        self.shadow = {"service_fixed_weights": {"fusion": Fusion(names, prior, adapt=False)}}
        for name in SINGLE:
            self.shadow[f"only_{name}"] = {"fusion": Only(names, name)}
        if use_llm_shadow:
            self.shadow["service_no_llm"] = {"use_llm": False}
        for item, vector in (vectors or {}).items():
            self.service.item_vectors.set_item_vector(item, vector)
        self._wait(lambda done: self.service.flush(done, projections=("users", "learner")))

    @staticmethod
    def _wait(start, timeout: float = 600.0):
        done = threading.Event()
        box = {}

        def finish(result):
            box["r"] = result
            done.set()
        start(finish)
        if not done.wait(timeout):
            raise TimeoutError("the service did not answer in time")
        if isinstance(box["r"], Exception):
            raise box["r"]
        return box["r"]

    def ingest(self, wires: list[dict]) -> None:
        from interest.engine.journal.events import parse_event
        if not wires:
            return
        events = [parse_event(w, self.limits) for w in wires]
        self._wait(lambda done: self.service.ingest_events(events, done))
        self._wait(lambda done: self.service.flush(done, projections=("learner",)))

    def ingest_chunked(self, wires: list[dict], size: int = 5000) -> None:
        for i in range(0, len(wires), size):
            self.ingest(wires[i:i + size])

    def recommend(self, user: str, k: int) -> tuple[list[str], dict[str, list[str]]]:
        result = self._wait(lambda done: self.service.call(
            {"op": "recommend", "user": user, "k": k}, done), timeout=60)
        ranked = [row["item"] for row in result["items"]]
        shadow = {}
        if self.shadow:
            state = self.service.reader.state_of(user)
            models = self.service.learner.models
            for name, opts in self.shadow.items():
                rows = models.recommend(state, k=k, use_llm=opts.get("use_llm"),
                                        fusion=opts.get("fusion"))["items"]
                shadow[name] = [row["item"] for row in rows]
        return ranked, shadow

    def stop(self) -> None:
        self.service.stop()


def _ask_all(harness: Harness, base: Baselines, user: str, k: int) -> dict[str, list[str]]:
    ranked, shadow = harness.recommend(user, k)
    return {"service": ranked, "service_no_llm": shadow.get("service_no_llm", ranked),
            **{name: rows for name, rows in shadow.items() if name != "service_no_llm"},
            "popularity": base.popularity(user, k), "item_knn_last": base.item_knn_last(user, k)}


def embed_items(data, config_path: str | None, cache: str, progress: bool,
                batch: int = 32, item_profiles: bool = False) -> dict:
    """Item embeddings from the real model (cached across runs in ``cache``). With
    ``item_profiles``, each item's text is first enriched by its LLM-written profile
    (engine.llm.item_profiles: the service's prompt and vocabulary, generated once and
    kept in the same result cache), as ``[inference] item_profiles`` does in the service."""
    from interest.actors.inference import Inference
    from interest.engine.config import load_config
    from interest.engine.errors import ModelUnavailable
    config = load_config(config_path)
    inference = Inference.start(config, cache)
    if not inference.available:
        raise ModelUnavailable(inference.reason)
    vectors: dict = {}
    try:
        texts = _item_texts(data, inference, config, progress) if item_profiles else None
        bar = tqdm(total=len(data.items), desc="embedding items", disable=not progress,
                   file=sys.stderr, leave=False)
        for start in range(0, len(data.items), batch):
            records = data.items[start:start + batch]
            chunk = [texts[r["item"]] if texts else _plain_text(r) for r in records]
            for record, vector in zip(records, inference.embed(chunk, timeout_s=600)):
                vectors[record["item"]] = vector
            bar.update(len(records))
        bar.close()
    finally:
        inference.stop(timeout=30)
    return vectors


def _plain_text(record: dict) -> str:
    from interest.actors.profiles import item_text
    return item_text(record["item"], record)


def _item_texts(data, inference, config: dict, progress: bool) -> dict[str, str]:
    """item -> its catalog text enriched by the model's profile of it (the catalog's
    vocabulary as the service builds it; an item whose profile fails keeps its plain
    text, as in the service)."""
    from interest.engine.errors import InterestError
    from interest.engine.llm.item_profiles import (ItemProfile, profile_key, profile_text,
                                                   prompt_items, source_hash)
    from interest.engine.projections.catalog import Catalog
    catalog = Catalog()
    for record in data.items:
        catalog.put_item(record["item"], record)
    vocab = tuple(catalog.vocabulary(config["inference"]["vocab_limit"]))
    texts = {}
    for record in tqdm(data.items, desc="item profiles", disable=not progress, file=sys.stderr,
                       leave=False):
        item = record["item"]
        try:
            res = inference.profile(profile_key(item), prompt_items(item, record), (), vocab,
                                    priority="background", timeout_s=600)
        except InterestError:
            texts[item] = profile_text(item, record, None)
            continue
        profile = ItemProfile(item, tuple(res.tags), res.summary, res.model, res.input_hash,
                              source_hash(item, record))
        texts[item] = profile_text(item, record, profile)
    return texts


# --------------------------------------------------------------- prequential

def prequential(data, *, k: int = 10, warmup: float = 0.2, sample: int | None = None,
                seed: int = 0, windows: int = 4, progress: bool = True,
                config: str | None = None, vectors: dict | None = None) -> dict:
    ratings = data.ratings
    start = int(len(ratings) * warmup)
    points = list(range(start, len(ratings)))
    if sample and sample < len(points):
        points = sorted(random.Random(seed).sample(points, sample))
    slices = Slices()
    by_window = [{s: Metric() for s in SYSTEMS} for _ in range(windows)]
    t_lo, t_hi = float(ratings[start]["ts"]) if points else 0.0, float(ratings[-1]["ts"])
    base = Baselines([it["item"] for it in data.items])
    prior: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(tmp, config_path=config, vectors=vectors)
        try:
            h.ingest_chunked(data.items + data.users)
            pos = 0
            bar = tqdm(total=len(points), desc="prequential", disable=not progress,
                       file=sys.stderr, leave=False)
            for point in points + [len(ratings)]:
                chunk = ratings[pos:point]
                if chunk:
                    h.ingest_chunked(chunk)
                    for ev in chunk:
                        base.observe(ev["user"], ev["item"])
                        prior[ev["user"]] = prior.get(ev["user"], 0) + 1
                pos = point
                if point >= len(ratings):
                    break
                ev = ratings[point]
                user, target = ev["user"], ev["item"]
                ranked = _ask_all(h, base, user, k)
                w = min(windows - 1, int((float(ev["ts"]) - t_lo) / max(t_hi - t_lo, 1e-9)
                                         * windows))
                slices.add(ranked, target, k, cold_user=prior.get(user, 0) < COLD_BELOW,
                           cold_item=base.count(target) < COLD_BELOW,
                           tail=base.in_tail(target))
                for s in SYSTEMS:
                    by_window[w][s].add(ranked[s], target, k)
                h.ingest([ev])
                base.observe(user, target)
                prior[user] = prior.get(user, 0) + 1
                pos = point + 1
                bar.update(1)
            bar.close()
            rec_stats = h.service.recommender.stats()
        finally:
            h.stop()
    return {
        "systems": slices.report(k),
        "points": len(points), "cold_points": slices.cold["service"].n,
        "cold_item_points": slices.cold_item["service"].n,
        "tail_points": slices.tail["service"].n,
        "windows": [{"n": win["service"].n,
                     **{s: {f"hr@{k}": win[s].hr, f"ndcg@{k}": win[s].nd} for s in SYSTEMS}}
                    for win in by_window],
        "fusion": rec_stats["fusion"]["segments"],
        "fusion_keys": rec_stats["fusion"]["keys"],
    }


# ------------------------------------------------------------- leave-one-out

def leave_one_out(data, *, k: int = 10, progress: bool = True, config: str | None = None,
                  vectors: dict | None = None) -> dict:
    ratings = data.ratings
    last: dict[str, int] = {}
    for i, ev in enumerate(ratings):
        last[ev["user"]] = i
    held = set(last.values())
    train = [ev for i, ev in enumerate(ratings) if i not in held]
    slices = Slices()
    base = Baselines([it["item"] for it in data.items])
    for ev in train:
        base.observe(ev["user"], ev["item"])
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(tmp, config_path=config, vectors=vectors)
        try:
            h.ingest_chunked(data.items + data.users)
            h.ingest_chunked(train)
            for i in tqdm(sorted(held), desc="leave-one-out", disable=not progress,
                          file=sys.stderr, leave=False):
                ev = ratings[i]
                ranked = _ask_all(h, base, ev["user"], k)
                slices.add(ranked, ev["item"], k, cold_user=False,
                           cold_item=base.count(ev["item"]) < COLD_BELOW,
                           tail=base.in_tail(ev["item"]))
        finally:
            h.stop()
    return {"systems": slices.report(k, cold_users=False), "users": len(held),
            "cold_item_points": slices.cold_item["service"].n,
            "tail_points": slices.tail["service"].n}


def validation_split(data, protocol: str, warmup: float):
    """(data, warm-up) of the validation split of ``protocol`` (see the module doc)."""
    from interest.engine.movielens import MovieLens
    ratings = data.ratings
    if protocol == "loo":
        last: dict[str, int] = {}
        for i, ev in enumerate(ratings):
            last[ev["user"]] = i
        held = set(last.values())
        kept = [ev for i, ev in enumerate(ratings) if i not in held]
        return MovieLens(data.items, data.users, kept), warmup
    return MovieLens(data.items, data.users, ratings[:int(len(ratings) * warmup)]), 0.5


# ----------------------------------------------------------------------- cli

def _table(pre: dict | None, loo: dict | None, k: int) -> str:
    lines = []
    head = f"{'system':<22}"
    if pre:
        head += (f"{'preq HR@' + str(k):>12}{'preq NDCG':>11}{'cold HR':>9}"
                 f"{'cold item':>11}{'tail HR':>9}")
    if loo:
        head += f"{'LOO HR@' + str(k):>11}{'LOO NDCG':>10}"
    lines += [head, "-" * len(head)]
    for s in SYSTEMS:
        row = f"{s:<22}"
        if pre:
            m = pre["systems"][s]
            row += (f"{m[f'hr@{k}']:>12.4f}{m[f'ndcg@{k}']:>11.4f}{m[f'cold_hr@{k}']:>9.4f}"
                    f"{m[f'cold_item_hr@{k}']:>11.4f}{m[f'tail_hr@{k}']:>9.4f}")
        if loo:
            m = loo["systems"][s]
            row += f"{m[f'hr@{k}']:>11.4f}{m[f'ndcg@{k}']:>10.4f}"
        lines.append(row)
    if pre:
        lines.append("")
        lines.append(f"prequential: {pre['points']} points ({pre['cold_points']} cold users, "
                     f"{pre['cold_item_points']} cold items, {pre['tail_points']} tail items); "
                     f"HR@{k} per time window:")
        lines.append(f"{'window':<8}{'n':>7}" + "".join(f"{s:>22}" for s in SYSTEMS))
        for i, win in enumerate(pre["windows"]):
            lines.append(f"{i + 1:<8}{win['n']:>7}" +
                         "".join(f"{win[s][f'hr@{k}']:>22.4f}" for s in SYSTEMS))
        lines.append("fusion weights after the run: " + json.dumps(
            {seg: {s: round(w, 3) for s, w in ws.items()} for seg, ws in pre["fusion"].items()}))
    if loo:
        lines.append(f"leave-one-out: {loo['users']} users, full ranking, seen excluded")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from interest.engine import movielens
    parser = argparse.ArgumentParser(prog="interest eval", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(movielens.DEFAULT_PATH),
                        help="MovieLens-100K folder (u.data, u.item, u.user)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sample", type=int, default=10000,
                        help="prequential points to evaluate after the warm-up (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prequential sample (default 0)")
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="share of events (time order) replayed before evaluating (default 0.2)")
    parser.add_argument("--k", type=int, default=10, help="cut-off of HR@k and NDCG@k (default 10)")
    parser.add_argument("--windows", type=int, default=4,
                        help="time windows the prequential figures are also given for (default 4)")
    parser.add_argument("--only", choices=("prequential", "loo"), default=None,
                        help="run one protocol only (default both)")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="validation: each user's second-to-last event (leave-one-out) and "
                             "the second half of the warm-up (prequential), where settings "
                             "are chosen; test: the reported points")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--config", help="service config overlaid on configs/default.toml")
    parser.add_argument("--llm", action="store_true",
                        help="embed every item with the configured model first, so the "
                             "language-model source is live and the ablation measures it")
    parser.add_argument("--item-profiles", action="store_true",
                        help="with --llm: embed each item from its LLM-written profile (generated "
                             "once, about 1.3 s an item here, kept in --cache), as [inference] "
                             "item_profiles does in the service")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "interest-eval-cache"),
                        help="inference result cache reused across runs (with --llm)")
    args = parser.parse_args(argv)
    if args.item_profiles and not args.llm:
        parser.error("--item-profiles needs --llm (the profiles enrich the model's item embeddings)")
    try:
        data = movielens.load(args.data)
    except FileNotFoundError as exc:
        print(f"interest eval: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress and sys.stderr.isatty()
    t0 = time.time()
    vectors = None
    if args.llm:
        try:
            vectors = embed_items(data, args.config, args.cache, progress,
                                  item_profiles=args.item_profiles)
        except InterestError as exc:
            print(f"interest eval: --llm needs the model: {exc}", file=sys.stderr)
            return 2
    pre = loo = None
    pre_data, warmup = data, args.warmup
    loo_data = data
    if args.split == "validation":
        pre_data, warmup = validation_split(data, "prequential", args.warmup)
        loo_data, _ = validation_split(data, "loo", args.warmup)
    if args.only in (None, "prequential"):
        pre = prequential(pre_data, k=args.k, warmup=warmup, sample=args.sample or None,
                          seed=args.seed, windows=args.windows, progress=progress,
                          config=args.config, vectors=vectors)
    if args.only in (None, "loo"):
        loo = leave_one_out(loo_data, k=args.k, progress=progress, config=args.config,
                            vectors=vectors)
    if args.json:
        out = {"prequential": pre["systems"] if pre else {}, "loo": loo["systems"] if loo else {},
               "meta": {"points": pre["points"] if pre else 0, "llm": bool(args.llm),
                        "item_profiles": bool(args.llm and args.item_profiles),
                        "cold_points": pre["cold_points"] if pre else 0,
                        "cold_item_points": pre["cold_item_points"] if pre else 0,
                        "tail_points": pre["tail_points"] if pre else 0,
                        "split": args.split,
                        "fusion": pre["fusion_keys"] if pre else {},
                        "sample": args.sample, "seed": args.seed, "warmup": args.warmup,
                        "seconds": round(time.time() - t0, 1),
                        "windows": pre["windows"] if pre else []}}
        print(json.dumps(out))
    else:
        print(_table(pre, loo, args.k))
        print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
