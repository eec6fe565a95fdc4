"""The inference actor with a FakeBackend: scheduling, deadlines, coalescing,
pre-emption, caching, the model-unavailable path and statistics."""

from __future__ import annotations

import threading
import time

import pykka
import pytest

from interest.actors.inference import (
    PRIORITIES,
    EmbedRequest,
    Inference,
    PriorityInbox,
    ProfileRequest,
    ProfileResult,
    _Caller,
    _Job,
    deadline_in,
)
from interest.engine.llm.backends import FakeBackend, fake_profile_text
from interest.engine.config import load_config
from interest.engine.errors import DeadlineExceeded, ModelUnavailable, Unavailable, ValidationError
from pykka._envelope import Envelope

TIMEOUT = 10.0


@pytest.fixture
def started():
    """Start Inference instances; every one is stopped after the test."""
    made: list[Inference] = []

    def start(backend=None, cache_dir=None, **inference_cfg) -> Inference:
        cfg = load_config(inference=inference_cfg) if inference_cfg else load_config()
        inf = Inference.start(cfg, cache_dir, backend=backend or FakeBackend())
        made.append(inf)
        return inf

    yield start
    for inf in made:
        inf.stop(timeout=TIMEOUT)
    pykka.ActorRegistry.stop_all(block=True, timeout=TIMEOUT)


class Gate:
    """A fake completion that blocks on prompts naming BLOCKER until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, prompt: str) -> str:
        if "BLOCKER" in prompt:
            self.started.set()
            assert self.release.wait(TIMEOUT), "gate never released"
        return fake_profile_text(prompt)


def items_for(name: str, n: int = 1) -> tuple[dict, ...]:
    return tuple(
        {"item": f"{name}-{i}", "title": f"{name} title {i}", "tags": [f"tag-{name}"], "type": "view"}
        for i in range(n)
    )


def submit(inf: Inference, user: str, priority: str, order: list, *, deadline_s: float = 30.0,
           items: tuple[dict, ...] | None = None) -> pykka.ThreadingFuture:
    fut = pykka.ThreadingFuture()

    def on_done(result):
        order.append(user)
        fut.set(result)

    inf.submit_profile(ProfileRequest(
        user, items if items is not None else items_for(user), (), ("tag-a", "tag-b"),
        priority, deadline_in(deadline_s), on_done,
    ))
    return fut


def block(inf: Inference, gate: Gate, order: list) -> pykka.ThreadingFuture:
    """Occupy the actor with an online job (online is never pre-empted)."""
    fut = submit(inf, "BLOCKER", "online", order)
    assert gate.started.wait(TIMEOUT)
    return fut


def test_classes_served_highest_first_fifo_within_class(started):
    gate = Gate()
    inf = started(FakeBackend(gate))
    order: list[str] = []
    futs = [block(inf, gate, order)]
    for user, prio in [("bg1", "background"), ("in1", "interactive"), ("on1", "online"),
                       ("bg2", "background"), ("on2", "online"), ("in2", "interactive")]:
        futs.append(submit(inf, user, prio, order))
    assert inf.stats()["queue_depth"] == {"online": 2, "interactive": 2, "background": 2}
    gate.release.set()
    futs[-1].get(timeout=TIMEOUT)
    pykka.get_all(futs, timeout=TIMEOUT)
    assert order == ["BLOCKER", "on1", "on2", "in1", "in2", "bg1", "bg2"]


def test_fifo_inbox_option_keeps_arrival_order(started):
    gate = Gate()
    cfg = load_config()
    inf = Inference.start(cfg, None, backend=FakeBackend(gate), fifo=True)
    try:
        order: list[str] = []
        futs = [block(inf, gate, order)]
        for user, prio in [("bg1", "background"), ("on1", "online"), ("in1", "interactive")]:
            futs.append(submit(inf, user, prio, order))
        gate.release.set()
        pykka.get_all(futs, timeout=TIMEOUT)
        assert order == ["BLOCKER", "bg1", "on1", "in1"]
    finally:
        inf.stop(timeout=TIMEOUT)


def _job(rank: int, user: str = "", kind: str = "profile") -> _Job:
    job = _Job(kind, rank, time.monotonic() + 60, [_Caller(lambda r: None, time.monotonic(), PRIORITIES[rank])])
    job.user = user or f"u{id(job)}"
    return job


def test_inbox_ageing_promotes_waiting_background():
    inbox = PriorityInbox(ageing_s=10.0)
    old_bg = _job(2, "old-bg")
    inbox.put(Envelope(old_bg))
    online = _job(0, "online")
    inbox.put(Envelope(online))
    # Fresh: online first.
    assert inbox.best_waiting_rank() == 0
    # Pretend the background job has waited 25 s: two classes up -> online; a tie
    # with a real online request goes to the online one, then the aged job runs
    # ahead of fresh interactive work.
    old_bg.enqueued_at -= 25.0
    inter = _job(1, "inter")
    inbox.put(Envelope(inter))
    assert inbox.get().message is online
    first = inbox.get().message
    assert first is old_bg and first.eff_rank == 0
    assert inbox.get().message is inter
    assert inbox.empty()


def test_inbox_ageing_one_class_per_period():
    inbox = PriorityInbox(ageing_s=10.0)
    bg = _job(2, "bg")
    inbox.put(Envelope(bg))
    inter = _job(1, "inter")
    inbox.put(Envelope(inter))
    bg.enqueued_at -= 12.0  # one period: background -> interactive; the real one wins the tie
    assert inbox.best_waiting_rank() == 1
    assert inbox.get().message is inter
    assert inbox.get().message is bg
    other_bg, later = _job(2, "other-bg"), _job(1, "later")
    inbox.put(Envelope(other_bg))
    inbox.put(Envelope(later))
    other_bg.enqueued_at -= 21.0  # two periods: ahead of interactive work
    assert inbox.get().message is other_bg


def test_ageing_end_to_end(started):
    gate = Gate()
    inf = started(FakeBackend(gate), ageing_s=0.2)
    order: list[str] = []
    futs = [block(inf, gate, order)]
    futs.append(submit(inf, "bg-old", "background", order))
    time.sleep(0.5)  # > 2 ageing periods: now counts as online
    futs.append(submit(inf, "interactive-new", "interactive", order))
    gate.release.set()
    pykka.get_all(futs, timeout=TIMEOUT)
    assert order == ["BLOCKER", "bg-old", "interactive-new"]


def test_expired_requests_are_dropped_with_deadline_exceeded(started):
    gate = Gate()
    backend = FakeBackend(gate)
    inf = started(backend)
    order: list[str] = []
    futs = [block(inf, gate, order)]
    late = submit(inf, "late", "online", order, deadline_s=0.05)
    ok = submit(inf, "ok", "background", order)
    time.sleep(0.15)                           # not a barrier: the deadline must pass
    gate.release.set()
    assert isinstance(late.get(timeout=TIMEOUT), DeadlineExceeded)
    assert isinstance(ok.get(timeout=TIMEOUT), ProfileResult)
    pykka.get_all(futs, timeout=TIMEOUT)
    assert not any("late title" in p for p in backend.complete_calls)
    assert inf.stats()["deadline_drops"] == 1


def test_deadline_already_passed_is_dropped(started):
    inf = started()
    res = submit(inf, "u", "online", [], deadline_s=-1.0).get(timeout=TIMEOUT)
    assert isinstance(res, DeadlineExceeded)
    assert res.code == "deadline_exceeded"


def test_pending_refreshes_of_one_user_coalesce(started):
    gate = Gate()
    backend = FakeBackend(gate)
    inf = started(backend)
    order: list[str] = []
    block(inf, gate, order)
    f1 = submit(inf, "u", "background", order, items=items_for("first"), deadline_s=60)
    f2 = submit(inf, "u", "interactive", order, items=items_for("second"), deadline_s=50)
    f3 = submit(inf, "u", "background", order, items=items_for("third"), deadline_s=70)
    other = submit(inf, "v", "interactive", order)
    # one job for u, promoted to interactive, queued ahead of v's (older)
    assert inf.stats()["queue_depth"] == {"online": 0, "interactive": 2, "background": 0}
    assert inf.stats()["coalesced"] == 2
    gate.release.set()
    r1, r2, r3 = (f.get(timeout=TIMEOUT) for f in (f1, f2, f3))
    other.get(timeout=TIMEOUT)
    assert r1.input_hash == r2.input_hash == r3.input_hash
    assert r1.tags == ("tag-third",)  # latest inputs win
    user_prompts = [p for p in backend.complete_calls if "BLOCKER" not in p]
    assert len(user_prompts) == 2  # u once, v once
    assert "third title" in user_prompts[0] and "first title" not in user_prompts[0]
    assert order[1:] == ["u", "u", "u", "v"]


def test_coalesced_job_takes_earliest_deadline(started):
    gate = Gate()
    inf = started(FakeBackend(gate))
    order: list[str] = []
    futs = [block(inf, gate, order)]
    f1 = submit(inf, "u", "background", order, deadline_s=60)
    f2 = submit(inf, "u", "background", order, deadline_s=0.05)
    time.sleep(0.15)                           # not a barrier: the deadline must pass
    gate.release.set()
    assert isinstance(f1.get(timeout=TIMEOUT), DeadlineExceeded)
    assert isinstance(f2.get(timeout=TIMEOUT), DeadlineExceeded)
    pykka.get_all(futs, timeout=TIMEOUT)


def test_online_preempts_running_background_which_is_requeued(started):
    backend = FakeBackend(token_delay_s=0.01, tokens=150)  # ~1.5 s per generation
    inf = started(backend)
    order: list[str] = []
    bg = submit(inf, "bg", "background", order)
    t_end = time.monotonic() + TIMEOUT
    while backend.tokens_emitted < 3 and time.monotonic() < t_end:
        time.sleep(0.005)                      # polling a condition: bg is generating
    assert backend.tokens_emitted >= 3
    t0 = time.monotonic()
    online = submit(inf, "on", "online", order)
    res_on = online.get(timeout=TIMEOUT)
    online_s = time.monotonic() - t0
    res_bg = bg.get(timeout=TIMEOUT)
    assert isinstance(res_on, ProfileResult) and isinstance(res_bg, ProfileResult)
    assert order == ["on", "bg"]
    # Waited for one token of bg plus its own generation, not for all of bg.
    assert online_s < 1.5 + 1.0
    assert backend.preemptions >= 1
    users = ["bg" if "bg title" in p else "on" for p in backend.complete_calls]
    assert users == ["bg", "on", "bg"]  # bg restarted, not lost
    st = inf.stats()
    assert st["preemptions"] >= 1 and st["tokens_wasted"] > 0


def test_results_are_cached_persistently(started, tmp_path):
    backend = FakeBackend()
    inf = started(backend, cache_dir=tmp_path / "cache")
    r1 = submit(inf, "u", "online", []).get(timeout=TIMEOUT)
    r2 = submit(inf, "u", "online", []).get(timeout=TIMEOUT)
    assert (r1.cached, r2.cached) == (False, True)
    assert (r1.tags, r1.summary, r1.input_hash) == (r2.tags, r2.summary, r2.input_hash)
    assert r2.embedding == pytest.approx(r1.embedding, abs=1e-6)
    assert len(backend.complete_calls) == 1
    assert inf.stats()["profile_hit_rate"] == pytest.approx(0.5)
    inf.stop()
    # A new process (new backend, same model id) reads the same cache.
    backend2 = FakeBackend()
    inf2 = started(backend2, cache_dir=tmp_path / "cache")
    r3 = submit(inf2, "u", "online", []).get(timeout=TIMEOUT)
    assert r3.cached and r3.tags == r1.tags
    assert backend2.complete_calls == []
    inf2.stop()  # one LMDB environment per path per process
    # Another model file: no reuse.
    backend3 = FakeBackend(model_id="other.gguf@111111111111")
    inf3 = started(backend3, cache_dir=tmp_path / "cache")
    assert submit(inf3, "u", "online", []).get(timeout=TIMEOUT).cached is False


def test_embed_requests_and_embedding_cache(started, tmp_path):
    backend = FakeBackend(dim=8)
    inf = started(backend, cache_dir=tmp_path / "cache", embed_batch=2)
    fut = pykka.ThreadingFuture()
    texts = ("space opera", "romantic comedy", "space opera", "war film", "documentary")
    keys = ("a", "b", "c", "d", "e")
    inf.submit_embed(EmbedRequest(keys, texts, "background", deadline_in(30), fut.set))
    out = fut.get(timeout=TIMEOUT)
    assert set(out) == set(keys) and all(len(v) == 8 for v in out.values())
    assert out["a"] == pytest.approx(out["c"])
    assert [len(c) for c in backend.embed_calls] == [2, 2, 1]
    fut2 = pykka.ThreadingFuture()
    inf.submit_embed(EmbedRequest(("x",), ("war film",), "online", deadline_in(30), fut2.set))
    assert fut2.get(timeout=TIMEOUT)["x"] == pytest.approx(out["d"], abs=1e-6)
    assert len(backend.embed_calls) == 3
    assert inf.stats()["embed_hits"] == 1  # the second request was answered from the cache
    with pytest.raises(ValidationError):
        inf.submit_embed(EmbedRequest(("a",), (), "online", deadline_in(1), fut2.set))


def test_missing_model_not_required_answers_unavailable(tmp_path):
    cfg = load_config(model={"path": str(tmp_path / "missing.gguf"), "required": False})
    inf = Inference.start(cfg, None)
    assert inf.available is False
    assert "missing.gguf" in inf.reason
    fut = pykka.ThreadingFuture()
    inf.submit_profile(ProfileRequest("u", (), (), (), "online", deadline_in(5), fut.set))
    err = fut.get(timeout=0.1)  # answered immediately, on the caller's thread
    assert isinstance(err, ModelUnavailable) and err.code == "unavailable"
    fut2 = pykka.ThreadingFuture()
    inf.submit_embed(EmbedRequest(("k",), ("t",), "online", deadline_in(5), fut2.set))
    assert isinstance(fut2.get(timeout=0.1), ModelUnavailable)
    assert inf.stats()["available"] is False
    inf.stop()


def test_missing_model_required_raises(tmp_path):
    cfg = load_config(model={"path": str(tmp_path / "missing.gguf"), "required": True})
    with pytest.raises(ModelUnavailable, match="missing.gguf"):
        Inference.start(cfg, None)


def test_not_a_gguf_file_is_unavailable(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    cfg = load_config(model={"path": str(bad), "required": True})
    with pytest.raises(ModelUnavailable, match="not a GGUF"):
        Inference.start(cfg, None)


def test_unknown_priority_is_rejected(started):
    inf = started()
    with pytest.raises(ValidationError):
        inf.submit_profile(ProfileRequest("u", (), (), (), "urgent", deadline_in(5), lambda r: None))


def test_stop_answers_waiting_requests(started):
    gate = Gate()
    inf = started(FakeBackend(gate))
    order: list[str] = []
    blocker = block(inf, gate, order)
    waiting = submit(inf, "w", "background", order)
    stopper = threading.Thread(target=inf.stop, kwargs={"timeout": TIMEOUT})
    stopper.start()
    inbox = inf._ref.actor_inbox  # noqa: SLF001 - the stop request has reached the inbox
    t_end = time.monotonic() + TIMEOUT
    while not inbox.stop_requested and time.monotonic() < t_end:
        time.sleep(0.005)
    assert inbox.stop_requested
    gate.release.set()
    stopper.join(TIMEOUT)
    assert isinstance(waiting.get(timeout=TIMEOUT), Unavailable)
    assert isinstance(blocker.get(timeout=TIMEOUT), (Unavailable, ProfileResult))
    late = pykka.ThreadingFuture()
    inf.submit_profile(ProfileRequest("x", (), (), (), "online", deadline_in(5), late.set))
    assert isinstance(late.get(timeout=TIMEOUT), Unavailable)


def test_failing_callback_does_not_kill_the_actor(started):
    inf = started()

    def bad(_):
        raise RuntimeError("boom")

    inf.submit_profile(ProfileRequest("u", items_for("u"), (), (), "online", deadline_in(5), bad))
    assert isinstance(submit(inf, "v", "online", []).get(timeout=TIMEOUT), ProfileResult)


def test_stats_keys(started):
    inf = started()
    submit(inf, "u", "interactive", []).get(timeout=TIMEOUT)
    st = inf.stats()
    for key in ("profile_hit_rate", "embed_hit_rate", "queue_depth", "in_flight", "tokens_per_s",
                "latency_ms", "preemptions", "coalesced", "deadline_drops", "completed", "model"):
        assert key in st, key
    assert set(st["queue_depth"]) == set(PRIORITIES)
    assert set(st["latency_ms"]) == set(PRIORITIES)
    assert st["latency_ms"]["interactive"]["n"] == 1
    assert st["latency_ms"]["interactive"]["p50"] is not None
    assert st["completed"] == 1 and st["tokens_per_s"] > 0
    assert inf.model_id == "fake.gguf@000000000000" and inf.dim == 16
