"""The real bundled model (SmolLM2-135M-Instruct Q4_1) through the inference actor."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from interest.engine.llm import prompts
from interest.engine.config import load_config
from tests.real_model import model_or_skip

pytestmark = [pytest.mark.model, pytest.mark.integration]

MODEL_PATH = model_or_skip()

from interest.actors.inference import Inference  # noqa: E402
from interest.engine.llm.backends import LlamaBackend, Preempted  # noqa: E402

VOCAB = ("action", "adventure", "animation", "children", "comedy", "crime", "documentary",
         "drama", "fantasy", "film-noir", "horror", "musical", "mystery", "romance",
         "sci-fi", "thriller", "war", "western")
SCIFI_FAN = (
    {"item": "50", "title": "Star Wars (1977)", "tags": ["action", "adventure", "sci-fi", "war"], "type": "view"},
    {"item": "183", "title": "Alien (1979)", "tags": ["horror", "sci-fi", "thriller"], "type": "rating"},
    {"item": "89", "title": "Blade Runner (1982)", "tags": ["film-noir", "sci-fi"], "type": "view"},
    {"item": "82", "title": "Jurassic Park (1993)", "tags": ["action", "adventure", "sci-fi"], "type": "purchase"},
)


@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    inf = Inference.start(load_config(), tmp_path_factory.mktemp("cache"))
    yield inf
    inf.stop(timeout=30)


@pytest.mark.timeout(60)
def test_profile_refresh_is_schema_valid(inference):
    assert inference.available and inference.model_id.startswith("SmolLM2-135M-Instruct.Q4_1.gguf@")
    r = inference.profile("u1", SCIFI_FAN, ["space movies"], VOCAB, timeout_s=45)
    assert prompts.validate_profile({"tags": list(r.tags), "summary": r.summary}) == [], r
    assert r.cached is False and r.model == inference.model_id
    assert r.embedding is not None and len(r.embedding) == inference.dim
    again = inference.profile("u1", SCIFI_FAN, ["space movies"], VOCAB, timeout_s=45)
    assert again.cached and (again.tags, again.summary) == (r.tags, r.summary)


@pytest.mark.timeout(30)
def test_embeddings_dimension_and_similarity(inference):
    texts = [
        "Star Wars: space adventure sci-fi war",
        "Alien: sci-fi horror in space",
        "Toy Story: animated children's comedy",
        "The Lion King: animated children's musical",
    ]
    vecs = np.array(inference.embed(texts, timeout_s=20))
    assert vecs.shape == (4, inference.dim) and inference.dim == 576
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 1]


@pytest.mark.timeout(60)
def test_llama_backend_stop_check_and_gpu_warning(caplog):
    # one prompt chunk: stop_check is polled once before the prompt, then once per token
    cfg = load_config(model={"n_gpu_layers": -1},
                      inference={"prompt_cache_mb": 0, "prefill_chunk": 2048})
    with caplog.at_level(logging.WARNING, logger="interest.engine.llm.backends"):
        backend = LlamaBackend.from_config(cfg)
    try:
        if not backend.gpu_offload_supported:
            assert any("NO GPU" in r.getMessage() for r in caplog.records)
        prompt = prompts.profile_prompt(SCIFI_FAN, [], VOCAB)
        polls = []

        def stop_after_three() -> bool:
            polls.append(1)
            return len(polls) > 4

        with pytest.raises(Preempted) as info:
            backend.complete(prompt, max_tokens=64, schema=prompts.PROFILE_SCHEMA, stop_check=stop_after_three)
        assert info.value.tokens_done == 3
        done = backend.complete(prompt, max_tokens=64, schema=prompts.PROFILE_SCHEMA, stop_check=lambda: False)
        assert done.completion_tokens > 3
        json.loads(done.text) if done.finish_reason == "stop" else prompts.parse_profile(done.text)
    finally:
        backend.close()


@pytest.mark.timeout(90)
def test_prompt_evaluation_is_preemptible_in_chunks_and_resumes_exactly():
    """stop_check is polled between chunks of the prompt's evaluation: a request can yield
    before its first token, and the prompt evaluated afterwards (reusing what is left in
    the KV cache) gives the same text as an uninterrupted run."""
    backend = LlamaBackend.from_config(load_config(inference={"prompt_cache_mb": 0,
                                                              "prefill_chunk": 8}))
    other = prompts.profile_prompt(SCIFI_FAN[:2], ["robots"], VOCAB)
    prompt = prompts.profile_prompt(SCIFI_FAN, ["space movies"], VOCAB)
    kw = {"max_tokens": 48, "schema": prompts.PROFILE_SCHEMA}
    try:
        backend.complete(other, stop_check=lambda: False, **kw)
        reference = backend.complete(prompt, stop_check=lambda: False, **kw).text
        backend.complete(other, stop_check=lambda: False, **kw)
        polls = []

        def stop_at_third_chunk() -> bool:
            polls.append(1)
            return len(polls) >= 3

        with pytest.raises(Preempted) as info:
            backend.complete(prompt, stop_check=stop_at_third_chunk, **kw)
        assert info.value.tokens_done == 0 and len(polls) == 3      # before any token
        assert backend.complete(prompt, stop_check=lambda: False, **kw).text == reference
    finally:
        backend.close()


@pytest.mark.timeout(120)
def test_fresh_interests_end_to_end_over_the_api_socket(tmp_path):
    """The real model behind a real server: `interests` with fresh: true over ZeroMQ."""
    import zmq  # noqa: PLC0415

    from interest.engine.serving.client import Client  # noqa: PLC0415
    from interest.engine.serving.server import Server  # noqa: PLC0415

    config = load_config(store={"sync": False}, inference={"refresh_min_events": 1000})
    inference = Inference.start(config, str(tmp_path / "cache"))
    ctx = zmq.Context()
    with Server(config, tmp_path / "data", ingest="tcp://127.0.0.1:*",
                api="tcp://127.0.0.1:*", inference=inference) as server:
        client = Client(server.api, timeout=90, context=ctx)
        try:
            items = [{"v": 1, "id": f"item-{x['item']}", "type": "item", "ts": 1.0,
                      "item": x["item"], "title": x["title"], "tags": x["tags"]} for x in SCIFI_FAN]
            views = [{"v": 1, "id": f"v{i}", "type": "view", "ts": 100.0 + i, "user": "fan",
                      "item": x["item"]} for i, x in enumerate(SCIFI_FAN)]
            client.call("ingest", events=items + views)
            reply = client.call("interests", user="fan", fresh=True, deadline_ms=60000)
            assert reply["llm"] is not None and reply["llm"]["stale"] is False
            assert reply["llm"]["model"] == inference.model_id
            assert isinstance(reply["summary"], str) and reply["summary"]
            assert reply["version"] == len(views) + 1          # the journaled profile event
        finally:
            client.close()
    ctx.destroy(linger=0)
