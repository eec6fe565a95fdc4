"""Event types of PROTOCOL.md as frozen dataclasses, and their validation.

``parse_event(obj, limits)`` turns one decoded msgpack map into an event or
raises ``ValidationError`` naming the field at fault. ``Event.to_wire()`` gives
the map back, unknown keys included, so a stored event can be re-published.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ValidationError

SCHEMA_VERSION = 1

BEHAVIOUR_TYPES = frozenset(
    {"view", "click", "cart", "purchase", "rate", "search", "skip", "dislike"}
)
ITEM_TYPES = BEHAVIOUR_TYPES - {"search"}
CATALOG_TYPES = frozenset({"item", "user_attrs"})
#: Derived events the service appends itself (never accepted from producers).
PROFILE_TYPE = "profile"

_KNOWN_KEYS = frozenset(
    {"v", "id", "type", "ts", "user", "item", "value", "query", "ctx",
     "title", "tags", "text", "attrs"}
)

DEFAULT_LIMITS = {"max_id_chars": 256, "max_text_chars": 4096, "max_tags": 64}


@dataclass(frozen=True, slots=True)
class Event:
    """Fields every event has. ``extra`` keeps unknown keys untouched."""

    id: str
    type: str
    ts: float
    extra: dict = field(default_factory=dict, compare=True)

    def to_wire(self) -> dict:
        out = {"v": SCHEMA_VERSION, "id": self.id, "type": self.type, "ts": self.ts}
        out.update(self._fields())
        out.update(self.extra)
        return out

    def _fields(self) -> dict:
        return {}


@dataclass(frozen=True, slots=True)
class BehaviourEvent(Event):
    """What a user did: view, click, cart, purchase, rate, search, skip, dislike."""

    user: str = ""
    item: str | None = None
    value: float | None = None
    query: str | None = None
    ctx: dict | None = None

    def _fields(self) -> dict:
        out: dict[str, Any] = {"user": self.user}
        for key in ("item", "value", "query", "ctx"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class ItemEvent(Event):
    """Create or update a catalog item."""

    item: str = ""
    title: str = ""
    tags: tuple[str, ...] = ()
    text: str = ""
    attrs: dict = field(default_factory=dict)

    def _fields(self) -> dict:
        return {"item": self.item, "title": self.title, "tags": list(self.tags),
                "text": self.text, "attrs": self.attrs}


@dataclass(frozen=True, slots=True)
class UserAttrsEvent(Event):
    """Declared user attributes (age, gender, occupation, country...)."""

    user: str = ""
    attrs: dict = field(default_factory=dict)

    def _fields(self) -> dict:
        return {"user": self.user, "attrs": self.attrs}


@dataclass(frozen=True, slots=True)
class ProfileEvent(Event):
    """The language model's interest profile of a user, journaled like any event."""

    user: str = ""
    tags: tuple[str, ...] = ()
    summary: str = ""
    model: str = ""
    input_hash: str = ""
    embedding: tuple[float, ...] | None = None

    def _fields(self) -> dict:
        return {"user": self.user, "tags": list(self.tags), "summary": self.summary,
                "model": self.model, "input_hash": self.input_hash,
                "embedding": list(self.embedding) if self.embedding else None}


# ---------------------------------------------------------------- validation


def _require(obj: dict, key: str) -> Any:
    if key not in obj:
        raise ValidationError(f"field '{key}' is required")
    return obj[key]


def _present(obj: dict, key: str, required: bool) -> bool:
    """True if the field has a value; a missing required field is an error."""
    if key in obj and obj[key] is not None:
        return True
    if required:
        raise ValidationError(f"field '{key}' is required")
    return False


def _string(obj: dict, key: str, limit: int, *, required: bool = True,
            allow_empty: bool = False) -> str | None:
    if not _present(obj, key, required):
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise ValidationError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValidationError(f"field '{key}' must not be empty")
    if len(value) > limit:
        raise ValidationError(f"field '{key}' is longer than {limit} characters")
    return value


def _identifier(obj: dict, key: str, limit: int, *, required: bool = True) -> str | None:
    value = _string(obj, key, limit, required=required)
    if value is None:
        return None
    if "\x00" in value:
        raise ValidationError(f"field '{key}' must not contain NUL characters")
    if len(value.encode("utf-8")) > limit:
        raise ValidationError(f"field '{key}' is longer than {limit} bytes in UTF-8")
    return value


def _number(obj: dict, key: str, *, required: bool = True) -> float | None:
    if not _present(obj, key, required):
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"field '{key}' must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValidationError(f"field '{key}' must be finite")
    return value


def _mapping(obj: dict, key: str, *, required: bool) -> dict | None:
    if not _present(obj, key, required):
        return None
    value = obj[key]
    if not isinstance(value, dict):
        raise ValidationError(f"field '{key}' must be a map, got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise ValidationError(f"field '{key}' must have string keys")
    return value


def _tags(obj: dict, limits: dict) -> tuple[str, ...]:
    value = obj.get("tags")
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"field 'tags' must be a list of strings, got {type(value).__name__}")
    if len(value) > limits["max_tags"]:
        raise ValidationError(f"field 'tags' has more than {limits['max_tags']} entries")
    out = []
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not tag:
            raise ValidationError(f"field 'tags[{i}]' must be a non-empty string")
        if len(tag) > limits["max_id_chars"]:
            raise ValidationError(f"field 'tags[{i}]' is longer than {limits['max_id_chars']} characters")
        out.append(tag)
    return tuple(dict.fromkeys(out))


def _header(obj: Any, limits: dict) -> tuple[str, str, float, dict]:
    if not isinstance(obj, dict):
        raise ValidationError(f"an event must be a map, got {type(obj).__name__}")
    version = _require(obj, "v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValidationError(f"field 'v' must be {SCHEMA_VERSION}, got {version!r}")
    event_id = _identifier(obj, "id", limits["max_id_chars"])
    event_type = _string(obj, "type", 64)
    ts = _number(obj, "ts")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    return event_id, event_type, ts, extra


def parse_event(obj: Any, limits: dict | None = None) -> Event:
    """Validate one decoded map and build its event, or raise ValidationError."""
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    event_id, event_type, ts, extra = _header(obj, limits)
    if event_type in BEHAVIOUR_TYPES:
        return _behaviour(obj, event_id, event_type, ts, extra, limits)
    if event_type == "item":
        return ItemEvent(
            id=event_id, type=event_type, ts=ts, extra=extra,
            item=_identifier(obj, "item", limits["max_id_chars"]),
            title=_string(obj, "title", limits["max_text_chars"], allow_empty=True),
            tags=_tags(obj, limits),
            text=_string(obj, "text", limits["max_text_chars"], required=False,
                         allow_empty=True) or "",
            attrs=_mapping(obj, "attrs", required=False) or {},
        )
    if event_type == "user_attrs":
        return UserAttrsEvent(
            id=event_id, type=event_type, ts=ts, extra=extra,
            user=_identifier(obj, "user", limits["max_id_chars"]),
            attrs=_mapping(obj, "attrs", required=True),
        )
    known = sorted(BEHAVIOUR_TYPES | CATALOG_TYPES)
    raise ValidationError(f"field 'type' must be one of {known}, got {event_type!r}")


def _behaviour(obj: dict, event_id: str, event_type: str, ts: float, extra: dict,
               limits: dict) -> BehaviourEvent:
    user = _identifier(obj, "user", limits["max_id_chars"])
    item = _identifier(obj, "item", limits["max_id_chars"],
                       required=event_type in ITEM_TYPES)
    value = _number(obj, "value", required=event_type == "rate")
    query = _string(obj, "query", limits["max_text_chars"], required=event_type == "search")
    ctx = _mapping(obj, "ctx", required=False)
    return BehaviourEvent(id=event_id, type=event_type, ts=ts, extra=extra, user=user,
                          item=item, value=value, query=query, ctx=ctx)
