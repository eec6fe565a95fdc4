"""The remote inference tier in the inference benchmark (``--backend openai``).

``interest bench inference --backend openai`` measures the same table through
``[inference] backend = "openai"``: against ``--url`` (and ``--embed-url``)
when given, else against two ``llama_cpp.server`` processes it starts on
loopback with the configured model (generation and embeddings) and stops at
the end. ``raw_tokens_per_s`` is then a bare loop of HTTP completions (no
actor, no embedding, no cache), as the local table's is a bare llama.cpp loop.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

from interest.engine.llm import prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("llama", "openai"), default=None,
                        help="inference backend (default: [inference] backend of the config)")
    parser.add_argument("--url", default=None, help="openai: the server's /v1 base URL "
                        "(default: start llama_cpp.server on loopback with the configured model)")
    parser.add_argument("--embed-url", default=None, help="openai: the embeddings server (default: --url)")


@contextlib.contextmanager
def inference_tier(args: argparse.Namespace, config: dict) -> Iterator[dict]:
    """``config`` with the backend the arguments ask for; local servers while it is open."""
    config = copy.deepcopy(config)
    inf = config["inference"]
    inf["backend"] = args.backend or inf["backend"]
    inf["request_timeout_s"] = max(inf["request_timeout_s"], 600.0)  # measured here, not enforced
    if inf["backend"] != "openai":
        yield config
        return
    if args.url:
        inf["url"], inf["embed_url"] = args.url, args.embed_url or ""
        yield config
        return
    from interest.engine.llm.model_files import resolve_model_paths  # noqa: PLC0415
    from interest.engine.llm.server_process import start_pair  # noqa: PLC0415
    gen_path, emb_path = resolve_model_paths(config["model"])
    m = config["model"]
    gen, emb = start_pair(gen_path, emb_path, n_ctx=m["n_ctx"], embed_ctx=m["embed_ctx"],
                          n_threads=m["n_threads"], timeout_s=180)
    try:
        inf["url"], inf["embed_url"] = gen.url, emb.url
        yield config
    finally:
        gen.stop()
        emb.stop()


def measure_raw_remote(ctx: Any, requests: list[tuple[str, tuple, tuple]], vocab: tuple,
                       warmup: tuple[tuple, tuple]) -> dict[str, Any]:
    """The same prompts as plain HTTP completions, one after another."""
    from interest.engine.llm.openai_backend import OpenAIBackend  # noqa: PLC0415
    backend = OpenAIBackend.from_config(ctx.config)
    max_tokens = ctx.config["inference"]["max_tokens"]
    try:
        backend.complete(prompts.profile_prompt(*warmup, vocab), max_tokens=max_tokens,
                         schema=prompts.PROFILE_SCHEMA)
        tokens = 0
        t0 = time.perf_counter()
        for _user, items, queries in requests:
            out = backend.complete(prompts.profile_prompt(items, queries, vocab),
                                   max_tokens=max_tokens, schema=prompts.PROFILE_SCHEMA)
            tokens += out.completion_tokens
        wall = time.perf_counter() - t0
        ctx.notes["remote_schema_violations"] = backend.schema_violations
        ctx.notes["remote_url"] = backend.url
    finally:
        backend.close()
    return {"raw_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None}

