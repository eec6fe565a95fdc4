"""The bundled GGUF model for the tests that run it: ``model_or_skip()`` at module
level gives its path, or skips the whole module saying why (no model file, or no
llama-cpp-python)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interest.engine.errors import ModelUnavailable


def model_or_skip() -> Path:
    try:
        from interest.engine.llm.model_files import bundled_model_path  # noqa: PLC0415
        path = bundled_model_path()
    except ModelUnavailable as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"bundled model not found: {exc}", allow_module_level=True)
    try:
        import llama_cpp  # noqa: F401, PLC0415
    except ImportError:  # pragma: no cover
        pytest.skip("llama-cpp-python is not installed", allow_module_level=True)
    return path
