"""The materialised catalog record of an item: how catalog-stream entries fold into it.

One set of rules for every place that keeps the catalog: the store's items table
(``store.items()``, written in the commit's transaction), the live ``Catalog``
(the catalog projection) and a replay of the journal. A record is the item's
latest ``item`` event (its wire map) plus, under ``PROFILE_KEY``, the latest
``item_profile`` journaled for the item:

* ``item`` replaces the record and carries the profile over. When the update
  changed what the profile was written from (title or tags), the profile is
  stale; it stays in the record until a new one is journaled and replaces it.
  Readers tell the two apart with ``engine.llm.item_profiles.current_profile``
  (a stale profile is never used). A key named ``PROFILE_KEY`` that a producer
  put in an ``item`` event is not the service's: it is left out of the record.
* ``item_profile`` sets the record's profile; one for an item the catalog does
  not hold is ignored (it stays in the journal, nothing is materialised).

The functions are pure: they never change ``previous``.
"""

from __future__ import annotations

from interest.engine.journal.events import ITEM_PROFILE_TYPE

#: Where a record keeps its item's profile.
PROFILE_KEY = "item_profile"
#: The fields of an ``item_profile`` event kept in the record.
PROFILE_FIELDS = ("keywords", "description", "model", "input_hash", "source_hash")


def fold_item(previous: dict | None, event: dict) -> dict:
    """The record after an ``item`` event (wire map)."""
    record = {key: value for key, value in event.items() if key != PROFILE_KEY}
    if previous is not None and PROFILE_KEY in previous:
        record[PROFILE_KEY] = previous[PROFILE_KEY]
    return record


def fold_item_profile(previous: dict | None, event: dict) -> dict | None:
    """The record after an ``item_profile`` event; None when there is no item to hold it."""
    if previous is None:
        return None
    profile = {key: event.get(key) for key in PROFILE_FIELDS}
    profile["keywords"] = list(profile["keywords"] or ())
    return {**previous, PROFILE_KEY: profile}


def fold_catalog_entry(previous: dict | None, event: dict) -> dict | None:
    """The record of ``event["item"]`` after an ``item`` or ``item_profile`` event; None
    for anything else (or a profile of an unknown item): nothing to write."""
    if event["type"] == "item":
        return fold_item(previous, event)
    if event["type"] == ITEM_PROFILE_TYPE:
        return fold_item_profile(previous, event)
    return None
