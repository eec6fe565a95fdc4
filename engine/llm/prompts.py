"""Prompt templates for the language model, and the schema of what it returns.

Layout matters for speed: llama.cpp keeps the KV cache of the previous prompt
and reuses the longest matching token prefix. So every profile prompt starts
with the same bytes (instructions, output format, the catalog's tag
vocabulary) and ends with the user-specific part (recent items and searches).
Consecutive refreshes of different users then only evaluate their own tail.

The model is an instruct model with the ChatML template (SmolLM2 uses
``<|im_start|>role\\n ... <|im_end|>``). We format the chat by hand so the
prompt is a plain string we control byte for byte (no Jinja, no surprises in
the shared prefix).

Bump ``TEMPLATE_VERSION`` whenever the text, the schema or the parsing
changes: it is part of every result-cache key, so old results are not reused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TEMPLATE_VERSION = "profile-v2"
TASK_PROFILE = "profile"
TASK_EMBED = "embed"
EMBED_VERSION = "embed-v1"      # cache version of embeddings (mean pooled, L2-normalised)

MAX_TAGS = 5
MAX_TAG_CHARS = 24
MAX_SUMMARY_CHARS = 120
MAX_VOCABULARY = 120          # tags of the catalog vocabulary put in the prompt
MAX_ITEMS = 20                # most recent items put in the prompt
MAX_ITEM_TAGS = 3              # per item line; the "Frequent tags" line counts them all
MAX_TITLE_CHARS = 80
MAX_QUERIES = 5
MAX_QUERY_CHARS = 60

PROFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tags": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_CHARS},
            "minItems": 1,
            "maxItems": MAX_TAGS,
        },
        "summary": {"type": "string", "minLength": 1, "maxLength": MAX_SUMMARY_CHARS},
    },
    "required": ["tags", "summary"],
    "additionalProperties": False,
}

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

_SYSTEM_HEAD = (
    "You describe a user's interests for a recommender system. "
    "You get the items the user interacted with recently (oldest first, newest last) "
    "and their recent searches. Answer with one JSON object with two keys: "
    '"tags" (up to ' + str(MAX_TAGS) + ' short interest tags, no repeats) and "summary" '
    "(one sentence in your own words about what the user likes). "
    "Prefer tags from the vocabulary; a short free phrase is allowed when none fits. "
    "Recent items and searches matter most.\n"
)

# One worked example, as chat turns: tiny models follow a demonstration far
# better than a description. It is part of the shared prefix, so it costs
# nothing per user once cached.
_EXAMPLE_USER = (
    "Recent items:\n"
    "1. The Fellowship of the Ring [fantasy, adventure] (view)\n"
    "2. Dune [sci-fi, adventure] (view)\n"
    "3. The Hobbit [fantasy, adventure, children] (purchase)\n"
    "Frequent tags: adventure (3), fantasy (2), children (1), sci-fi (1)\n"
    "Recent searches: dragons\n"
    "Describe this user's interests as JSON."
)
_EXAMPLE_ANSWER = (
    '{"tags": ["fantasy", "adventure", "epic quests", "dragons"], '
    '"summary": "Enjoys epic fantasy adventures with quests, magic and dragons."}'
)


def _clean(text: Any, limit: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


def cap_vocabulary(vocabulary: Iterable[str], limit: int = MAX_VOCABULARY) -> list[str]:
    """The first ``limit`` distinct tags (caller order = importance), then sorted.

    Sorting after capping makes the prompt prefix depend only on the *set* of
    tags kept, so callers passing the same vocabulary in another order still
    share the cached prefix.
    """
    seen: dict[str, None] = {}
    for tag in vocabulary:
        t = _clean(tag, MAX_TAG_CHARS).lower()
        if t and t not in seen:
            seen[t] = None
            if len(seen) >= limit:
                break
    return sorted(seen)


def shared_prefix(vocabulary: Sequence[str], vocab_limit: int = MAX_VOCABULARY) -> str:
    """The user-independent head of the profile prompt (system turn)."""
    vocab = cap_vocabulary(vocabulary, vocab_limit)
    vocab_line = ", ".join(vocab) if vocab else "(none)"
    return (
        f"{IM_START}system\n{_SYSTEM_HEAD}Vocabulary: {vocab_line}{IM_END}\n"
        f"{IM_START}user\n{_EXAMPLE_USER}{IM_END}\n"
        f"{IM_START}assistant\n{_EXAMPLE_ANSWER}{IM_END}\n"
    )


def _item_line(n: int, item: Mapping[str, Any], show_type: bool) -> str:
    title = _clean(item.get("title") or item.get("item") or "?", MAX_TITLE_CHARS)
    tags = [_clean(t, MAX_TAG_CHARS) for t in list(item.get("tags") or [])[:MAX_ITEM_TAGS]]
    line = f"{n}. {title}"
    if tags:
        line += f" [{', '.join(tags)}]"
    kind = item.get("type")
    if kind and show_type:
        line += f" ({_clean(kind, 16)})"
    return line


def user_part(items: Sequence[Mapping[str, Any]], queries: Sequence[str]) -> str:
    """The user-specific tail: user turn plus the opened assistant turn.

    Kept short, since every token of it is evaluated for each refresh (the shared
    prefix is not): at most ``MAX_ITEM_TAGS`` tags per item, the event type once in
    the heading when every item has the same one, no searches line without searches.
    """
    recent = list(items)[-MAX_ITEMS:]
    kinds = {_clean(it.get("type") or "", 16) for it in recent}
    same = kinds.pop() if len(kinds) == 1 else ""
    lines = [f"Recent items ({same}):" if same else "Recent items:"]
    if recent:
        lines += [_item_line(i + 1, it, not same) for i, it in enumerate(recent)]
    else:
        lines.append("(none)")
    counts: dict[str, int] = {}
    for it in recent:
        for t in list(it.get("tags") or []):
            t = _clean(t, MAX_TAG_CHARS).lower()
            if t:
                counts[t] = counts.get(t, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
    if top:
        lines.append("Frequent tags: " + ", ".join(f"{t} ({n})" for t, n in top))
    qs = [_clean(q, MAX_QUERY_CHARS) for q in list(queries)[-MAX_QUERIES:] if str(q).strip()]
    if qs:
        lines.append("Recent searches: " + "; ".join(qs))
    body = "\n".join(lines)
    return (
        f"{IM_START}user\n{body}\nDescribe this user's interests as JSON.{IM_END}\n"
        f"{IM_START}assistant\n"
    )


def profile_prompt(
    items: Sequence[Mapping[str, Any]],
    queries: Sequence[str],
    vocabulary: Sequence[str],
    vocab_limit: int = MAX_VOCABULARY,
) -> str:
    """The full profile prompt: ``shared_prefix(vocabulary) + user_part(...)``."""
    return shared_prefix(vocabulary, vocab_limit) + user_part(items, queries)


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)


def input_hash(*parts: Any, **named: Any) -> str:
    """Hex sha256 over a canonical JSON encoding of the inputs.

    Mappings are key-sorted, tuples and lists are the same, so equal inputs
    hash equal regardless of dict order or sequence type.
    """
    payload = {"args": _canonical(list(parts)), "kw": _canonical(named)}
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def profile_input_hash(
    items: Sequence[Mapping[str, Any]],
    queries: Sequence[str],
    vocabulary: Sequence[str],
    *,
    max_tokens: int,
    vocab_limit: int = MAX_VOCABULARY,
) -> str:
    """Hash of exactly what the profile prompt and generation depend on."""
    return input_hash(
        TASK_PROFILE,
        TEMPLATE_VERSION,
        profile_prompt(items, queries, vocabulary, vocab_limit),
        max_tokens=int(max_tokens),
    )


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ProfileParseError(ValueError):
    """The model's text is not a usable profile object."""


_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _normalise_tags(raw: Iterable[Any]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for t in raw:
        if not isinstance(t, str):
            continue
        tag = " ".join(t.split()).strip(" .,;:").lower()[:MAX_TAG_CHARS]
        if tag and tag not in out:
            out[tag] = None
        if len(out) >= MAX_TAGS:
            break
    return tuple(out)


def parse_profile(text: str) -> tuple[tuple[str, ...], str]:
    """``(tags, summary)`` from the model's JSON text.

    Grammar-constrained output is valid JSON unless generation hit
    ``max_tokens``; then we salvage what is complete (closed tag strings and a
    partial summary). Raises ``ProfileParseError`` if nothing usable remains.
    """
    text = text.strip()
    obj: Any = None
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        tags = _normalise_tags(obj.get("tags") or [])
        summary = obj.get("summary")
        summary = " ".join(summary.split())[:MAX_SUMMARY_CHARS] if isinstance(summary, str) else ""
        if tags or summary:
            return tags, summary
        raise ProfileParseError(f"empty profile: {text[:200]!r}")
    # Salvage a truncated object.
    tags: tuple[str, ...] = ()
    summary = ""
    m = re.search(r'"tags"\s*:\s*\[(.*?)(\]|$)', text, re.S)
    if m:
        tags = _normalise_tags(json.loads(f'"{s}"') for s in _STRING_RE.findall(m.group(1)))
    m = re.search(r'"summary"\s*:\s*"((?:[^"\\]|\\.)*)', text, re.S)
    if m:
        frag = m.group(1)
        try:
            summary = json.loads(f'"{frag}"')
        except ValueError:
            summary = frag.replace('\\"', '"')
        summary = " ".join(summary.split())[:MAX_SUMMARY_CHARS]
    if not tags and not summary:
        raise ProfileParseError(f"unparseable profile output: {text[:200]!r}")
    return tags, summary


def validate_profile(obj: Any) -> list[str]:
    """Problems of ``obj`` against ``PROFILE_SCHEMA`` (empty list = valid)."""
    problems: list[str] = []
    if not isinstance(obj, dict):
        return [f"not an object: {type(obj).__name__}"]
    extra = set(obj) - {"tags", "summary"}
    if extra:
        problems.append(f"unexpected keys {sorted(extra)}")
    tags = obj.get("tags")
    if not isinstance(tags, list):
        problems.append("tags is not a list")
    else:
        if not 1 <= len(tags) <= MAX_TAGS:
            problems.append(f"{len(tags)} tags, want 1..{MAX_TAGS}")
        for t in tags:
            if not isinstance(t, str) or not 1 <= len(t) <= MAX_TAG_CHARS:
                problems.append(f"bad tag {t!r}")
    summary = obj.get("summary")
    if not isinstance(summary, str) or not 1 <= len(summary) <= MAX_SUMMARY_CHARS:
        problems.append(f"bad summary {summary!r}")
    return problems
