"""A short, honest, natural-language reason for one recommended item.

Built only from the item's per-source contributions (``item_row["sources"]``:
source name -> contribution to the fused score) and the user's state (recent
items, tag weights). A source is mentioned only when its contribution is
positive and among the item's top contributors (at least ``MIN_SHARE`` of the
largest one, at most ``MAX_SOURCES`` of them), so the text never claims a
signal the numbers do not show.
"""

from __future__ import annotations

MIN_SHARE = 0.25
MAX_SOURCES = 3
#: source -> phrase family; tests look for these phrases
PHRASES = {
    "sequential": "often comes next after",
    "collaborative": "liked by people who also",
    "content": "matches your interest in",
    "semantic": "close in meaning to",
    "popularity": "trending now",
    "demographic": "popular among users like you",
}
_VERBS = {"view": "watched", "click": "clicked", "cart": "added to cart",
          "purchase": "bought", "rate": "rated"}
_NOT_POSITIVE = frozenset({"skip", "dislike", "search"})


def reason_sources(item_row: dict) -> list[str]:
    """The sources a reason may mention: positive and among the top contributors."""
    sources = item_row.get("sources") or {}
    positive = [(v, name) for name, v in sources.items()
                if isinstance(v, (int, float)) and v > 0]
    if not positive:
        return []
    top = max(v for v, _ in positive)
    chosen = sorted(positive, key=lambda p: (-p[0], p[1]))
    return [name for v, name in chosen if v >= MIN_SHARE * top][:MAX_SOURCES]


def _title(catalog, item: str) -> str:
    if catalog is None:
        return item
    try:
        return catalog.title_of(item)
    except Exception:  # noqa: BLE001 - a title is decoration
        return item


def _recent(state, n: int = 2) -> list[tuple[str, str]]:
    """The user's ``n`` newest distinct positive items, newest first, with their type."""
    out, seen = [], set()
    for row in reversed(getattr(state, "recent", None) or []):
        item, etype = row[0], row[1]
        if etype in _NOT_POSITIVE or item in seen:
            continue
        seen.add(item)
        out.append((item, etype))
        if len(out) >= n:
            break
    return out


def _verb(recent) -> str:
    """The shared verb of the recent items ("watched"), else a neutral one."""
    verbs = {_VERBS.get(etype, "chose") for _, etype in recent}
    return verbs.pop() if len(verbs) == 1 else "chose"


def _items_phrase(catalog, recent) -> str:
    names = [f'"{_title(catalog, item)}"' for item, _ in recent]
    return " and ".join(names)


def _shared_tags(item: str, catalog, state, n: int = 2) -> list[str]:
    if catalog is None or state is None or not getattr(state, "tags", None):
        return []
    item_tags = set(catalog.tags_of(item))
    if not item_tags:
        return []
    ranked = sorted(((cell[0] + cell[1], tag) for tag, cell in state.tags.items()
                     if tag in item_tags), key=lambda p: (-p[0], p[1]))
    return [tag for w, tag in ranked if w > 0][:n]


def reason(item_row: dict, catalog, state) -> str:
    """E.g. 'liked by people who also watched "X" and "Y"; popular among users like you'."""
    item = item_row.get("item", "")
    parts = []
    recent = _recent(state)
    for name in reason_sources(item_row):
        if name == "sequential":
            if recent:
                verb = _verb(recent)
                parts.append(f"{PHRASES[name]} you {verb} {_items_phrase(catalog, recent)}")
            else:
                parts.append(f"{PHRASES[name]} your recent items")
        elif name == "collaborative":
            if recent:
                verb = _verb(recent)
                parts.append(f"{PHRASES[name]} {verb} {_items_phrase(catalog, recent)}")
            else:
                parts.append(f"{PHRASES[name]} chose what you chose")
        elif name == "content":
            tags = _shared_tags(item, catalog, state)
            parts.append(f"{PHRASES[name]} {' and '.join(tags)}" if tags
                         else f"{PHRASES[name]} its tags")
        elif name == "semantic":
            parts.append(f"{PHRASES[name]} your recent items and profile")
        elif name in PHRASES:
            parts.append(PHRASES[name])
        else:
            parts.append(f"scored by {name}")
    if not parts:
        return "no strong signal: shown to fill the list"
    text = "; ".join(parts)
    return text[0].upper() + text[1:]
