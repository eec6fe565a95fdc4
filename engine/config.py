"""Configuration: the embedded ``configs/default.toml`` overlaid with a user file.

A config is a plain nested dict; ``load_config`` merges section by section so a
user file only needs the keys it changes.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None = None, **overrides: Any) -> dict:
    """Load the defaults, overlay ``path`` (if given), then ``overrides``.

    ``overrides`` maps section names to dicts, e.g. ``runtime={"workers": 4}``.
    """
    with DEFAULT_PATH.open("rb") as fh:
        config = tomllib.load(fh)
    if path is not None:
        with Path(path).open("rb") as fh:
            config = _merge(config, tomllib.load(fh))
    return _merge(config, overrides)
