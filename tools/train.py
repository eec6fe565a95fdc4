"""``interest train``: build the recommender's global models in one go, save them.

From a service data dir (its LMDB journal) or from a MovieLens-100K folder.
The model is written to ``<data>/models/recommender.msgpack`` by default
(``engine.recommend.model_path``); the service loads it with
``Recommender.load(path)`` before replaying its journal, and ``observe`` then
skips the journal entries the model already holds (by global position).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _from_journal(data: Path, rec) -> int:
    from interest.engine.journal.codec import CATALOG_STREAM
    from interest.engine.journal.events import PROFILE_TYPE
    from interest.engine.journal.store import LmdbStore
    if not (data / "journal").is_dir():
        raise FileNotFoundError(f"no journal in {data} (expected {data / 'journal'})")
    store = LmdbStore(data / "journal")
    try:
        for item, record in store.items():
            rec.catalog.put_item(item, record)
        for user, attrs in store.all_user_attrs():
            rec.catalog.put_user_attrs(user, attrs)
        n = 0
        for entry in store.read_all():
            if entry.stream != CATALOG_STREAM and entry.event["type"] != PROFILE_TYPE:
                rec.observe(entry)
                n += 1
        return n
    finally:
        store.close()


def _from_movielens(path: Path, rec) -> int:
    from interest.engine import movielens
    from interest.engine.journal.codec import StoredEvent
    ml = movielens.load(path)
    tags = {}
    for it in ml.items:
        rec.catalog.put_item(it["item"], {k: it[k] for k in ("title", "tags", "text", "attrs")})
        tags[it["item"]] = tuple(it["tags"])
    for u in ml.users:
        rec.catalog.put_user_attrs(u["user"], u["attrs"])
    seqs: dict[str, int] = {}
    for ev in ml.ratings:
        seqs[ev["user"]] = seqs.get(ev["user"], 0) + 1
        # gseq 0: an external model, never confused with journal positions
        rec.observe(StoredEvent(ev["user"], seqs[ev["user"]], 0, 0.0, ev,
                                tags.get(ev["item"], ())))
    return len(ml.ratings)


def main(argv: list[str] | None = None) -> int:
    from interest.engine.projections.catalog import Catalog
    from interest.engine.config import load_config
    from interest.engine.recommend import Recommender, model_path
    from interest.engine.projections.state import FoldParams
    parser = argparse.ArgumentParser(prog="interest train", description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="service data dir (holds journal/)")
    src.add_argument("--movielens", help="MovieLens-100K folder")
    parser.add_argument("--out", help="model file (default: <data>/models/recommender.msgpack)")
    parser.add_argument("--config", help="config file overlaid on the defaults")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    rec = Recommender.from_config(Catalog(), FoldParams.from_config(config), config)
    t0 = time.time()
    try:
        if args.data:
            n = _from_journal(Path(args.data), rec)
            out = Path(args.out) if args.out else model_path(args.data)
        else:
            n = _from_movielens(Path(args.movielens), rec)
            if not args.out:
                print("interest train: --out is required with --movielens", file=sys.stderr)
                return 2
            out = Path(args.out)
    except FileNotFoundError as exc:
        print(f"interest train: {exc}", file=sys.stderr)
        return 2
    rec.save(out)
    stats = rec.stats()
    print(json.dumps({"model": str(out), "events": n, "gseq": rec.gseq,
                      "seconds": round(time.time() - t0, 2), "models": stats["models"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
