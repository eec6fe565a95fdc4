"""One catalog item profiled end to end by the real bundled model (SmolLM2-135M-Instruct)
through the service: generated at background priority, journaled, schema-valid.

About 5 s on a quiet 2-core machine; measured up to 150 s when other work shared the
cores (the background job's prompt is evaluated in polled chunks), hence the wide limits."""

from __future__ import annotations

import pytest

from interest.engine.config import load_config
from tests.real_model import model_or_skip

pytestmark = [pytest.mark.model, pytest.mark.integration]

model_or_skip()

from interest.actors.inference import Inference  # noqa: E402
from interest.engine.journal.codec import CATALOG_STREAM  # noqa: E402
from interest.engine.journal.events import ITEM_PROFILE_TYPE, parse_item_profile  # noqa: E402
from interest.engine.llm.item_profiles import current_profile, source_hash  # noqa: E402
from interest.engine.serving.service import Service  # noqa: E402
from tests.conftest import item_event, wait_for  # noqa: E402
from tests.test_item_profiles_service import ask  # noqa: E402


@pytest.mark.timeout(300)
def test_the_real_model_profiles_an_item_into_the_journal(tmp_path):
    config = load_config(store={"sync": False}, projections={"learner": "thread"},
                         inference={"item_profiles": True, "refresh_min_events": 1000})
    inference = Inference.start(config, tmp_path / "cache")
    assert inference.available, inference.reason
    service = Service(config, tmp_path / "data", inference=inference)
    try:
        alien = item_event("183", ["horror", "sci-fi", "thriller"], title="Alien (1979)")
        ask(service, op="ingest", events=[alien])
        # polled without the stats op: it would compete with the model for the CPU
        wait_for(lambda: service.item_profiler.stats()["outstanding"] == 0, timeout=270,
                 reason="the model's item profile")
        stats = ask(service, op="stats")["inference"]["item_profiles"]
        assert stats["profiled"] == 1 and stats["failed"] == 0, stats
        wait_for(lambda: current_profile("183", service.catalog.get("183")), timeout=10,
                 reason="the profile folded into the catalog")
        entries = [e for e in service.store.read(CATALOG_STREAM) if e.type == ITEM_PROFILE_TYPE]
        assert len(entries) == 1
        event = parse_item_profile(entries[0].event)          # schema-valid as journaled
        assert event.item == "183" and event.model == inference.model_id
        assert event.description and len(event.input_hash) == 64
        assert event.source_hash == source_hash("183", alien)
    finally:
        service.stop(timeout=30)
