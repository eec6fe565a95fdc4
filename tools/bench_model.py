"""`interest bench model [--model PATH|PACKAGE ...]`: a GGUF model's memory, latency and quality.

For each model (default: the configured one; ``--model`` takes a ``.gguf``
path, a folder, or an installed package that ships a ``.gguf`` file, and may
be repeated), loads the generation and embedding instances
(``LlamaBackend``), times one profile prompt cold and one sharing its
instruction prefix, then profiles ``--users`` synthetic users with known
tastes and scores the answers (``tools.model_quality``: schema validity, tag
precision, top-tag recall, grounded summaries), embeds the synthetic catalog
and scores its nearest neighbours, and times 8 embeddings.

Prints one JSON object per model (one line each); several models run one
after another, each in a process of its own so that memory figures do not
mix. ``--markdown`` adds a table of them. The prompt is the service's ChatML
prompt; for a Gemma model (``general.architecture`` gemma*) its turns are
rewritten to Gemma's format (``--template`` overrides).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ITEMS = [{"item": "1", "title": "Star Wars (1977)", "tags": ["action", "sci-fi"], "type": "view"}]
MORE = ITEMS + [{"item": "2", "title": "Heat (1995)", "tags": ["action", "crime"], "type": "view"}]
COLUMNS = ("model", "file_mb", "rss_model_mb", "load_s", "cold_profile_ms", "profile_p50_ms",
           "tokens_per_s", "schema_valid", "tag_precision", "top_tag_recall", "summary_grounded",
           "distinct_summaries", "embed_genre_p@3", "embed_8_ms")


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return round((time.perf_counter() - t0) * 1000, 1)


def locate_model(spec: str) -> Path:
    """A ``.gguf`` file from a path, a folder, or an installed package's files."""
    from interest.engine.errors import ModelUnavailable  # noqa: PLC0415
    from interest.engine.llm.model_files import resolve_model_path  # noqa: PLC0415
    path = Path(spec).expanduser()
    if path.is_file():
        return resolve_model_path(path)
    if path.is_dir():
        places = [path]
    else:
        found = importlib.util.find_spec(spec.replace("-", "_"))
        if found is None:
            raise ModelUnavailable(f"{spec!r} is neither a file, a folder nor an installed package")
        places = [Path(p) for p in found.submodule_search_locations or [Path(found.origin).parent]]
    ggufs = sorted(g for p in places for g in p.rglob("*.gguf"))
    if not ggufs:
        raise ModelUnavailable(f"no .gguf file under {', '.join(map(str, places))} (a package "
                               "shipping its file in chunks must be assembled first: pass the file)")
    return resolve_model_path(ggufs[0])


def _prompt_for(template: str):
    from interest.engine.llm import prompts  # noqa: PLC0415
    from interest.tools.model_quality import chatml_to_gemma  # noqa: PLC0415
    convert = chatml_to_gemma if template == "gemma" else (lambda p: p)
    return lambda items, queries, vocab: convert(prompts.profile_prompt(items, queries, vocab))


def measure(config: dict, spec: str | None, args: argparse.Namespace) -> dict:
    from interest.actors.profiles import item_text  # noqa: PLC0415
    from interest.engine.llm import prompts  # noqa: PLC0415
    from interest.engine.llm.backends import LlamaBackend  # noqa: PLC0415
    from interest.engine.llm.model_files import resolve_model_paths  # noqa: PLC0415
    from interest.tools.bench_inference import CATALOG, VOCAB, user_inputs  # noqa: PLC0415
    from interest.tools.model_quality import score_embeddings, score_profiles  # noqa: PLC0415
    if spec:
        config["model"]["path"], config["model"]["embed_path"] = str(locate_model(spec)), ""
    path, _ = resolve_model_paths(config["model"])
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    backend = LlamaBackend.from_config(config)
    arch = str(backend._gen.metadata.get("general.architecture", ""))
    template = args.template if args.template != "auto" else ("gemma" if arch.startswith("gemma") else "chatml")
    rss = psutil.Process().memory_info().rss
    out = {"model": backend.model_id, "architecture": arch, "template": template,
           "file_mb": round(os.path.getsize(path) / 2**20, 1), "load_s": round(time.perf_counter() - t0, 2),
           "rss_after_load_mb": round(rss / 2**20), "rss_model_mb": round((rss - rss0) / 2**20)}
    prompt = _prompt_for(template)
    max_tokens = config["inference"]["max_tokens"]

    def profile(items, queries=(), vocab=VOCAB):
        return backend.complete(prompt(items, queries, vocab), max_tokens=max_tokens,
                                schema=prompts.PROFILE_SCHEMA)
    out["cold_profile_ms"] = _ms(lambda: profile(ITEMS))
    out["shared_prefix_profile_ms"] = _ms(lambda: profile(MORE))
    answers, latencies, tokens = [], [], 0
    for i in range(args.users):
        items, queries = user_inputs(f"quality-{i}", args.seed)
        done = profile(items, queries)
        answers.append((items, done.text))
        latencies.append(done.seconds * 1000)
        tokens += done.completion_tokens
    out["profile_p50_ms"] = round(float(np.median(latencies)), 1)
    out["tokens_per_s"] = round(tokens / (sum(latencies) / 1000), 1)
    out.update(score_profiles(answers))
    out["examples"] = [text for _, text in answers[:2]]
    texts = [item_text(str(i), {"title": t, "tags": list(g)}) for i, (t, g) in enumerate(CATALOG)]
    out.update(score_embeddings(np.array(backend.embed(texts)), [g for _, g in CATALOG]))
    out["embed_8_ms"] = _ms(lambda: backend.embed([f"Movie {i}. Drama." for i in range(8)]))
    out["dim"] = backend.dim
    out["n_threads"] = config["model"]["n_threads"]
    backend.close()
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _in_own_process(spec: str, argv_rest: list[str]) -> dict:
    cmd = [sys.executable, "-m", "interest.tools.bench_model", "--model", spec, *argv_rest]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"model": spec, "error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="interest bench model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="config overlaid on configs/default.toml")
    parser.add_argument("--model", action="append", default=[],
                        help="a .gguf path, a folder or an installed package (repeat to compare)")
    parser.add_argument("--users", type=int, default=12, help="synthetic users profiled for quality")
    parser.add_argument("--seed", type=int, default=7,
                        help="seed of the synthetic users and of sampling (default 7)")
    parser.add_argument("--template", choices=("auto", "chatml", "gemma"), default="auto",
                        help="chat turn format; auto picks gemma for Gemma models, else chatml")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from interest.engine.config import load_config  # noqa: PLC0415
    args = parse_args(argv)
    if len(args.model) > 1:
        rest = [a for a in argv if a != "--markdown"]
        rest = [a for i, a in enumerate(rest) if a != "--model" and (i == 0 or rest[i - 1] != "--model")]
        rows = [_in_own_process(spec, rest) for spec in args.model]
    else:
        rows = [measure(load_config(args.config), args.model[0] if args.model else None, args)]
    for row in rows:
        print(json.dumps(row))
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
