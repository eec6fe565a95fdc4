"""The decision path behind a user's interests and an item's score.

Tag weights are sums of decayed event weights, so replaying the user's
journal gives each event's exact share of each tag as of the user's last
event. The fold adds an event to a tag cell at the cell's time
``max(cell ts, event ts)`` (an out-of-order event is not decayed back in
time), so an event's share is ``weight * 2**(-(as_of - t) / half_life)`` with
``t`` that effective time; the shares of a tag add up to its short and long
weights (up to float rounding).

``explain_user`` also returns the event timeline (weight, ts, tags of every
behaviour event), the model profiles over time, and for an item its
per-source score, a short reason and a counterfactual: the item's rank when
the user's strongest contributing event is left out of the user's state.

Every map in the reply that names an ``item`` has the item's catalog
``title`` beside it (None for an item the catalog does not know), and every
event row of a ``rate`` has its ``value`` (the rating), so that a reader
never has to look an id up.
"""

from __future__ import annotations

from interest.engine.journal.events import DERIVED_TYPES, FORGET_TYPE, PROFILE_TYPE
from interest.engine.recommend.reasons import reason
from interest.engine.projections.state import InterestState, decay, replay

#: at most this many timeline events in an explain reply (the newest are kept)
MAX_TIMELINE = 5000


def _walk(state: InterestState, entries, params):
    """Replay the journal up to ``state.version``; yield (entry, weight, {tag: eff_ts})."""
    replayed = InterestState(user=state.user)
    for entry in entries:
        if entry.seq > state.version:
            break
        event = entry.event
        if event["type"] not in DERIVED_TYPES and entry.seq > replayed.version:
            weight = replayed.event_weight(event, params)
            ts = float(event["ts"])
            eff = {}
            for tag in entry.tags:
                cell = replayed.tags.get(tag)
                eff[tag] = ts if cell is None else max(ts, cell[2])
            yield entry, weight, eff
        else:
            yield entry, None, None
        replayed.update(entry, params)


def tag_contributions(state: InterestState, entries, params) -> dict[str, list[dict]]:
    """Per tag, every event that added to it, with its weight and decayed shares."""
    as_of = state.last_ts
    out: dict[str, list[dict]] = {}
    for entry, weight, eff in _walk(state, entries, params):
        if weight is None or not entry.tags:
            continue
        event = entry.event
        for tag in dict.fromkeys(entry.tags):
            # the fold adds the weight once per occurrence of the tag
            n = sum(1 for t in entry.tags if t == tag)
            dt = (as_of if as_of is not None else eff[tag]) - eff[tag]
            out.setdefault(tag, []).append({
                "id": event["id"], "seq": entry.seq, "type": event["type"],
                "item": event.get("item"), "value": event.get("value"), "ts": event["ts"],
                "weight": weight,
                "short": n * decay(weight, dt, params.short_half_life_s),
                "long": n * decay(weight, dt, params.long_half_life_s),
            })
    return out


def timeline(state: InterestState, entries, params) -> tuple[list[dict], list[dict]]:
    """(behaviour events, model profiles), oldest first, from a journal replay."""
    events, profiles = [], []
    for entry, weight, _ in _walk(state, entries, params):
        event = entry.event
        if event["type"] == PROFILE_TYPE:
            profiles.append({"at": float(event["ts"]), "version": entry.seq,
                             "summary": event.get("summary") or "",
                             "model": event.get("model") or "",
                             "tags": list(event.get("tags") or ())})
        elif event["type"] == FORGET_TYPE:
            profiles.clear()        # nothing before an erasure is left (see the journal)
        else:
            events.append({"id": event["id"], "seq": entry.seq, "type": event["type"],
                           "item": event.get("item"), "value": event.get("value"),
                           "query": event.get("query"),
                           "ts": float(event["ts"]), "weight": weight,
                           "tags": list(entry.tags)})
    return events, profiles


def explain_user(state: InterestState, env, item: str | None = None, max_tags: int = 20) -> dict:
    params = env.params
    entries = list(env.store.read(state.user)) if state.version else []
    contributions = tag_contributions(state, entries, params)
    tags = []
    for row in state.tag_weights(params)[:max_tags]:
        events = sorted(contributions.get(row["tag"], []),
                        key=lambda e: -(e["short"] + e["long"]))
        tags.append({**row, "events": events})
    events, profiles = timeline(state, entries, params)
    reply = {"user": state.user, "version": state.version, "events": state.events,
             "as_of": state.last_ts, "tags": tags, "profile": _profile(state),
             "timeline": events[-MAX_TIMELINE:],
             "timeline_truncated": len(events) > MAX_TIMELINE,
             "profiles": profiles,
             "half_lives": {"short": params.short_half_life_s, "long": params.long_half_life_s}}
    reply["recommendations"] = recommendations(state, env)
    if item is not None:
        reply["item"] = explain_item(state, env, item, entries, contributions)
    return with_titles(reply, snapshot_of(env.recommender).catalog)


def with_titles(obj, catalog):
    """``obj`` with ``title`` put right after ``item`` in every map that names one."""
    if isinstance(obj, list):
        return [with_titles(v, catalog) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        out[key] = with_titles(value, catalog)
        if key == "item" and isinstance(value, str) and "title" not in obj:
            out["title"] = title_of(catalog, value)
    return out


def title_of(catalog, item: str) -> str | None:
    """The item's catalog title, None when the catalog does not know it (or has none)."""
    record = catalog.get(item) if catalog is not None else None
    return (record.get("title") or None) if record else None


def recommendations(state: InterestState, env, k: int = 10) -> dict:
    """The top-``k`` the user would get now, each with a reason.

    Ranked like ``Models.recommend`` but without its side effect (the served
    list it hands the learner to credit the sources with), so asking for an
    explanation never changes the online fusion weights. ``env.recommender`` is
    a ``Models`` snapshot or a ``Recommender``; either way one snapshot answers,
    on the calling thread, without locks.
    """
    models = snapshot_of(env.recommender)
    reply = models.recommend(state, k=k)
    used: set = set()              # events named so far: reasons down the list differ
    for row in reply["items"]:
        row["reason"] = reason(row, models.catalog, state, models=models, used=used)
    return {"items": reply["items"], "strategy": reply["strategy"], "weights": reply["weights"]}


def snapshot_of(recommender):
    """The ``Models`` to explain from: ``env.recommender`` itself when it is a snapshot,
    else the current snapshot of a ``Recommender``."""
    return recommender.snapshot() if hasattr(recommender, "snapshot") else recommender


def _profile(state: InterestState) -> dict | None:
    if state.profile is None:
        return None
    profile = dict(state.profile)
    profile.pop("embedding", None)
    return profile


def strongest_event(state: InterestState, env, item: str, entries,
                    contributions: dict | None = None) -> tuple[dict | None, str]:
    """The user's event that contributes most to ``item``, and on what basis.

    Basis ``item_tags``: the largest share (short + long) of the item's tags;
    else ``all_tags``: the largest share of all the user's tags; else
    ``latest``: the newest event with an item (it drives the item-to-item sources).
    """
    if contributions is None:
        contributions = tag_contributions(state, entries, env.params)
    catalog = env.recommender.catalog
    for basis, tags in (("item_tags", dict.fromkeys(catalog.tags_of(item))),
                        ("all_tags", contributions)):
        totals: dict[int, list] = {}
        for tag in tags:
            for row in contributions.get(tag, ()):
                cell = totals.setdefault(row["seq"], [0.0, row])
                cell[0] += row["short"] + row["long"]
        positive = [cell for cell in totals.values() if cell[0] > 0]
        if positive:
            best = max(positive, key=lambda c: (c[0], c[1]["seq"]))[1]
            return _event_row(best), basis
    for entry in reversed(entries):
        if entry.seq <= state.version and entry.event["type"] != PROFILE_TYPE \
                and entry.event.get("item") is not None:
            return _event_row({"id": entry.event["id"], "seq": entry.seq,
                               "type": entry.event["type"], "item": entry.event.get("item"),
                               "value": entry.event.get("value"),
                               "ts": entry.event["ts"]}), "latest"
    return None, "none"


def _event_row(row: dict) -> dict:
    return {k: row.get(k) for k in ("id", "seq", "type", "item", "value", "ts")}


def counterfactual(state: InterestState, env, item: str, entries,
                   contributions: dict | None = None) -> dict | None:
    """The item's rank with the user's strongest contributing event left out.

    Only the user's state is replayed without the event; the shared source
    models (which learned from every user's events) are left as they are.
    """
    removed, basis = strongest_event(state, env, item, entries, contributions)
    if removed is None:
        return None
    kept = [e for e in entries if e.seq <= state.version and e.seq != removed["seq"]]
    without = replay(state.user, kept, env.params)
    models = snapshot_of(env.recommender)
    rank = models.explain(state, item)["rank"]
    rank_without = models.explain(without, item)["rank"]
    event_tags = next((e.tags for e in entries if e.seq == removed["seq"]), ())
    shared = [tag for tag in models.catalog.tags_of(item) if tag in event_tags]
    return {"removed_event": removed, "basis": basis, "shared_tags": shared, "rank": rank,
            "rank_without": rank_without}


def explain_item(state: InterestState, env, item: str, entries=None,
                 contributions: dict | None = None) -> dict:
    """The item's score source by source, the fusion weights, its rank, a reason
    and the counterfactual rank without the user's strongest contributing event."""
    models = snapshot_of(env.recommender)
    out = models.explain(state, item)
    out["content_tags"] = content_tag_split(state, models, item,
                                            out["sources"].get("content", 0.0))
    out["reason"] = reason(out, models.catalog, state, models=models)
    if entries is None:
        entries = list(env.store.read(state.user)) if state.version else []
    out["counterfactual"] = counterfactual(state, env, item, entries, contributions)
    return out


def content_tag_split(state: InterestState, models, item: str, contribution: float) -> dict:
    """The content source's contribution to ``item``, split by tag.

    The content score is a dot product of the item's tag vector with the
    user's normalised tag weights, so each shared tag's term is its exact
    share; the shares add up to ``contribution``.
    """
    if not contribution:
        return {}
    terms = snapshot_of(models).content_terms(state, item)
    total = sum(terms.values())
    return {tag: contribution * term / total for tag, term in terms.items()} if total else {}
