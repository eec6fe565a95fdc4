"""The decision path behind a user's interests and an item's score.

Tag weights are sums of decayed event weights, so replaying the user's
journal gives each event's exact share of each tag as of the user's last
event: ``contribution = weight * 2**(-(as_of - ts) / half_life)``.
"""

from __future__ import annotations

from engine.events import PROFILE_TYPE
from engine.state import InterestState, decay


def tag_contributions(state: InterestState, entries, params) -> dict[str, list[dict]]:
    """Per tag, every event that added to it, with its weight and decayed shares."""
    replayed = InterestState(user=state.user)
    as_of = state.last_ts
    out: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.seq > state.version:
            break
        event = entry.event
        if event["type"] != PROFILE_TYPE and entry.tags:
            weight = replayed.event_weight(event, params)
            dt = (as_of or event["ts"]) - event["ts"]
            row = {
                "id": event["id"], "seq": entry.seq, "type": event["type"],
                "item": event.get("item"), "ts": event["ts"], "weight": weight,
                "short": decay(weight, dt, params.short_half_life_s),
                "long": decay(weight, dt, params.long_half_life_s),
            }
            for tag in entry.tags:
                out.setdefault(tag, []).append(row)
        replayed.update(entry, params)
    return out


def explain_user(state: InterestState, env, item: str | None = None, max_tags: int = 20) -> dict:
    params = env.params
    contributions = tag_contributions(state, env.store.read(state.user), params)
    tags = []
    for row in state.tag_weights(params)[:max_tags]:
        events = sorted(contributions.get(row["tag"], []),
                        key=lambda e: -(e["short"] + e["long"]))
        tags.append({**row, "events": events})
    reply = {"user": state.user, "version": state.version, "events": state.events,
             "as_of": state.last_ts, "tags": tags, "profile": _profile(state)}
    if item is not None:
        reply["item"] = explain_item(state, env, item)
    return reply


def _profile(state: InterestState) -> dict | None:
    if state.profile is None:
        return None
    profile = dict(state.profile)
    profile.pop("embedding", None)
    return profile


def explain_item(state: InterestState, env, item: str) -> dict:
    """The item's score source by source, the fusion weights and its rank."""
    return env.recommender.explain(state, item)
