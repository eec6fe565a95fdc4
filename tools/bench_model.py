"""`interest bench model`: the configured model's memory and latency, as one JSON object.

Loads the generation and embedding instances (``LlamaBackend.from_config``),
times one profile prompt cold, then a second one sharing its instruction
prefix (llama.cpp reuses the matching prefix), then one batch of 8 embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import psutil

ITEMS = [{"item": "1", "title": "Star Wars (1977)", "tags": ["action", "sci-fi"], "type": "view"}]
MORE = ITEMS + [{"item": "2", "title": "Heat (1995)", "tags": ["action", "crime"], "type": "view"}]
VOCAB = ["action", "comedy", "crime", "drama", "romance", "sci-fi", "thriller"]


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return round((time.perf_counter() - t0) * 1000, 1)


def main(argv: list[str]) -> int:
    from interest.engine.llm import prompts  # noqa: PLC0415
    from interest.engine.llm.backends import LlamaBackend  # noqa: PLC0415
    from interest.engine.config import load_config  # noqa: PLC0415
    from interest.engine.llm.model_files import resolve_model_paths  # noqa: PLC0415
    parser = argparse.ArgumentParser(prog="interest bench model", description=__doc__)
    parser.add_argument("--config", help="config overlaid on configs/default.toml")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    path, _ = resolve_model_paths(config["model"])
    t0 = time.perf_counter()
    backend = LlamaBackend.from_config(config)
    out = {"model": backend.model_id, "file_mb": round(os.path.getsize(path) / 2**20, 1),
           "load_s": round(time.perf_counter() - t0, 2),
           "rss_after_load_mb": round(psutil.Process().memory_info().rss / 2**20)}

    def profile(items):
        return lambda: backend.complete(prompts.profile_prompt(items, [], VOCAB), max_tokens=64,
                                        schema=prompts.PROFILE_SCHEMA)
    out["cold_profile_ms"] = _ms(profile(ITEMS))
    out["shared_prefix_profile_ms"] = _ms(profile(MORE))
    out["embed_8_ms"] = _ms(lambda: backend.embed([f"Movie {i}. Drama." for i in range(8)]))
    out["n_threads"] = config["model"]["n_threads"]
    backend.close()
    print(json.dumps(out))
    return 0
