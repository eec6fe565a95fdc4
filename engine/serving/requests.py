"""Api requests, parsed once at the edge into typed, validated values.

``parse_request(obj, limits, default_k)`` turns one decoded request map into
one of the frozen dataclasses below or raises ``BadRequest`` with a message
that names the field. Nothing after the edge re-checks a field: the service
dispatches on the request's type, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from interest.engine.errors import BadRequest
from interest.engine.journal.events import Event, parse_event

MAX_OP_ECHO = 40          # characters of an unknown op name quoted back in an error


@dataclass(frozen=True, slots=True)
class Request:
    rid: Any = None

    op = ""


@dataclass(frozen=True, slots=True)
class Ping(Request):
    op = "ping"


@dataclass(frozen=True, slots=True)
class Stats(Request):
    op = "stats"


@dataclass(frozen=True, slots=True)
class Ingest(Request):
    events: tuple = ()            # raw event maps, validated one by one by the service
    op = "ingest"


@dataclass(frozen=True, slots=True)
class Flush(Request):
    timeout_ms: float | None = None
    op = "flush"


@dataclass(frozen=True, slots=True)
class UserRequest(Request):
    user: str = ""
    deadline_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Interests(UserRequest):
    fresh: bool = False
    op = "interests"


@dataclass(frozen=True, slots=True)
class Recommend(UserRequest):
    k: int = 10
    exclude_seen: bool = True
    candidates: tuple | None = None
    op = "recommend"


@dataclass(frozen=True, slots=True)
class Explain(UserRequest):
    item: str | None = None
    op = "explain"


@dataclass(frozen=True, slots=True)
class Forget(UserRequest):
    """Erase the user's data (PROTOCOL.md, `forget`)."""

    op = "forget"


OPS = {cls.op: cls for cls in (Ping, Stats, Ingest, Flush, Interests, Recommend, Explain,
                               Forget)}


def op_name(obj: dict) -> str:
    """The op of a request map, cut short for messages (unknown ops may be huge)."""
    op = obj.get("op")
    if not isinstance(op, str):
        return f"<{type(op).__name__}>"         # never repr(): it may be huge or nested deep
    return op if len(op) <= MAX_OP_ECHO else op[:MAX_OP_ECHO] + "..."


def parse_request(obj: Any, limits: dict, default_k: int = 10) -> Request:
    if not isinstance(obj, dict):
        raise BadRequest(f"a request must be a map, got {type(obj).__name__}")
    op = obj.get("op")
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise BadRequest(f"unknown op {op_name(obj)}; expected one of {sorted(OPS)}")
    rid = obj.get("rid")
    if cls is Ping or cls is Stats:
        return cls(rid=rid)
    if cls is Ingest:
        return Ingest(rid=rid, events=_events(obj, limits))
    if cls is Flush:
        return Flush(rid=rid, timeout_ms=_positive(obj, "timeout_ms"))
    user = _user(obj, limits)
    deadline = _positive(obj, "deadline_ms")
    if cls is Forget:
        if "\x00" in user:          # no stored stream has one (events refuse it)
            raise BadRequest("field 'user' must not contain NUL characters")
        return Forget(rid=rid, user=user, deadline_ms=deadline)
    if cls is Interests:
        return Interests(rid=rid, user=user, deadline_ms=deadline, fresh=_bool(obj, "fresh", False))
    if cls is Recommend:
        return Recommend(rid=rid, user=user, deadline_ms=deadline, k=_k(obj, limits, default_k),
                         exclude_seen=_bool(obj, "exclude_seen", True),
                         candidates=_candidates(obj, limits))
    return Explain(rid=rid, user=user, deadline_ms=deadline, item=_item(obj, limits))


# ------------------------------------------------------------------ fields


def check_batch_size(n: int, what: str, unit: str, limits: dict) -> None:
    """``BadRequest`` when ``n`` events (or candidates) are past ``limits.max_batch_events``."""
    if n > limits["max_batch_events"]:
        raise BadRequest(f"{what} has {n} {unit}; the limit is {limits['max_batch_events']}")


def _events(obj: dict, limits: dict) -> tuple:
    raw = obj.get("events")
    if not isinstance(raw, list):
        raise BadRequest("field 'events' must be a list of event maps")
    check_batch_size(len(raw), "field 'events'", "events", limits)
    return tuple(raw)


def _positive(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise BadRequest(f"field '{key}' must be a positive, finite number of milliseconds")
    return float(value)


def _bool(obj: dict, key: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"field '{key}' must be a boolean")
    return value


def _id(value, key: str, limits: dict) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field '{key}' is required and must be a non-empty string")
    if len(value.encode("utf-8")) > limits["max_id_chars"]:
        raise BadRequest(f"field '{key}' is longer than {limits['max_id_chars']} bytes")
    return value


def _user(obj: dict, limits: dict) -> str:
    return _id(obj.get("user"), "user", limits)


def _item(obj: dict, limits: dict) -> str | None:
    item = obj.get("item")
    return None if item is None else _id(item, "item", limits)


def _k(obj: dict, limits: dict, default_k: int) -> int:
    k = obj.get("k", default_k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits["max_k"]:
        raise BadRequest(f"field 'k' must be an integer from 1 to {limits['max_k']}")
    return k


def _candidates(obj: dict, limits: dict) -> tuple | None:
    candidates = obj.get("candidates")
    if candidates is None:
        return None
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise BadRequest("field 'candidates' must be a list of item ids")
    check_batch_size(len(candidates), "field 'candidates'", "items", limits)
    return tuple(candidates)


def parse_batch(raw: list, limits: dict) -> tuple[list[Event], list[dict]]:
    """Validate a list of event maps: (valid events, rejected [{index, code, message}])."""
    events, rejected = [], []
    for index, obj in enumerate(raw):
        try:
            events.append(parse_event(obj, limits))
        except BadRequest as exc:
            rejected.append({"index": index, "code": exc.code, "message": str(exc)})
        except RecursionError:
            rejected.append({"index": index, "code": "bad_request",
                             "message": "the event is nested too deeply"})
    return events, rejected
