"""A user's interest state and the fold that builds it from the journal.

``apply(state, entry, params)`` is pure: it returns a new state and leaves its
arguments alone, so the state after any prefix of the journal is a function of
that prefix. The user actor uses ``state.update(entry, params)``, the same
code in place, to avoid a copy per event.

Tag weights decay exponentially in event time (never wall-clock time, so that
replay is exact) with two half-lives: ``short`` follows the current session,
``long`` the user's lasting taste. Weights are reported as of the user's last
event (``as_of``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgpack

from interest.engine.journal.codec import StoredEvent
from interest.engine.journal.events import FORGET_TYPE, PROFILE_TYPE

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class FoldParams:
    """The config values the fold reads (section [interest])."""

    weights: dict
    short_half_life_s: float = 3600.0
    long_half_life_s: float = 2592000.0
    recent_items: int = 50
    rate_base: float = 1.0
    rate_spread: float = 3.0
    rate_prior_mean: float = 0.0
    recent_queries: int = 10

    @classmethod
    def from_config(cls, config: dict) -> "FoldParams":
        cfg = dict(config["interest"])
        weights = cfg.pop("weights")
        cfg.pop("tag_events", None)
        return cls(weights=dict(weights), **cfg)


def decay(value: float, dt: float, half_life: float) -> float:
    """``value`` after ``dt`` seconds of exponential decay."""
    return value * math.exp2(-max(dt, 0.0) / half_life)


@dataclass
class InterestState:
    user: str
    version: int = 0                              # seq of the last journal entry applied
    events: int = 0                               # behaviour events applied
    counts: dict = field(default_factory=dict)    # per behaviour type
    tags: dict = field(default_factory=dict)      # tag -> [short, long, ts of last update]
    recent: list = field(default_factory=list)    # [item, type, ts, weight], oldest first
    seen: set = field(default_factory=set)
    queries: list = field(default_factory=list)   # [query, ts], oldest first
    rating_sum: float = 0.0
    rating_n: int = 0
    last_ts: float | None = None
    profile: dict | None = None                   # latest model profile (see ProfileEvent)
    since_profile: int = 0                        # behaviour events since that profile

    # -------------------------------------------------------------- fold

    def update(self, entry: StoredEvent, params: FoldParams) -> None:
        """Fold one journal entry into this state, in place."""
        if entry.seq <= self.version:
            return
        self.version = entry.seq
        event = entry.event
        if event["type"] == PROFILE_TYPE:
            self._apply_profile(entry)
            return
        if event["type"] == FORGET_TYPE:
            self._forget()
            return
        ts = float(event["ts"])
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.events += 1
        self.since_profile += 1
        etype = event["type"]
        self.counts[etype] = self.counts.get(etype, 0) + 1
        weight = self.event_weight(event, params)
        if etype == "rate":
            self.rating_sum += float(event["value"])
            self.rating_n += 1
        if etype == "search":
            self.queries.append([event["query"], ts])
            del self.queries[:-params.recent_queries]
        for tag in entry.tags:
            self._add_tag(tag, weight, ts, params)
        item = event.get("item")
        if item is not None:
            self.seen.add(item)
            self.recent.append([item, etype, ts, weight])
            del self.recent[:-params.recent_items]

    def event_weight(self, event: dict, params: FoldParams) -> float:
        """Strength of one behaviour event for this user, before it is applied."""
        etype = event["type"]
        if etype != "rate":
            return float(params.weights.get(etype, 0.0))
        value = float(event["value"])
        if self.rating_n:
            mean = self.rating_sum / self.rating_n
        else:
            mean = params.rate_prior_mean or value
        return params.rate_base + params.rate_spread * (value - mean) / max(abs(mean), 1e-9)

    def _add_tag(self, tag: str, weight: float, ts: float, params: FoldParams) -> None:
        cell = self.tags.get(tag)
        if cell is None:
            self.tags[tag] = [weight, weight, ts]
            return
        dt = ts - cell[2]
        cell[0] = decay(cell[0], dt, params.short_half_life_s) + weight
        cell[1] = decay(cell[1], dt, params.long_half_life_s) + weight
        cell[2] = max(cell[2], ts)

    def _forget(self) -> None:
        """An erasure's tombstone: everything folded before it is gone (version stays)."""
        version = self.version
        self.__init__(user=self.user)
        self.version = version

    def _apply_profile(self, entry: StoredEvent) -> None:
        event = entry.event
        self.profile = {
            "tags": list(event.get("tags") or ()), "summary": event.get("summary") or "",
            "model": event.get("model") or "", "input_hash": event.get("input_hash") or "",
            "embedding": event.get("embedding"), "at": float(event["ts"]),
            "version": entry.seq, "events_at": self.events,
        }
        self.since_profile = 0

    # ----------------------------------------------------------- reading

    def tag_weights(self, params: FoldParams, as_of: float | None = None) -> list[dict]:
        """Tags best first by short-term weight, decayed to ``as_of`` (default: last event)."""
        ref = self.last_ts if as_of is None else as_of
        out = []
        for tag, (short, long_, ts) in self.tags.items():
            dt = (ref or ts) - ts
            s = decay(short, dt, params.short_half_life_s)
            lw = decay(long_, dt, params.long_half_life_s)
            out.append({"tag": tag, "weight": s + lw, "short": s, "long": lw})
        out.sort(key=lambda t: (-t["weight"], t["tag"]))
        return out

    # ------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        return {
            "sv": STATE_VERSION, "user": self.user, "version": self.version,
            "events": self.events, "counts": self.counts, "tags": self.tags,
            "recent": self.recent, "seen": sorted(self.seen), "queries": self.queries,
            "rating_sum": self.rating_sum, "rating_n": self.rating_n,
            "last_ts": self.last_ts, "profile": self.profile,
            "since_profile": self.since_profile,
        }

    @classmethod
    def from_dict(cls, obj: dict) -> "InterestState":
        if obj.get("sv") != STATE_VERSION:
            raise ValueError(f"snapshot has state version {obj.get('sv')!r}, expected {STATE_VERSION}")
        fields = {k: v for k, v in obj.items() if k != "sv"}
        fields["seen"] = set(fields["seen"])
        return cls(**fields)

    def encode(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "InterestState":
        return cls.from_dict(msgpack.unpackb(data, raw=False))

    def copy(self) -> "InterestState":
        """An independent copy (containers copied; the profile dict is never mutated)."""
        return InterestState(
            user=self.user, version=self.version, events=self.events, counts=dict(self.counts),
            tags={tag: list(cell) for tag, cell in self.tags.items()},
            recent=[list(row) for row in self.recent], seen=set(self.seen),
            queries=[list(q) for q in self.queries], rating_sum=self.rating_sum,
            rating_n=self.rating_n, last_ts=self.last_ts, profile=self.profile,
            since_profile=self.since_profile)


def apply(state: InterestState, entry: StoredEvent, params: FoldParams) -> InterestState:
    """The pure fold: a new state with ``entry`` applied; ``state`` is untouched."""
    new = state.copy()
    new.update(entry, params)
    return new


def replay(user: str, entries, params: FoldParams,
           state: InterestState | None = None) -> InterestState:
    """Fold a sequence of journal entries, from ``state`` or from empty."""
    state = InterestState(user=user) if state is None else state.copy()
    for entry in entries:
        state.update(entry, params)
    return state
