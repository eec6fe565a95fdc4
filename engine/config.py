"""Configuration: the embedded ``configs/default.toml`` overlaid with a user file.

``configs/default.toml`` is the one source of defaults. The dataclasses below
are the schema and nothing else: each section's keys with their type and
allowed range, no default values. ``load_config`` checks every layer (the
defaults, which must name every key, the user file and keyword overrides)
against the schema, merges them section by section and returns the plain
nested dict every caller indexes (``config["limits"]["max_k"]``). Anything
wrong is a ``ConfigError`` whose one-line message names the key's path:
unknown sections and keys, wrong types, values out of range, a file that is
missing or not TOML.

Adding a key: put it, with its default and a comment, in ``default.toml``
AND declare it in its section's dataclass here (the test suite checks both
agree).
"""

from __future__ import annotations

import copy
import difflib
import math
import tomllib
from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from interest.engine.errors import ConfigError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


@dataclass(frozen=True)
class Range:
    """Allowed values of a number (or length of a string/list): low..high, inclusive
    unless ``above`` (then strictly greater than ``low``)."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def violation(self, value: Any) -> str | None:
        size = len(value) if isinstance(value, (str, list)) else value
        unit = {str: " characters", list: " entries"}.get(type(value), "")
        if self.low is not None and self.above and size <= self.low:
            return f"must be greater than {self.low:g}{unit}"
        if self.low is not None and size < self.low:
            return f"must be at least {self.low:g}{unit}"
        if self.high is not None and size > self.high:
            return f"must be at most {self.high:g}{unit}"
        return None


@dataclass(frozen=True)
class OneOf:
    """Allowed values of a string."""

    values: tuple

    def violation(self, value: Any) -> str | None:
        return None if value in self.values else f"must be one of {', '.join(self.values)}"


Count = Annotated[int, Range(1)]                    # 1, 2, ...
Size = Annotated[int, Range(0)]                     # 0, 1, ...
Positive = Annotated[float, Range(0, above=True)]   # > 0
NonNegative = Annotated[float, Range(0)]            # >= 0
Text = Annotated[str, Range(1)]                     # non-empty


# ------------------------------------------------------------------ schema


@dataclass(frozen=True)
class ServiceSection:
    data_dir: Text
    ingest: Text
    api: Text
    feeds: list[str]


@dataclass(frozen=True)
class LimitsSection:
    max_message_bytes: Annotated[int, Range(64)]
    max_batch_events: Count
    max_id_chars: Annotated[int, Range(1, 400)]     # LMDB keys hold at most 511 bytes
    max_text_chars: Count
    max_tags: Size
    max_k: Count
    max_future_skew_s: NonNegative
    max_abs_value: Positive
    max_nesting: Annotated[int, Range(1, 64)]
    ingest_queue_bytes: Count
    max_inflight_requests: Count
    max_inflight_bytes: Count


@dataclass(frozen=True)
class StoreSection:
    map_size_mb: Count
    max_map_size_mb: Count
    sync: bool


@dataclass(frozen=True)
class WriterSection:
    max_batch: Count
    job_events: Count


@dataclass(frozen=True)
class RuntimeSection:
    workers: Annotated[int, Range(1, 1024)]
    throughput: Count
    idle_seconds: Positive
    max_live_actors: Count
    sweep_seconds: Positive
    snapshot_every: Count
    switch_interval_ms: Annotated[float, Range(0.001, 1000)]
    gc_full_every_s: NonNegative


@dataclass(frozen=True)
class WeightsSection:
    view: float
    click: float
    cart: float
    purchase: float
    search: float
    skip: float
    dislike: float


@dataclass(frozen=True)
class InterestSection:
    short_half_life_s: Positive
    long_half_life_s: Positive
    recent_items: Count
    tag_events: Count
    rate_base: float
    rate_spread: NonNegative
    rate_prior_mean: float
    weights: WeightsSection


@dataclass(frozen=True)
class ProjectionsSection:
    tail_entries: Count
    batch: Count
    max_ahead: Count
    checkpoint_s: Positive
    publish_ms: Positive
    max_lag_events: Count
    max_learner_lag_events: Count
    retry_after_ms: Size
    learner: Annotated[str, OneOf(("thread", "process", "global"))]
    learner_absent_s: Positive


@dataclass(frozen=True)
class RecommendSection:
    default_k: Count
    popularity_half_life_s: Positive
    feedback_every: Count
    max_histories: Count
    checkpoint_seconds: Positive
    fusion_learn: bool
    fusion_prior: Annotated[str, OneOf(("validated", "even"))]
    fusion_step: Annotated[float, Range(1, above=True)]
    fusion_evidence: Positive
    ease: bool
    ease_items: Annotated[int, Range(2)]
    ease_l2: Positive
    ease_every: Count


@dataclass(frozen=True)
class ModelSection:
    path: str
    embed_path: str
    required: bool
    n_ctx: Annotated[int, Range(64)]
    n_threads: Count
    n_gpu_layers: Annotated[int, Range(-1)]
    seed: int
    embed_ctx: Annotated[int, Range(16)]
    verbose: bool


@dataclass(frozen=True)
class InferenceSection:
    enabled: bool
    refresh_min_events: Count
    refresh_quiet_s: NonNegative
    max_tokens: Count
    online_deadline_ms: Count
    background_deadline_s: Positive
    ageing_s: Positive
    prompt_cache_mb: Size
    embed_batch: Count
    temperature: NonNegative
    repeat_penalty: Positive
    vocab_limit: Size
    max_in_flight: Count
    #: LLM-written item profiles, journaled as `item_profile` events, enrich item embeddings
    item_profiles: bool
    prefill_chunk: Count
    cache_map_size_mb: Count
    cache_max_map_size_mb: Count
    backend: Annotated[str, OneOf(("llama", "openai"))]
    url: Text
    model: str
    embed_url: str
    embed_model: str
    constrain: Annotated[str, OneOf(("grammar", "response_format", "none"))]
    api_key_env: str
    connect_timeout_s: Positive
    request_timeout_s: Positive


@dataclass(frozen=True)
class SecuritySection:
    curve: bool
    server_secret_key: str
    clients_dir: str


@dataclass(frozen=True)
class HttpSection:
    address: str
    max_requests: Count
    max_connections: Count
    read_timeout_s: Positive
    request_timeout_s: Positive
    tokens_file: str


@dataclass(frozen=True)
class PartitionsSection:
    count: Count
    addresses: list[str]
    request_timeout_ms: Positive
    flush_timeout_ms: Positive
    queue_events: Count
    heartbeat_ms: Annotated[int, Range(100)]
    stop_drain_s: NonNegative
    start_timeout_s: Positive
    restart_delay_s: Positive
    server_key: str
    client_key: str


@dataclass(frozen=True)
class Config:
    service: ServiceSection
    limits: LimitsSection
    store: StoreSection
    writer: WriterSection
    runtime: RuntimeSection
    interest: InterestSection
    projections: ProjectionsSection
    recommend: RecommendSection
    model: ModelSection
    inference: InferenceSection
    security: SecuritySection
    http: HttpSection
    partitions: PartitionsSection


# -------------------------------------------------------------- checking


def _split(hint: Any) -> tuple[Any, Range | OneOf | None]:
    """(base type, Range, OneOf or None) of a field's annotation."""
    if get_origin(hint) is Annotated:
        base, *extras = get_args(hint)
        return base, next((e for e in extras if isinstance(e, (Range, OneOf))), None)
    return hint, None


def _type_name(tp: Any) -> str:
    if is_dataclass(tp):
        return "a table"
    if get_origin(tp) is list:
        return "a list of strings"
    return {int: "an integer", float: "a number", bool: "a boolean (true/false)",
            str: "a string"}[tp]


def _found(value: Any) -> str:
    kind = "table" if isinstance(value, dict) else type(value).__name__
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return kind if isinstance(value, dict) else f"{kind} {shown}"


def _convert(tp: Any, value: Any) -> tuple[bool, Any]:
    """(matches, value converted): ints are accepted where a float is expected."""
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if get_origin(tp) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return ok, list(value) if ok else value
    return isinstance(value, tp), value


def _check_value(path: str, hint: Any, value: Any, complete: bool) -> Any:
    tp, bound = _split(hint)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table, got {_found(value)}")
        return _check_table(path, tp, value, complete)
    ok, value = _convert(tp, value)
    if not ok:
        raise ConfigError(f"{path} must be {_type_name(tp)}, got {_found(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    problem = bound.violation(value) if bound is not None else None
    if problem:
        raise ConfigError(f"{path} {problem}, got {value!r}")
    return value


def _unknown(path: str, key: str, known: list[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    what = f"unknown key {where}" if path else f"unknown section [{key}]"
    close = difflib.get_close_matches(key, known, n=1)
    prefix = f"{path}." if path else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(what + hint)


def _check_table(path: str, schema: type, table: dict, complete: bool) -> dict:
    hints = get_type_hints(schema, include_extras=True)
    known = [f.name for f in fields(schema)]
    out = {}
    for key, value in table.items():
        if key not in hints:
            raise _unknown(path, str(key), known)
        out[key] = _check_value(f"{path}.{key}" if path else key, hints[key], value, complete)
    missing = [k for k in known if k not in table]
    if complete and missing:
        where = f"{path}.{missing[0]}" if path else f"[{missing[0]}]"
        raise ConfigError(f"{where} is missing")
    return out


def _check_relations(config: dict) -> None:
    """Rules between keys, checked on the merged config."""
    store = config["store"]
    if store["max_map_size_mb"] < store["map_size_mb"]:
        raise ConfigError(f"store.max_map_size_mb ({store['max_map_size_mb']}) is smaller "
                          f"than store.map_size_mb ({store['map_size_mb']})")
    inference = config["inference"]
    if inference["cache_max_map_size_mb"] < inference["cache_map_size_mb"]:
        raise ConfigError("inference.cache_max_map_size_mb is smaller than "
                          "inference.cache_map_size_mb")
    security = config["security"]
    for key in ("server_secret_key", "clients_dir"):
        if security["curve"] and not security[key]:
            raise ConfigError(f"security.{key} is required when security.curve = true")
    partitions = config["partitions"]
    if bool(partitions["server_key"]) != bool(partitions["client_key"]):
        raise ConfigError("partitions.server_key and partitions.client_key go together")


def check_layer(layer: Any, source: str, complete: bool = False) -> dict:
    """One layer (file or overrides) checked against the schema; messages start with ``source``."""
    if not isinstance(layer, dict):
        raise ConfigError(f"{source}: must be a table of sections, got {_found(layer)}")
    try:
        return _check_table("", Config, layer, complete)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# ---------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None


@lru_cache(maxsize=1)
def _defaults() -> dict:
    return check_layer(_read_toml(DEFAULT_PATH), str(DEFAULT_PATH), complete=True)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None = None, **overrides: Any) -> dict:
    """Load the defaults, overlay ``path`` (if given), then ``overrides``; checked.

    ``overrides`` maps section names to dicts, e.g. ``runtime={"workers": 4}``.
    Raises ``ConfigError`` (one line, the key's path) on anything invalid.
    """
    config = _defaults()
    if path is not None:
        config = _merge(config, check_layer(_read_toml(Path(path)), str(path)))
    config = _merge(config, check_layer(overrides, "override"))
    _check_relations(config)
    return config


def typed_config(config: dict) -> Config:
    """The checked dict as dataclasses (``typed_config(c).limits.max_k``)."""
    return _build(Config, config)


def _build(schema: type, table: dict) -> Any:
    hints = get_type_hints(schema, include_extras=True)
    values = {}
    for f in fields(schema):
        tp, _ = _split(hints[f.name])
        values[f.name] = _build(tp, table[f.name]) if is_dataclass(tp) else table[f.name]
    return schema(**values)
