"""The recommender checkpoint: a restart resumes from it and replays only the journal after it."""

import random

import pytest

from interest.engine.serving.client import Client
from interest.engine.recommend import model_path
from interest.engine.serving.server import Server
from tests.conftest import RANDOM_PORT, event, item_event, wait_for

pytestmark = pytest.mark.integration


def _stream(n_events: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    tags = ["Drama", "Comedy", "Action", "Horror"]
    items = [item_event(f"m{i}", rng.sample(tags, 2)) for i in range(30)]
    events = [event(f"e{n}", rng.choice(["view", "click", "purchase"]), user=f"u{n % 7}",
                    item=f"m{rng.randrange(30)}", ts=1000.0 + n) for n in range(n_events)]
    return items + events


def _learned(client: Client) -> None:
    """The model learner lags the log by design: wait until it has learned the head."""
    wait_for(lambda: client.call("stats")["projections"]["learner"]["lag_events"] == 0,
             reason="the learner to catch up")


def _snapshot(client: Client) -> tuple:
    _learned(client)
    stats = client.call("stats")["recommender"]
    recs = [[row["item"] for row in client.call("recommend", user=f"u{u}")["items"]]
            for u in range(7)]
    return stats["fusion"]["segments"], stats["gseq"], recs


def _first_run(config, data, context) -> tuple:
    """Ingest a stream, learn it, stop (the checkpoint is written): what it served."""
    with Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT) as first:
        client = Client(first.api, context=context)
        client.call("ingest", events=_stream(200))
        served = _snapshot(client)
        client.close()
    return served


def test_restart_resumes_from_the_checkpoint(config, tmp_path, context):
    data = tmp_path / "data"
    weights, gseq, recs_before = _first_run(config, data, context)
    assert model_path(data).exists()
    with Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT) as second:
        recommender = second.service.recommender
        assert recommender.base_gseq == gseq           # nothing replayed twice
        client = Client(second.api, context=context)
        weights_after, gseq_after, recs = _snapshot(client)
        assert weights_after == weights                # adapted fusion weights survived
        assert gseq_after == gseq
        assert recs == recs_before                     # the same recommendations
        client.call("ingest", events=[event("late", user="u1", item="m3", ts=5000.0)])
        _learned(client)
        assert client.call("stats")["recommender"]["gseq"] == gseq + 1
        client.close()
    with Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT) as third:
        assert third.service.recommender.base_gseq == gseq + 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_discarded_and_the_models_rebuilt(config, tmp_path, context,
                                                                 damage, caplog):
    data = tmp_path / "data"
    _, gseq, recs_before = _first_run(config, data, context)
    raw = bytearray(model_path(data).read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0x40
    model_path(data).write_bytes(bytes(raw))
    with Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT) as second:
        assert "unusable" in caplog.text and "rebuilding" in caplog.text
        assert second.service.recommender.base_gseq == 0        # nothing trusted from it
        client = Client(second.api, context=context)
        _, gseq_after, recs = _snapshot(client)                 # relearned from the journal
        assert gseq_after == gseq and recs == recs_before
        client.close()
