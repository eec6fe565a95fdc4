"""Event types of PROTOCOL.md as frozen dataclasses, and their validation.

``parse_event(obj, limits)`` turns one decoded msgpack map into an event or
raises ``ValidationError`` naming the field at fault; derived types (``profile``,
``forget``, ``item_profile``) are the service's own and never parsed from
producers (``parse_item_profile`` checks an ``item_profile`` the service
built). ``Event.to_wire()`` gives the map back, unknown keys included, so a
stored event can be re-published.

Besides each field's type: ``ts`` is finite and at most
``limits.max_future_skew_s`` ahead of the service clock, ``value`` is finite
and within ``limits.max_abs_value``, and everything nested in an event (``ctx``,
``attrs``, unknown keys) has string map keys, finite floats and at most
``limits.max_nesting`` levels, so that a stored event always exports as JSON.
"""

from __future__ import annotations

import math
import reprlib
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from interest.engine.errors import ValidationError

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _quote(value) -> str:
    """A short, bounded repr of an untrusted value (never recursion-deep, never huge)."""
    return _REPR.repr(value)

SCHEMA_VERSION = 1

BEHAVIOUR_TYPES = frozenset(
    {"view", "click", "cart", "purchase", "rate", "search", "skip", "dislike"}
)
ITEM_TYPES = BEHAVIOUR_TYPES - {"search"}
CATALOG_TYPES = frozenset({"item", "user_attrs"})
#: Derived events the service appends itself (never accepted from producers).
PROFILE_TYPE = "profile"
#: The tombstone of an erasure (`forget`): the store erases the stream before appending it.
FORGET_TYPE = "forget"
#: The language model's profile of a catalog item (catalog stream; see ``ItemProfileEvent``).
ITEM_PROFILE_TYPE = "item_profile"
DERIVED_TYPES = frozenset({PROFILE_TYPE, FORGET_TYPE, ITEM_PROFILE_TYPE})
#: Every type journaled in the catalog stream (``codec.CATALOG_STREAM``).
CATALOG_STREAM_TYPES = CATALOG_TYPES | {ITEM_PROFILE_TYPE}

_KNOWN_KEYS = frozenset(
    {"v", "id", "type", "ts", "user", "item", "value", "query", "ctx",
     "title", "tags", "text", "attrs"}
)

#: An ``item_profile``'s fields (known to that type only: producers' events keep such keys)
_ITEM_PROFILE_KEYS = frozenset({"v", "id", "type", "ts", "item", "keywords", "description",
                                "model", "input_hash", "source_hash"})

_PLAUSIBLE_SINCE = 631152000.0      # 1990-01-01: a ts/1000 after this looks like milliseconds


@lru_cache(maxsize=1)
def default_limits() -> dict:
    """``[limits]`` of configs/default.toml (the one source of defaults)."""
    from interest.engine.config import load_config  # noqa: PLC0415 - config imports nothing of ours
    return load_config()["limits"]


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


@dataclass(frozen=True, slots=True)
class ItemProfileEvent(Event):
    """The language model's profile of a catalog item, journaled in the catalog stream.

    ``keywords`` and ``description`` are the model's answer, ``model`` its id and
    ``input_hash`` the hash of the prompt it answered (as for ``profile`` events);
    ``source_hash`` names the item content the profile was written from
    (``engine.llm.item_profiles.source_hash``: the title and tags the prompt showed), so
    the catalog fold can tell a current profile from one an ``item`` update made stale.
    """

    item: str = ""
    keywords: tuple[str, ...] = ()
    description: str = ""
    model: str = ""
    input_hash: str = ""
    source_hash: str = ""

    def _fields(self) -> dict:
        return {"item": self.item, "keywords": list(self.keywords),
                "description": self.description, "model": self.model,
                "input_hash": self.input_hash, "source_hash": self.source_hash}


@dataclass(frozen=True, slots=True)
class ForgetEvent(Event):
    """The record of an erasure: committing it erases every earlier entry of the user's
    stream (and the user's ``user_attrs``); the store fills in ``forgotten``."""

    user: str = ""

    def _fields(self) -> dict:
        return {"user": self.user}


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


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _path(trail: tuple) -> str:
    """'ctx.a[0].b' from the linked trail (part, parent) built while walking."""
    parts = []
    while trail:
        part, trail = trail
        parts.append(part)
    return _short("".join(reversed(parts)))


_SCALARS = (str, int, float, bool)


def _plain(key: str, value: Any, limits: dict) -> None:
    """Nested content: JSON-shaped values only (maps with string keys, lists, strings,
    numbers, booleans, null: no bytes or msgpack extension types, so every stored event
    exports as JSON lines), finite floats, bounded depth (names the path).

    Paths are linked (part, parent) pairs, joined only for an error message, so a
    wide map under a long key costs no more than the map itself.
    """
    stack = [(value, 0, (key, ()))]
    while stack:
        node, depth, trail = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise ValidationError(f"field '{_path(trail)}' must be finite, got {node}")
        if not isinstance(node, (dict, list, tuple)):
            if node is not None and not isinstance(node, _SCALARS):
                raise ValidationError(
                    f"field '{_path(trail)}' holds a {type(node).__name__}; values must be "
                    "strings, numbers, booleans, null, lists or maps")
            continue
        if depth >= limits["max_nesting"]:
            raise ValidationError(f"field '{_short(key)}' is nested deeper than "
                                  f"{limits['max_nesting']} levels")
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ValidationError(
                        f"field '{_path(trail)}' has a map key of type {type(k).__name__} "
                        f"({_short(_quote(k), 40)}); map keys must be strings")
                stack.append((v, depth + 1, (f".{k}", trail)))
        else:
            stack.extend((v, depth + 1, (f"[{i}]", trail)) for i, v in enumerate(node))


def _timestamp(obj: dict, limits: dict, now: float) -> float:
    ts = _number(obj, "ts")
    skew = limits["max_future_skew_s"]
    if ts - now <= skew:
        return ts
    message = (f"field 'ts' ({ts:.6g}) is more than {skew:g} s ahead of the service clock "
               f"({now:.0f}); ts is in seconds since the Unix epoch")
    if _PLAUSIBLE_SINCE <= ts / 1000 <= now + skew:
        message += (f"; the producer may be sending milliseconds: ts/1000 = "
                    f"{ts / 1000:.3f} would be plausible")
    raise ValidationError(message)


def _value(obj: dict, limits: dict, required: bool) -> float | None:
    value = _number(obj, "value", required=required)
    bound = limits["max_abs_value"]
    if value is not None and abs(value) > bound:
        raise ValidationError(f"field 'value' must be within -{bound:g}..{bound:g}, "
                              f"got {value:.6g}")
    return value


def _mapping(obj: dict, key: str, limits: dict, *, required: bool) -> dict | None:
    if not _present(obj, key, required):
        return None
    value = obj[key]
    if not isinstance(value, dict):
        raise ValidationError(f"field '{key}' must be a map, got {type(value).__name__}")
    _plain(key, value, limits)
    return value


def _tags(obj: dict, limits: dict) -> tuple[str, ...]:
    return _strings(obj, "tags", limits)


def _strings(obj: dict, key: str, limits: dict) -> tuple[str, ...]:
    """A list of non-empty strings (tags, keywords), duplicates dropped, order kept."""
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"field '{key}' must be a list of strings, "
                              f"got {type(value).__name__}")
    if len(value) > limits["max_tags"]:
        raise ValidationError(f"field '{key}' has more than {limits['max_tags']} entries")
    out = []
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not tag:
            raise ValidationError(f"field '{key}[{i}]' must be a non-empty string")
        if len(tag) > limits["max_id_chars"]:
            raise ValidationError(f"field '{key}[{i}]' is longer than "
                                  f"{limits['max_id_chars']} characters")
        out.append(tag)
    return tuple(dict.fromkeys(out))


def _extra(obj: dict, limits: dict, known: frozenset = _KNOWN_KEYS) -> dict:
    """Unknown keys, kept as they are once checked like any nested content."""
    extra = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValidationError(f"an event's keys must be strings, got a key of type "
                                  f"{type(key).__name__} ({_short(_quote(key), 40)})")
        if key not in known:
            _plain(key, value, limits)
            extra[key] = value
    return extra


def _header(obj: Any, limits: dict, now: float,
            known: frozenset = _KNOWN_KEYS) -> tuple[str, str, float, dict]:
    if not isinstance(obj, dict):
        raise ValidationError(f"an event must be a map, got {type(obj).__name__}")
    version = _require(obj, "v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValidationError(f"field 'v' must be {SCHEMA_VERSION}, got {_quote(version)}")
    event_id = _identifier(obj, "id", limits["max_id_chars"])
    event_type = _string(obj, "type", 64)
    ts = _timestamp(obj, limits, now)
    return event_id, event_type, ts, _extra(obj, limits, known)


def parse_event(obj: Any, limits: dict | None = None, now: float | None = None) -> Event:
    """Validate one decoded map and build its event, or raise ValidationError.

    ``limits`` is the config's ``[limits]`` (missing keys take their defaults);
    ``now`` is the service clock (default ``time.time()``).
    """
    limits = {**default_limits(), **(limits or {})}
    now = time.time() if now is None else now
    event_id, event_type, ts, extra = _header(obj, limits, now)
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
            attrs=_mapping(obj, "attrs", limits, required=False) or {},
        )
    if event_type == "user_attrs":
        return UserAttrsEvent(
            id=event_id, type=event_type, ts=ts, extra=extra,
            user=_identifier(obj, "user", limits["max_id_chars"]),
            attrs=_mapping(obj, "attrs", limits, required=True),
        )
    if event_type == ITEM_PROFILE_TYPE:
        raise ValidationError("field 'type': 'item_profile' events are written by the service "
                              "itself (the language model's item profiles); producers cannot "
                              "send them")
    known = sorted(BEHAVIOUR_TYPES | CATALOG_TYPES)
    raise ValidationError(f"field 'type' must be one of {known}, got {_quote(event_type)}")


def _behaviour(obj: dict, event_id: str, event_type: str, ts: float, extra: dict,
               limits: dict) -> BehaviourEvent:
    user = _identifier(obj, "user", limits["max_id_chars"])
    item = _identifier(obj, "item", limits["max_id_chars"],
                       required=event_type in ITEM_TYPES)
    value = _value(obj, limits, required=event_type == "rate")
    query = _string(obj, "query", limits["max_text_chars"], required=event_type == "search")
    ctx = _mapping(obj, "ctx", limits, required=False)
    return BehaviourEvent(id=event_id, type=event_type, ts=ts, extra=extra, user=user,
                          item=item, value=value, query=query, ctx=ctx)


def parse_item_profile(obj: Any, limits: dict | None = None,
                       now: float | None = None) -> ItemProfileEvent:
    """Validate an ``item_profile`` map (one the service built, or read back from the
    journal) and build its event, or raise ValidationError naming the field at fault.

    Producers never reach this: ``parse_event`` refuses the type."""
    limits = {**default_limits(), **(limits or {})}
    now = time.time() if now is None else now
    event_id, event_type, ts, extra = _header(obj, limits, now, _ITEM_PROFILE_KEYS)
    if event_type != ITEM_PROFILE_TYPE:
        raise ValidationError(f"field 'type' must be {ITEM_PROFILE_TYPE!r}, "
                              f"got {_quote(event_type)}")
    return ItemProfileEvent(
        id=event_id, type=event_type, ts=ts, extra=extra,
        item=_identifier(obj, "item", limits["max_id_chars"]),
        keywords=_strings(obj, "keywords", limits),
        description=_string(obj, "description", limits["max_text_chars"], allow_empty=True),
        model=_string(obj, "model", limits["max_id_chars"]),
        input_hash=_string(obj, "input_hash", 128),
        source_hash=_string(obj, "source_hash", 128),
    )
