"""Checking a decoded JSON value against the subset of JSON Schema the prompts use.

A server that cannot constrain its output to a schema (or one told not to)
may return anything; the remote backend checks what came back with this and
reports the problems. Supported keywords: ``type`` (object, array, string,
integer, number, boolean, null), ``properties``, ``required``,
``additionalProperties: false``, ``items``, ``minItems``/``maxItems``,
``minLength``/``maxLength``, ``enum``. Anything else is ignored, so a schema
using more is checked only partly.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES.get(name, (object,)))


def _bounds(value: Any, schema: dict, where: str, low_key: str, high_key: str) -> list[str]:
    size = len(value)
    low, high = schema.get(low_key), schema.get(high_key)
    if low is not None and size < low:
        return [f"{where}: length {size} < {low_key} {low}"]
    if high is not None and size > high:
        return [f"{where}: length {size} > {high_key} {high}"]
    return []


def _object(value: dict, schema: dict, where: str) -> list[str]:
    problems = [f"{where}: missing {key!r}" for key in schema.get("required", ()) if key not in value]
    props = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        problems += [f"{where}: unexpected key {key!r}" for key in value if key not in props]
    for key, sub in props.items():
        if key in value:
            problems += schema_problems(value[key], sub, f"{where}.{key}")
    return problems


def schema_problems(value: Any, schema: dict, where: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty list: it conforms)."""
    kind = schema.get("type")
    if kind is not None and not _type_ok(value, kind):
        return [f"{where}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in enum"]
    if isinstance(value, dict):
        return _object(value, schema, where)
    if isinstance(value, list):
        problems = _bounds(value, schema, where, "minItems", "maxItems")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                problems += schema_problems(item, items, f"{where}[{i}]")
        return problems
    if isinstance(value, str):
        return _bounds(value, schema, where, "minLength", "maxLength")
    return []
