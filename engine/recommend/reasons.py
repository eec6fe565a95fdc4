"""One short, honest, natural-language reason for one recommended item.

Built from the item's per-source contributions (``item_row["sources"]``:
source name -> contribution to the fused score), the user's state and, when
given, the snapshot that scored it. A source is mentioned only when its
contribution is positive and among the item's top contributors (at least
``MIN_SHARE`` of the largest one, at most ``MAX_SOURCES`` of them, the
strongest first), so the text never claims a signal the numbers do not show.

What makes it specific to the item: for the sources that score from the
user's own events (sequential, collaborative, ease, semantic) the reason names,
by title, the event of the user most tied to this item among those that add
most to its score under that source (``driver`` of its scorer, DRIVER_SHARE); for content, the item's own tags that
the user is into; for popularity, the item's rank. Without the snapshot the
reason falls back to the user's newest items.

Across one list (``used``, shared by the reasons of one reply) an item whose
strongest events were already named for an item above it names the next
strong ones instead, when it has any: each named event still adds at least
DRIVER_SHARE of the most any adds to that item, so the sentence stays true,
and ten items driven by the same two films do not read the same ten times.
"""

from __future__ import annotations

from itertools import combinations

from interest.engine.recommend.scorers import tied_of

MIN_SHARE = 0.5
MAX_SOURCES = 2
#: the event named is, among the user's events that add at least this share of the most
#: any adds to the item's score, the one most tied to the item itself (recency aside): the
#: newest event adds most to nearly every item, and would be named ten times
DRIVER_SHARE = 0.25
#: at most this many events named per reason
DRIVERS = 2
#: the strong events a reason may choose its DRIVERS from, to differ from the reasons above
ALTERNATIVES = 4
#: source -> phrase family; tests look for these phrases
PHRASES = {
    "sequential": "often comes next after",
    "collaborative": "liked by people who also",
    "ease": "goes with",
    "content": "matches your interest in",
    "semantic": "close in meaning to",
    "popularity": "trending now",
    "demographic": "popular among users like you",
}
#: sources whose score comes from the user's own items (they have a driving event)
DRIVEN = frozenset({"sequential", "collaborative", "ease", "semantic"})
_VERBS = {"view": "watched", "click": "clicked", "cart": "added to cart",
          "purchase": "bought", "rate": "rated"}
_NOT_POSITIVE = frozenset({"skip", "dislike", "search"})


def reason_sources(item_row: dict) -> list[str]:
    """The sources a reason mentions: positive and among the top contributors."""
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


def _verb(events) -> str:
    """The shared verb of the events ("watched"), else a neutral one."""
    verbs = {_VERBS.get(etype, "chose") for _, etype in events}
    return verbs.pop() if len(verbs) == 1 else "chose"


def _items_phrase(catalog, events) -> str:
    return " and ".join(f'"{_title(catalog, item)}"' for item, _ in events)


def _shared_tags(item: str, catalog, state, n: int = 2) -> list[str]:
    if catalog is None or state is None or not getattr(state, "tags", None):
        return []
    item_tags = set(catalog.tags_of(item))
    if not item_tags:
        return []
    ranked = sorted(((cell[0] + cell[1], tag) for tag, cell in state.tags.items()
                     if tag in item_tags), key=lambda p: (-p[0], p[1]))
    return [tag for w, tag in ranked if w > 0][:n]


def _fresh(strong: list[str], used: set | None) -> list[str]:
    """DRIVERS of the ``strong`` events (most tied first): the first choice not named
    already in this list (``used``), else the most tied; the choice is added to ``used``."""
    default = strong[:DRIVERS]
    if used is None or not default:
        return default
    size = len(default)
    choices = [default, *(list(c) for c in combinations(strong, size) if list(c) != default)]
    chosen = next((c for c in choices if frozenset(c) not in used), default)
    used.add(frozenset(chosen))
    return chosen


def _driver(models, state, name: str, item: str,
            used: set | None = None) -> list[tuple[str, str]]:
    """[(an event item of the user that drives ``item`` under source ``name``, its type)]:
    the DRIVERS most tied to the item among the strong contributors, preferring a pair
    not named above in the same list (the one closest in meaning for the semantic
    source)."""
    if models is None or state is None or name not in models.names:
        return []
    scorer = models.scorer(name)
    q, _ = models.query(state)
    if hasattr(scorer, "contributions"):
        strong = [row[0] for row in tied_of(scorer.contributions(q, item), DRIVER_SHARE,
                                             ALTERNATIVES)]
        found = _fresh(strong, used)
    elif hasattr(scorer, "driver"):
        hit = scorer.driver(q, item)
        found = [hit[0]] if hit else []
    else:
        return []
    types = {row[0]: row[1] for row in state.recent}
    return [(a, types.get(a, "view")) for a in found]


def _clause(name: str, item: str, catalog, state, models, used: set | None = None) -> str:
    events = _driver(models, state, name, item, used) if name in DRIVEN else []
    if name in DRIVEN and not events and name != "semantic":
        events = _recent(state)
    phrase = PHRASES.get(name)
    if name == "sequential":
        return (f"{phrase} you {_verb(events)} {_items_phrase(catalog, events)}" if events
                else f"{phrase} your recent items")
    if name == "collaborative":
        return (f"{phrase} {_verb(events)} {_items_phrase(catalog, events)}" if events
                else f"{phrase} chose what you chose")
    if name == "ease":
        return (f"{phrase} {_items_phrase(catalog, events)} in what you {_verb(events)}"
                if events else f"{phrase} what you chose")
    if name == "semantic":
        return (f"{phrase} {_items_phrase(catalog, events)}" if events
                else f"{phrase} your recent items and profile")
    if name == "content":
        tags = _shared_tags(item, catalog, state)
        return f"{phrase} {' and '.join(tags)}" if tags else f"{phrase} its tags"
    if name == "popularity" and models is not None:
        rank = models.scorer(name).rank(models.position(item)) if name in models.names \
            else None
        return f"{phrase} (#{rank} of the most chosen lately)" if rank else phrase
    return phrase or f"scored by {name}"


def reason(item_row: dict, catalog, state, models=None, used: set | None = None) -> str:
    """E.g. 'Often comes next after you rated "X" (Crime, Thriller); trending now (#4 ...)'.

    ``models``: the snapshot that scored the row; with it, the event named is the one
    that drives this item's score under the strongest source. The item's own tags that
    the user is into follow the first clause (unless content, which names them, leads).
    ``used``: one set shared by the reasons of one list (see the module doc)."""
    item = item_row.get("item", "")
    names = reason_sources(item_row)
    parts = [_clause(name, item, catalog, state, models, used) for name in names]
    if not parts:
        return "no strong signal: shown to fill the list"
    if names[0] != "content" and "content" not in names[1:]:
        tags = _shared_tags(item, catalog, state)
        if tags:
            parts[0] += f" ({', '.join(tags)})"
    text = "; ".join(parts)
    return text[0].upper() + text[1:]
