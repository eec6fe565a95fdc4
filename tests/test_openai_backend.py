"""The remote inference backend (``[inference] backend = "openai"``).

First against a real local HTTP server that misbehaves on demand (errors
mapped to the service's tree), then against the real ``llama_cpp.server``
with the bundled model on loopback (schema-valid profiles through the
inference actor, embeddings equal to the in-process ones, pre-emption).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from interest.engine.errors import (BadRequest, DeadlineExceeded, InterestError, ModelUnavailable,
                                    Overloaded, Unavailable)
from interest.engine.llm import prompts
from interest.engine.llm.backends import Preempted
from interest.engine.llm.openai_backend import OpenAIBackend
from interest.engine.llm.schema_check import schema_problems

pytestmark = pytest.mark.integration

PROFILE = '{"tags": ["sci-fi"], "summary": "Likes space."}'
ITEMS = ({"item": "50", "title": "Star Wars (1977)", "tags": ["action", "sci-fi"], "type": "view"},
         {"item": "183", "title": "Alien (1979)", "tags": ["horror", "sci-fi"], "type": "rating"})
VOCAB = ("action", "comedy", "drama", "horror", "romance", "sci-fi", "thriller")


# -- a server that misbehaves on demand -------------------------------------------------


def _chunk(text: str, finish: str | None = None) -> bytes:
    event = {"choices": [{"text": text, "index": 0, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    """Answers by ``self.server.mode`` (one mode per test); records request bodies."""

    def log_message(self, *_args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json", **headers) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.server.mode == "no_models":
            self._send(200, b'{"object": "list", "data": []}')
        else:
            self._send(200, json.dumps({"data": [{"id": "/models/tiny.gguf"}, {"id": "other"}]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        try:
            if self.path.endswith("/embeddings"):
                self._embeddings(body)
            elif body.get("stream"):
                self._stream(self.server.mode)
            else:
                self._complete(self.server.mode)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts, pre-emption)

    def _embeddings(self, body: dict) -> None:
        mode = self.server.mode
        if mode == "embed_500":
            self._send(500, b'{"error": "Llama model must be created with embedding=True"}')
            return
        vec = [[1.0, 0.0], [0.0, 1.0]] if mode == "per_token" else [3.0, 4.0]
        data = [{"index": i, "embedding": vec} for i in reversed(range(len(body["input"])))]
        if mode == "embed_short":
            data = data[:-1]
        self._send(200, json.dumps({"data": data}).encode())

    def _complete(self, mode: str) -> None:
        answers = {
            "ok": (200, json.dumps({"choices": [{"text": PROFILE, "finish_reason": "stop"}],
                                    "usage": {"prompt_tokens": 12, "completion_tokens": 9}})),
            "off_schema": (200, json.dumps({"choices": [{"text": '{"tags": "x"}', "finish_reason": "stop"}]})),
            "500": (500, '{"detail": "internal error"}'),
            "400": (400, '{"detail": "prompt too long"}'),
            "404": (404, '{"detail": "model not found"}'),
            "bad_json": (200, "<html>gateway</html>"),
            "no_choices": (200, '{"usage": {}}'),
        }
        if mode == "429":
            self._send(429, b'{"detail": "busy"}', Retry_After="1.5")
        elif mode == "slow":
            time.sleep(1.5)
            self._send(200, answers["ok"][1].encode())
        else:
            code, text = answers[mode]
            self._send(code, text.encode())

    def _stream(self, mode: str) -> None:
        if mode == "500":
            self._send(500, b'{"detail": "boom"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = ['{"tags": ', '["sci-fi"], ', '"summary": ', '"Likes space."}']
        self.wfile.write(b": ping\n\n")
        for i, piece in enumerate(pieces):
            if mode == "stream_drop" and i == 2:
                self.wfile.flush()
                self.connection.shutdown(2)  # the server dies mid-answer
                return
            if mode == "stream_stall" and i == 2:
                self.wfile.flush()
                time.sleep(1.5)
            self.wfile.write(_chunk(piece))
            self.wfile.flush()
        if mode == "stream_garbage":
            self.wfile.write(b"data: {not json\n\n")
        elif mode != "stream_cut":  # stream_cut: [DONE] without a finish reason
            self.wfile.write(_chunk("", "stop"))
            self.wfile.write(b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}}\n\n')
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.mode = "ok"
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def refused_url():
    """A URL whose port is held (bound, never listening): connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()


@pytest.fixture
def backend(fake_server):
    b = OpenAIBackend(fake_server.url, constrain="none", request_timeout_s=0.5, embed_batch=3)
    yield b
    b.close()


def _complete(b: OpenAIBackend, streamed: bool = False, stop_check=None):
    if streamed and stop_check is None:
        stop_check = lambda: False  # noqa: E731
    return b.complete("prompt", max_tokens=16, schema=prompts.PROFILE_SCHEMA, stop_check=stop_check)


def test_identity_and_embeddings_from_the_server(fake_server, backend):
    assert backend.model == "/models/tiny.gguf" and backend.model_id == "tiny.gguf@openai"
    assert backend.dim == 2
    vecs = backend.embed(["a", "b", "c", "d", ""])       # two batches of 3, out-of-order rows
    assert vecs == [pytest.approx([0.6, 0.8])] * 5
    assert [len(b["input"]) for b in fake_server.bodies[-2:]] == [3, 2]
    assert fake_server.bodies[-1]["input"][-1] == " "    # empty text sent as a space
    fake_server.mode = "per_token"                        # a server without pooling: mean-pooled here
    assert backend.embed(["x"]) == [pytest.approx([2 ** -0.5, 2 ** -0.5])]


def test_completion_plain_and_streamed(fake_server, backend):
    out = _complete(backend)
    assert (out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason) == (PROFILE, 12, 9, "stop")
    out = _complete(backend, streamed=True)
    assert json.loads(out.text) == json.loads(PROFILE)
    assert (out.prompt_tokens, out.completion_tokens, out.finish_reason) == (7, 4, "stop")
    assert backend.schema_violations == 0
    assert fake_server.bodies[-1]["stream"] is True and fake_server.bodies[-1]["model"] == "/models/tiny.gguf"


def test_constraint_modes_send_grammar_or_response_format(fake_server):
    sent = {}
    for mode in ("grammar", "response_format", "none"):
        b = OpenAIBackend(fake_server.url, model="other", constrain=mode)
        try:
            _complete(b)
        finally:
            b.close()
        sent[mode] = fake_server.bodies[-1]
        assert sent[mode]["model"] == "other"
    assert "root ::=" in sent["grammar"]["grammar"] and "response_format" not in sent["grammar"]
    assert sent["response_format"]["response_format"]["json_schema"]["schema"] == prompts.PROFILE_SCHEMA
    assert not {"grammar", "response_format"} & set(sent["none"])


def test_off_schema_answer_is_reported_not_hidden(fake_server, backend):
    fake_server.mode = "off_schema"
    out = _complete(backend)
    assert out.text == '{"tags": "x"}' and backend.schema_violations == 1


@pytest.mark.parametrize("mode, error", [
    ("500", InterestError), ("400", BadRequest), ("404", ModelUnavailable), ("429", Overloaded),
    ("bad_json", InterestError), ("no_choices", InterestError), ("slow", DeadlineExceeded),
])
def test_http_failures_map_to_the_error_tree(fake_server, backend, mode, error):
    fake_server.mode = mode
    with pytest.raises(error) as info:
        _complete(backend)
    assert info.type is error, info.value             # not a subclass standing in
    assert isinstance(info.value.__cause__, Exception) or mode not in ("bad_json", "slow")
    if mode == "429":
        assert info.value.retry_after_ms == 1500
    assert "/completions" in str(info.value)


@pytest.mark.parametrize("mode, error", [
    ("500", InterestError), ("stream_drop", Unavailable), ("stream_stall", DeadlineExceeded),
    ("stream_garbage", InterestError), ("stream_cut", Preempted),
])
def test_stream_failures_map_to_the_error_tree(fake_server, backend, mode, error):
    fake_server.mode = mode
    with pytest.raises(error) as info:
        _complete(backend, streamed=True)
    assert info.type is error, info.value


def test_stop_check_closes_the_stream_and_preempts(fake_server, backend):
    calls = []

    def stop_check():
        calls.append(1)
        return len(calls) >= 2
    with pytest.raises(Preempted) as info:
        _complete(backend, stop_check=stop_check)
    assert info.value.tokens_done == 2
    assert _complete(backend).text == PROFILE           # the pool recovers a fresh connection


@pytest.mark.parametrize("mode, error", [("embed_500", InterestError), ("embed_short", InterestError)])
def test_embedding_failures_map_to_the_error_tree(fake_server, backend, mode, error):
    fake_server.mode = mode
    with pytest.raises(error) as info:
        backend.embed(["a", "b"])
    assert info.type is error and "/embeddings" in str(info.value)


def test_unusable_server_at_start_is_model_unavailable(fake_server, refused_url):
    with pytest.raises(ModelUnavailable, match="cannot connect|connection failed") as info:
        OpenAIBackend(refused_url, connect_timeout_s=0.5)
    assert isinstance(info.value.__cause__, Unavailable)
    with pytest.raises(ModelUnavailable, match="no model 'nope'"):
        OpenAIBackend(fake_server.url, model="nope")
    fake_server.mode = "no_models"
    with pytest.raises(ModelUnavailable, match="lists no model"):
        OpenAIBackend(fake_server.url)
    fake_server.mode = "embed_500"                        # generation up, embeddings not
    with pytest.raises(ModelUnavailable, match="embedding=True"):
        OpenAIBackend(fake_server.url)


def test_inference_falls_back_when_the_tier_is_down(refused_url):
    from interest.actors.inference import Inference  # noqa: PLC0415
    from interest.engine.config import load_config  # noqa: PLC0415
    config = load_config(inference={"backend": "openai", "url": refused_url, "connect_timeout_s": 0.3})
    inf = Inference.start(config, None)
    try:
        assert not inf.available and "not usable" in inf.reason
    finally:
        inf.stop()
    with pytest.raises(ModelUnavailable):
        Inference.start(load_config(model={"required": True}, inference=config["inference"]), None)


def test_schema_check_finds_each_problem():
    schema = prompts.PROFILE_SCHEMA
    assert schema_problems({"tags": ["a"], "summary": "s"}, schema) == []
    assert schema_problems({"tags": [], "summary": "", "x": 1}, schema) == [
        "$: unexpected key 'x'", "$.tags: length 0 < minItems 1", "$.summary: length 0 < minLength 1"]
    assert schema_problems({"tags": [1]}, schema) == ["$: missing 'summary'", "$.tags[0]: expected string, got int"]
    assert schema_problems([], schema) == ["$: expected object, got list"]


# -- the real llama_cpp.server with the bundled model -------------------------------------


def _bundled_model():
    from interest.engine.llm.model_files import bundled_model_path  # noqa: PLC0415
    try:
        import llama_cpp.server  # noqa: F401, PLC0415
        return bundled_model_path()
    except (ImportError, ModelUnavailable) as exc:  # pragma: no cover - environment
        pytest.skip(f"llama_cpp.server or the bundled model missing: {exc}")


@pytest.fixture(scope="module")
def llama_servers():
    from interest.engine.llm.server_process import start_pair  # noqa: PLC0415
    gen, emb = start_pair(_bundled_model(), timeout_s=120)
    yield gen, emb
    gen.stop()
    emb.stop()


@pytest.fixture
def remote(llama_servers):
    gen, emb = llama_servers
    b = OpenAIBackend(gen.url, embed_url=emb.url, request_timeout_s=120)
    yield b
    b.close()


@pytest.mark.model
@pytest.mark.timeout(240)
def test_real_server_profiles_through_the_inference_actor(llama_servers, tmp_path):
    from interest.actors.inference import Inference  # noqa: PLC0415
    from interest.engine.config import load_config  # noqa: PLC0415
    gen, emb = llama_servers
    config = load_config(inference={"backend": "openai", "url": gen.url, "embed_url": emb.url,
                                    "request_timeout_s": 120.0})
    inf = Inference.start(config, tmp_path / "cache")
    try:
        assert inf.available, inf.reason
        assert inf.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf@openai" and inf.dim == 576
        r = inf.profile("u1", ITEMS, ["space"], VOCAB, timeout_s=120)
        assert prompts.validate_profile({"tags": list(r.tags), "summary": r.summary}) == [], r
        assert not r.cached and r.model == inf.model_id and len(r.embedding) == 576
        again = inf.profile("u2", ITEMS, ["space"], VOCAB, timeout_s=120)
        assert again.cached and again.tags == r.tags        # the service-side cache answered
        stats = inf.stats()
        assert stats["generations"] == 1 and stats["errors"] == 0 and stats["tokens"] > 0
    finally:
        inf.stop(timeout=30)


@pytest.mark.model
@pytest.mark.timeout(240)
def test_real_server_output_is_schema_constrained_and_preemptible(remote):
    prompt = prompts.profile_prompt(ITEMS, ["space"], VOCAB)
    out = remote.complete(prompt, max_tokens=96, schema=prompts.PROFILE_SCHEMA, stop_check=lambda: False)
    assert out.finish_reason == "stop" and remote.schema_violations == 0
    assert schema_problems(json.loads(out.text), prompts.PROFILE_SCHEMA) == [], out.text
    polls = []

    def stop_after_three():
        polls.append(1)
        return len(polls) > 3
    with pytest.raises(Preempted) as info:
        remote.complete(prompt + " ", max_tokens=96, schema=prompts.PROFILE_SCHEMA,
                        stop_check=stop_after_three)
    assert info.value.tokens_done == 4
    short = remote.complete(prompt, max_tokens=4, schema=prompts.PROFILE_SCHEMA)  # server free again
    assert short.finish_reason == "length" and short.completion_tokens == 4


@pytest.mark.model
@pytest.mark.timeout(240)
def test_real_server_embeddings_equal_the_in_process_ones(remote):
    import numpy as np  # noqa: PLC0415

    from interest.engine.llm.backends import LlamaBackend  # noqa: PLC0415
    texts = ["Star Wars (1977). action, sci-fi.", "Sleepless in Seattle (1993). comedy, romance."]
    local = LlamaBackend(_bundled_model(), n_ctx=256)
    try:
        want = np.array(local.embed(texts))
    finally:
        local.close()
    got = np.array(remote.embed(texts))
    assert got.shape == want.shape and np.allclose(np.linalg.norm(got, axis=1), 1.0)
    assert (got * want).sum(axis=1).min() > 0.999
