"""`item_profile` events: the codec, producers refused, the catalog fold in the store and the
catalog projection (one set of rules), replay, repartition and forget leaving them alone.

Real LMDB stores in temp dirs (the memory store where a rule is shared by both)."""

from __future__ import annotations

import dataclasses

import pytest

from interest.actors.item_profiles import item_profile_event
from interest.actors.projections import CatalogProjection
from interest.engine.errors import ValidationError
from interest.engine.journal.catalog_records import PROFILE_KEY, fold_catalog_entry
from interest.engine.journal.codec import CATALOG_STREAM, StoredEvent
from interest.engine.journal.events import (DERIVED_TYPES, ITEM_PROFILE_TYPE, ItemProfileEvent,
                                            parse_event, parse_item_profile)
from interest.engine.journal.store import LmdbStore, MemoryStore, WriteBatch
from interest.engine.llm.item_profiles import (ItemProfile, current_profile, profile_text,
                                               source_hash)
from interest.engine.partitions.layout import partition_dir
from interest.engine.partitions.split import EVERY, by_partition, owner
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.runner import DeadLetters
from tests.conftest import event, item_event

NOW = 1_700_000_000.0


def profile_of(item: str, record: dict, description: str = "Enjoys tense science fiction.",
               keywords=("space", "sci-fi")) -> ItemProfileEvent:
    profile = ItemProfile(item, tuple(keywords), description, "fake.gguf@000000000000",
                          "ab" * 32, source_hash(item, record))
    return item_profile_event(profile, NOW)


def alien(**changes) -> dict:
    return {**item_event("183", ["horror", "sci-fi"], title="Alien (1979)"), **changes}


def open_store(kind, tmp_path):
    return MemoryStore() if kind == "memory" else LmdbStore(tmp_path / "journal", sync=False)


def commit(store, *wires) -> None:
    store.commit(WriteBatch(events=[(CATALOG_STREAM, w) for w in wires], recorded_at=NOW))


# ------------------------------------------------------------------ the event


def test_item_profile_round_trips_through_the_codec():
    ev = profile_of("183", alien())
    wire = ev.to_wire()
    assert wire["type"] == ITEM_PROFILE_TYPE and ITEM_PROFILE_TYPE in DERIVED_TYPES
    assert set(wire) == {"v", "id", "type", "ts", "item", "keywords", "description", "model",
                         "input_hash", "source_hash"}
    assert parse_item_profile(wire, now=NOW) == ev
    stored = StoredEvent(stream=CATALOG_STREAM, seq=1, gseq=1, recorded_at=NOW, event=wire)
    assert parse_item_profile(StoredEvent.decode(stored.encode()).event, now=NOW) == ev
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.item = "other"


def test_producers_cannot_send_an_item_profile():
    wire = profile_of("183", alien()).to_wire()
    with pytest.raises(ValidationError, match="written by the service itself") as info:
        parse_event(wire, now=NOW)
    assert "producers cannot send them" in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"source_hash": None}, "field 'source_hash' is required"),
    ({"keywords": "space"}, "field 'keywords' must be a list of strings"),
    ({"keywords": ["space", ""]}, "field 'keywords[1]' must be a non-empty string"),
    ({"description": 3}, "field 'description' must be a string"),
    ({"model": ""}, "field 'model' must not be empty"),
    ({"item": "a\x00b"}, "field 'item' must not contain NUL"),
    ({"type": "item"}, "field 'type' must be 'item_profile'"),
])
def test_an_invalid_item_profile_names_its_field(change, message):
    wire = {**profile_of("183", alien()).to_wire(), **change}
    wire = {k: v for k, v in wire.items() if v is not None}
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_item_profile(wire, now=NOW)


def test_item_profiles_go_to_every_partition_like_items():
    wire = profile_of("183", alien()).to_wire()
    assert owner(wire, 4) == EVERY
    assert sorted(by_partition([wire], 3)) == [0, 1, 2]


# ------------------------------------------------------------------ the fold


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_the_store_keeps_the_profile_in_the_item_record(kind, tmp_path):
    store = open_store(kind, tmp_path)
    try:
        commit(store, alien())
        ev = profile_of("183", alien())
        commit(store, ev.to_wire())
        record = store.item("183")
        assert record[PROFILE_KEY]["description"] == "Enjoys tense science fiction."
        profile = current_profile("183", record)
        assert profile == ItemProfile("183", ("space", "sci-fi"), ev.description, ev.model,
                                      ev.input_hash, ev.source_hash)
        # profile_text rebuilt from the store alone
        assert "Enjoys tense science fiction." in profile_text("183", record, profile)
        # a text-only update keeps it current (the prompt never shows the text)
        commit(store, alien(id="t", text="In space no one can hear you scream."))
        record = store.item("183")
        assert current_profile("183", record) == profile
        assert profile_text("183", record, profile).endswith("no one can hear you scream.")
        # a retitle makes it stale: kept in the record, never used, until a new one replaces it
        retitled = alien(id="r", title="Alien: Director's Cut")
        commit(store, retitled)
        record = store.item("183")
        assert record[PROFILE_KEY]["source_hash"] == ev.source_hash
        assert current_profile("183", record) is None
        fresh = profile_of("183", record, description="Enjoys a longer cut.")
        commit(store, fresh.to_wire())
        assert current_profile("183", store.item("183")).description == "Enjoys a longer cut."
        assert store.item("183")["title"] == "Alien: Director's Cut"
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_a_profile_in_the_same_commit_as_its_item_and_one_for_no_item(kind, tmp_path):
    store = open_store(kind, tmp_path)
    try:
        commit(store, alien(), profile_of("183", alien()).to_wire(),
               profile_of("nope", {}).to_wire())
        assert current_profile("183", store.item("183")) is not None
        assert store.item("nope") is None                  # journaled, nothing to hold it
        assert [e.type for e in store.read(CATALOG_STREAM)] == ["item", ITEM_PROFILE_TYPE,
                                                                ITEM_PROFILE_TYPE]
    finally:
        store.close()


def test_a_producer_key_named_like_the_profile_is_not_the_service_s(tmp_path):
    store = LmdbStore(tmp_path / "journal", sync=False)
    try:
        forged = {"keywords": ["x"], "description": "forged", "model": "m", "input_hash": "h",
                  "source_hash": source_hash("183", alien())}
        wire = parse_event(alien(**{PROFILE_KEY: forged}), now=NOW).to_wire()
        commit(store, wire)
        assert PROFILE_KEY not in store.item("183")
        assert current_profile("183", store.item("183")) is None
    finally:
        store.close()


def history() -> list[dict]:
    """Items, their profiles, an update that makes one stale and its replacement."""
    m1, m2 = item_event("m1", ["Drama"], title="One"), item_event("m2", ["Comedy"], title="Two")
    m1b = {**item_event("m1", ["Drama", "War"], title="One", ts=2.0)}
    return [m1, m2, profile_of("m1", m1).to_wire(), profile_of("m2", m2).to_wire(), m1b,
            {"v": 1, "id": "a1", "type": "user_attrs", "ts": 1.0, "user": "u1",
             "attrs": {"age": 30}},
            profile_of("m1", m1b, description="Enjoys war dramas.").to_wire()]


def fold(entries, store=None) -> dict:
    """The catalog the catalog projection builds from ``store``'s tables and ``entries``."""
    catalog = Catalog()
    projection = CatalogProjection(store or MemoryStore(), catalog, DeadLetters())
    projection.handle(list(entries), lambda: None)
    return {item: catalog.get(item) for item in catalog.ids}


def test_the_catalog_projection_folds_profiles_and_replay_gives_the_store_s_catalog(tmp_path):
    store = LmdbStore(tmp_path / "journal", sync=False)
    try:
        live = Catalog()
        changed = []
        projection = CatalogProjection(store, live, DeadLetters(), changed.extend)
        for wire in history():                             # one commit and one batch each
            commit(store, wire)
            projection.handle(list(store.read_all(after_gseq=store.head() - 1)), lambda: None)
        assert changed == ["m1", "m2", "m1"]               # item entries only
        live_items = {item: live.get(item) for item in live.ids}
        assert current_profile("m1", live_items["m1"]).description == "Enjoys war dramas."
        assert current_profile("m2", live_items["m2"]) is not None
        assert live_items == dict(store.items())           # the projection = the store's tables
        assert fold(store.read_all()) == live_items        # replay of the journal alone
        assert live.vocabulary() == ["Drama", "Comedy", "War"]
    finally:
        store.close()


def test_a_restarted_projection_starts_from_the_store_s_tables(tmp_path):
    store = LmdbStore(tmp_path / "journal", sync=False)
    try:
        commit(store, *history())
        assert fold([], store) == dict(store.items())
        assert current_profile("m1", fold([], store)["m1"]).description == "Enjoys war dramas."
    finally:
        store.close()


def test_fold_catalog_entry_never_changes_what_it_is_given():
    before = {**alien()}
    record = fold_catalog_entry(before, profile_of("183", alien()).to_wire())
    assert PROFILE_KEY not in before and PROFILE_KEY in record
    assert fold_catalog_entry(record, alien(title="B"))[PROFILE_KEY] == record[PROFILE_KEY]
    assert fold_catalog_entry(None, event("e1")) is None


# ------------------------------------------------------- forget and repartition


def test_forget_leaves_item_profiles_alone(tmp_path):
    store = LmdbStore(tmp_path / "journal", sync=False)
    try:
        commit(store, *history())
        store.commit(WriteBatch(events=[("u1", event("e1", user="u1", item="m1"))]))
        before = dict(store.items())
        store.commit(WriteBatch(events=[("u1", {"v": 1, "id": "f", "type": "forget",
                                                "ts": NOW, "user": "u1"})]))
        assert dict(store.items()) == before
        assert store.user_attrs("u1") is None
        assert sum(e.type == ITEM_PROFILE_TYPE for e in store.read(CATALOG_STREAM)) == 3
    finally:
        store.close()


def test_repartition_copies_item_profiles_to_every_partition(tmp_path):
    from interest.engine.config import load_config
    from interest.engine.projections.state import FoldParams
    from interest.tools.repartition import repartition
    store = LmdbStore(tmp_path / "src" / "journal", sync=False)
    try:
        commit(store, *history())
        store.commit(WriteBatch(events=[(u, event(f"e{u}", user=u, item="m1"))
                                        for u in ("u1", "u2", "u3", "u4")]))
        items = dict(store.items())
    finally:
        store.close()
    report = repartition(tmp_path / "src", tmp_path / "out", 3,
                         FoldParams.from_config(load_config()))
    assert report["verified"]["ok"] and report["catalog_entries"] == len(history())
    for index in range(3):
        copy = LmdbStore(partition_dir(tmp_path / "out", index) / "journal")
        try:
            assert dict(copy.items()) == items
            assert sum(e.type == ITEM_PROFILE_TYPE for e in copy.read(CATALOG_STREAM)) == 3
            assert fold(copy.read_all()) == items
        finally:
            copy.close()
