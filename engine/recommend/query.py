"""What a source may read about the user asking, and the small pure helpers around it.

Pure functions and plain data: safe on any thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interest.engine.recommend.fusion import context_of, segment_of

#: event types that are not positive interactions with an item
NOT_POSITIVE = frozenset({"skip", "dislike", "search"})


@dataclass(slots=True)
class Query:
    """What a source may read about the user asking."""

    user: str | None
    recent: list            # the user's recent positive items, oldest first
    tags: list = field(default_factory=list)    # state.tag_weights rows
    attrs: dict | None = None
    profile: dict | None = None
    context: str = "visit"  # fusion context (engine.recommend.fusion.context_of)


def query_of(state, params, attrs: dict | None, use_llm: bool) -> tuple[Query, str]:
    """The query and fusion segment for a user's interest state (``None``: unknown user)."""
    if state is None or state.events == 0:
        user = state.user if state is not None else None
        return Query(user=user, recent=[], attrs=attrs), "cold"
    rows = [row for row in state.recent if row[1] not in NOT_POSITIVE]
    recent = [row[0] for row in rows]
    tags = state.tag_weights(params) if state.tags else []
    gap = float(rows[-1][2]) - float(rows[-2][2]) if len(rows) >= 2 else None
    q = Query(user=state.user, recent=recent, tags=tags, attrs=attrs,
              profile=state.profile if use_llm else None, context=context_of(gap))
    return q, segment_of(state.events)


def recency(items: list, n: int, decay: float) -> list[tuple]:
    """(item, weight) for the last ``n`` distinct items, newest first."""
    out, seen = [], set()
    w = 1.0
    for item in reversed(items):
        if item in seen:
            continue
        seen.add(item)
        out.append((item, w))
        w *= decay
        if len(out) >= n:
            break
    return out


def tag_blend(rows: list, short_share: float) -> dict[str, float]:
    """The user's tag weights: short- and long-term weights, each scaled by its max, blended."""
    if not rows:
        return {}
    top_s = max((abs(r["short"]) for r in rows), default=0.0) or 1.0
    top_l = max((abs(r["long"]) for r in rows), default=0.0) or 1.0
    a = short_share
    return {r["tag"]: a * r["short"] / top_s + (1 - a) * r["long"] / top_l for r in rows}


def age_bucket(age) -> str | None:
    try:
        age = int(age)
    except (TypeError, ValueError):
        return None
    for limit, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"),
                        (56, "45-55")):
        if age < limit:
            return name
    return "56+"


def segments_of(attrs: dict | None) -> list[str]:
    """Attribute segments of a user: age bucket x gender, gender, occupation, age."""
    if not attrs:
        return []
    out = []
    age = age_bucket(attrs.get("age"))
    gender = attrs.get("gender")
    occupation = attrs.get("occupation")
    if age and gender:
        out.append(f"age*gender:{age}*{gender}")
    if age:
        out.append(f"age:{age}")
    if gender:
        out.append(f"gender:{gender}")
    if occupation:
        out.append(f"occupation:{occupation}")
    for key in sorted(attrs):
        if key not in ("age", "gender", "occupation", "zip") and isinstance(attrs[key], str):
            out.append(f"{key}:{attrs[key]}")
    return out
