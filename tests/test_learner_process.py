"""The model learner in a process of its own: snapshots cross over, waiters fire,
the checkpoint is its durable position, and a learner that dies is started again."""

from __future__ import annotations

import os
import signal

import pytest

from interest.engine.config import load_config
from interest.engine.recommend import model_path
from interest.engine.serving.client import Client
from interest.engine.serving.server import Server
from tests.conftest import RANDOM_PORT, event, item_event, learned, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def config():
    return load_config(store={"sync": False}, inference={"enabled": False},
                       projections={"learner": "process", "publish_ms": 50.0})


def history():
    items = [item_event(f"m{i}", ["Drama" if i % 2 else "Comedy"]) for i in range(6)]
    # everyone goes m0 -> m1 -> m2: the sequential model learns what follows m0
    events = [event(f"e{u}-{n}", user=f"u{u}", item=f"m{n}", ts=100.0 + 10 * u + n)
              for u in range(8) for n in range(3)]
    return items + events


def test_the_process_learns_and_the_service_serves_its_snapshots(config, tmp_path, context):
    with Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT) as server:
        client = Client(server.api, context=context)
        client.call("ingest", events=history())
        learned(client)
        stats = client.call("stats")
        learner = stats["projections"]["learner"]
        assert learner["alive"] and learner["process"] != os.getpid()
        assert learner["publishes"] >= 1 and learner["position"] == stats["head"]
        assert stats["recommender"]["gseq"] == stats["head"]
        client.call("ingest", events=[event("new", user="fresh", item="m0", ts=500.0)])
        learned(client)
        rec = client.call("recommend", user="fresh", k=2)
        top = {row["item"]: row for row in rec["items"]}   # m1, m2: what follows m0
        assert set(top) == {"m1", "m2"}
        assert top["m1"]["sources"]["sequential"] > top["m2"]["sources"]["sequential"] > 0
        client.close()


def test_its_checkpoint_is_where_a_restart_resumes(config, tmp_path, context):
    data = tmp_path / "data"
    with Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT) as server:
        client = Client(server.api, context=context)
        client.call("ingest", events=history())
        learned(client)
        head = client.call("stats")["head"]
        client.close()
    assert model_path(data).exists()                          # saved by the child at stop
    with Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT) as server:
        assert server.service.recommender.base_gseq == head    # nothing learned twice
        client = Client(server.api, context=context)
        assert client.call("stats")["projections"]["learner"]["position"] == head
        client.close()


def test_a_learner_process_that_dies_is_started_again(config, tmp_path, context):
    with Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT) as server:
        client = Client(server.api, context=context)
        client.call("ingest", events=history())
        learned(client)
        first = client.call("stats")["projections"]["learner"]["process"]
        os.kill(first, signal.SIGKILL)
        assert client.call("recommend", user="u1")["items"]     # the last snapshot serves
        client.call("ingest", events=[event("after", user="u1", item="m3", ts=900.0)])
        wait_for(lambda: client.call("stats")["projections"]["learner"]["process"] != first,
                 timeout=15, reason="a new learner process")
        learned(client, timeout=30)
        stats = client.call("stats")["projections"]["learner"]
        assert stats["restarts"] == 1 and stats["alive"]
        client.close()


def test_snapshots_cross_over_sharing_the_arrays_already_sent():
    from interest.engine.journal.codec import StoredEvent
    from interest.engine.projections.catalog import Catalog
    from interest.engine.projections.learner_process import Receiver, Shipper, detach
    from interest.engine.projections.state import FoldParams, replay
    from interest.engine.recommend import Recommender
    params = FoldParams.from_config(load_config())
    catalog = Catalog()
    for wire in history()[:6]:
        catalog.put_item(wire["item"], wire)
    rec = Recommender(catalog, params)
    entries = [StoredEvent(stream=w["user"], seq=n + 1, gseq=i + 1, recorded_at=0.0, event=w)
               for i, (n, w) in enumerate((int(w["id"].split("-")[1]), w)
                                          for w in history()[6:])]
    shipper, receiver = Shipper(min_bytes=0), Receiver()

    def ship():
        models = rec.learner.publish()
        data, new, live = shipper.pack(detach(models))
        got = receiver.unpack(data, new, live)
        got.catalog, got.fusion = models.catalog, models.fusion
        return models, got, new
    for entry in entries[:12]:
        rec.learner.observe(entry)
    first, got, new_first = ship()
    rec.learner.observe(entries[12])                          # one more event
    second, got2, new_second = ship()
    assert 0 < len(new_second) < len(new_first)               # only what changed travels
    assert set(receiver.arrays) == set(shipper.sent[k][0] for k in shipper.sent)
    state = replay("u4", [e for e in entries[:13] if e.stream == "u4"], params)
    for original, copy in ((first, got), (second, got2)):
        want = original.recommend(state, k=5)
        assert copy.recommend(state, k=5) == want
