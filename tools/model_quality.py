"""How good a model's profiles and embeddings are, on users whose tastes are known.

Used by ``interest bench model`` to compare GGUF models on the same footing.
The users come from the inference benchmark's synthetic catalog (titles with
MovieLens genres): each user's items carry tags, so what the model should say
is known.

Profile scores, over all users:

* ``schema_valid``: the raw answer is JSON that meets ``PROFILE_SCHEMA``;
* ``tag_precision``: share of the answer's tags that are among the tags of
  the user's items (the rest are made up, or generic);
* ``top_tag_recall``: share of users whose most frequent item tag is among
  the answer's tags;
* ``summary_grounded``: share of summaries that name at least one of the
  user's item tags (or a title word of one of the items);
* ``distinct_summaries``: distinct summaries per user (1.0: none repeated).

Embedding score: ``embed_genre_p@3``, for each catalog item embedded from its
text (as the service embeds items), the share of its 3 nearest other items
that share a genre with it; ``embed_genre_random`` is what random neighbours
would score.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from interest.engine.llm import prompts
from interest.engine.llm.schema_check import schema_problems

_SYNONYMS = {"sci-fi": ("science fiction", "sci fi", "scifi", "space"), "film-noir": ("noir",),
             "children": ("kids", "family", "child"), "musical": ("music",), "romance": ("romantic", "love"),
             "comedy": ("comedies", "funny"), "horror": ("scary",), "war": ("wars",)}
_WORD = re.compile(r"[a-z]+")


def chatml_to_gemma(prompt: str) -> str:
    """The ChatML profile prompt in Gemma's turn format (no system role: a user turn)."""
    return (prompt.replace(f"{prompts.IM_START}system\n", "<start_of_turn>user\n")
            .replace(f"{prompts.IM_START}user\n", "<start_of_turn>user\n")
            .replace(f"{prompts.IM_START}assistant\n", "<start_of_turn>model\n")
            .replace(prompts.IM_END, "<end_of_turn>"))


def _item_tags(items: Sequence[Mapping[str, Any]]) -> Counter:
    return Counter(t.lower() for it in items for t in it.get("tags") or ())


def _mentions(summary: str, items: Sequence[Mapping[str, Any]]) -> bool:
    text = summary.lower()
    for tag in _item_tags(items):
        if tag in text or any(s in text for s in _SYNONYMS.get(tag, ())):
            return True
    title_words = {w for it in items for w in _WORD.findall(str(it.get("title", "")).lower()) if len(w) > 3}
    return bool(title_words & set(_WORD.findall(text)))


def score_profiles(answers: Sequence[tuple[Sequence[Mapping[str, Any]], str]]) -> dict[str, float]:
    """Scores of ``(items, raw model text)`` pairs (see the module doc)."""
    valid = grounded_tags = all_tags = top_hits = grounded = 0
    summaries = []
    for items, text in answers:
        try:
            valid += not schema_problems(json.loads(text), prompts.PROFILE_SCHEMA)
        except ValueError:
            pass
        try:
            tags, summary = prompts.parse_profile(text)
        except prompts.ProfileParseError:
            tags, summary = (), ""
        counts = _item_tags(items)
        all_tags += len(tags)
        grounded_tags += sum(t in counts for t in tags)
        top = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0] if counts else None
        top_hits += top in tags
        grounded += bool(summary) and _mentions(summary, items)
        summaries.append(summary)
    n = max(1, len(answers))
    return {
        "schema_valid": round(valid / n, 3),
        "tag_precision": round(grounded_tags / all_tags, 3) if all_tags else 0.0,
        "top_tag_recall": round(top_hits / n, 3),
        "summary_grounded": round(grounded / n, 3),
        "distinct_summaries": round(len(set(summaries)) / n, 3),
    }


def score_embeddings(vectors: np.ndarray, genres: Sequence[Sequence[str]], k: int = 3) -> dict[str, float]:
    """Genre precision of each item's ``k`` nearest neighbours by cosine, and its random baseline."""
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    sets = [set(g) for g in genres]
    n = len(sets)
    hits = [sum(bool(sets[i] & sets[j]) for j in np.argsort(-sims[i])[:k]) / k for i in range(n)]
    shared = [sum(bool(sets[i] & sets[j]) for j in range(n) if j != i) / (n - 1) for i in range(n)]
    return {f"embed_genre_p@{k}": round(float(np.mean(hits)), 3),
            "embed_genre_random": round(float(np.mean(shared)), 3)}
