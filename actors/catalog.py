"""The catalog actor: folds ``item`` and ``user_attrs`` entries into the shared Catalog."""

from __future__ import annotations

import logging

from actors.messages import Apply
from actors.runtime import PooledActor
from engine.projections.catalog import Catalog
from engine.journal.store import Store

logger = logging.getLogger(__name__)


class CatalogActor(PooledActor):
    """Single writer of the in-memory ``Catalog``; runs on the shared dispatcher."""

    def __init__(self, catalog: Catalog, store: Store, on_items=None, stats: dict | None = None):
        super().__init__()
        self.catalog = catalog
        self.store = store
        self.on_items = on_items      # optional callback(list of item ids) for new/changed items
        self.stats = stats if stats is not None else {"applied": 0}

    def on_start(self) -> None:
        """Runs on a dispatcher worker: load the materialised catalog from the store."""
        for item, record in self.store.items():
            self.catalog.put_item(item, record)
        for user, attrs in self.store.all_user_attrs():
            self.catalog.put_user_attrs(user, attrs)

    def on_receive(self, message):
        """Runs on a dispatcher worker, one message at a time."""
        if isinstance(message, Apply):
            changed = []
            for entry in message.entries:
                event = entry.event
                if event["type"] == "item":
                    self.catalog.put_item(event["item"], event)
                    changed.append(event["item"])
                elif event["type"] == "user_attrs":
                    self.catalog.put_user_attrs(event["user"], event["attrs"])
                self.stats["applied"] += 1
            if changed and self.on_items is not None:
                self.on_items(changed)
            if message.done is not None:
                message.done()
            return None
        return None
