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

A profile is journaled as an ``item_profile`` event and kept in the item's
catalog record (``engine.journal.catalog_records``) with ``source_hash``: the
hash of what the prompt showed of the item (title and tags). It is current
while the record still hashes the same (``current_profile``); an ``item``
update that changes the title or tags makes it stale. A change of the
catalog's ``text`` alone does not: the prompt never shows it (the same prompt
would give the same profile), and ``profile_text`` reads the text from the
record, so the new text is embedded with the profile kept. A journaled profile
is reused whatever model wrote it (``model`` says which): profiling the
catalog again after a model upgrade would be a deliberate step, not a
side effect of a restart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from interest.engine.journal.catalog_records import PROFILE_KEY

#: The inference actor's per-"user" key of an item's profile job (pending jobs of one key
#: coalesce). It starts with NUL, which no user id may contain, so no user shares it.
ITEM_KEY_PREFIX = "\x00item:"
ITEM_EVENT = "item"         # the prompt's event type for the item line


@dataclass(frozen=True, slots=True)
class ItemProfile:
    item: str
    keywords: tuple[str, ...]
    description: str
    model: str
    input_hash: str
    source_hash: str = ""


def profile_key(item: str) -> str:
    return ITEM_KEY_PREFIX + item


def prompt_items(item: str, record: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The one-item history the profile prompt is built from."""
    return ({"item": item, "title": record.get("title") or item,
             "tags": list(record.get("tags") or ()), "type": ITEM_EVENT},)


def source_hash(item: str, record: dict[str, Any]) -> str:
    """Hex sha256 of what the profile prompt shows of the item (``prompt_items``)."""
    data = json.dumps(prompt_items(item, record)[0], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def current_profile(item: str, record: dict[str, Any] | None) -> ItemProfile | None:
    """The profile journaled for ``record``'s present title and tags, or None (no profile
    yet, or a stale one: the item changed since it was written)."""
    stored = (record or {}).get(PROFILE_KEY)
    if not isinstance(stored, dict) or stored.get("source_hash") != source_hash(item, record):
        return None
    return ItemProfile(item, tuple(stored.get("keywords") or ()), stored.get("description") or "",
                       stored.get("model") or "", stored.get("input_hash") or "",
                       stored["source_hash"])


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
