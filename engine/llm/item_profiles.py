"""LLM-written item profiles: keywords and a one-line description per catalog item.

An item's profile is the model's profile of a user who has interacted with
that one item: the same prompt, schema and parsing as user profiles, with the
item as the only recent item. That reuses the whole inference path unchanged
(priority classes, deadlines, the result cache keyed by the prompt's input
hash, so an item is generated once per model and catalog vocabulary) and
writes the description in the register of user summaries ("Enjoys tense
science fiction ..."), which is what the semantic source compares item
vectors with.

The profile enriches the text the item's embedding is computed from
(``profile_text``): title, tags, the model's description and keywords, then
the catalog's own text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ITEM_KEY_PREFIX = "item:"   # the inference actor's per-"user" key of an item's profile job
ITEM_EVENT = "item"         # the prompt's event type for the item line


@dataclass(frozen=True, slots=True)
class ItemProfile:
    item: str
    keywords: tuple[str, ...]
    description: str
    model: str
    input_hash: str


def profile_key(item: str) -> str:
    return ITEM_KEY_PREFIX + item


def prompt_items(item: str, record: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The one-item history the profile prompt is built from."""
    return ({"item": item, "title": record.get("title") or item,
             "tags": list(record.get("tags") or ()), "type": ITEM_EVENT},)


def profile_text(item: str, record: dict[str, Any], profile: ItemProfile | None) -> str:
    """What the item's embedding is computed from: catalog fields, enriched by the profile."""
    tags = ", ".join(record.get("tags") or ())
    parts = [f"{record.get('title') or item}.", f"{tags}." if tags else ""]
    if profile is not None:
        parts.append(profile.description)
        extra = [k for k in profile.keywords if k not in (record.get("tags") or ())]
        if extra:
            parts.append(f"Keywords: {', '.join(extra)}.")
    parts.append(str(record.get("text") or ""))
    return " ".join(p for p in parts if p).strip()
