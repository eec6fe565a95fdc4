"""The in-memory catalog: items, their tags, the tag vocabulary, user attributes.

Written by one thread (the catalog actor), read by many (user actors scoring
items). Items live in append-only lists indexed by a dict, so a reader may
iterate ``range(len(catalog))`` while the writer appends, without locks.
"""

from __future__ import annotations

from collections import Counter


class Catalog:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.records: list[dict] = []
        self.index: dict[str, int] = {}
        self.tag_counts: Counter = Counter()
        self.attrs: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def put_item(self, item: str, record: dict) -> None:
        pos = self.index.get(item)
        if pos is None:
            self.index[item] = len(self.ids)
            self.records.append(record)
            self.ids.append(item)
        else:
            self.tag_counts.subtract(self.records[pos].get("tags") or ())
            self.records[pos] = record
        self.tag_counts.update(record.get("tags") or ())

    def get(self, item: str) -> dict | None:
        pos = self.index.get(item)
        return None if pos is None else self.records[pos]

    def tags_of(self, item: str) -> list[str]:
        record = self.get(item)
        return list(record.get("tags") or ()) if record else []

    def title_of(self, item: str) -> str:
        record = self.get(item)
        return (record.get("title") or item) if record else item

    def vocabulary(self, limit: int = 200) -> list[str]:
        return [tag for tag, n in self.tag_counts.most_common(limit) if n > 0]

    def put_user_attrs(self, user: str, attrs: dict) -> None:
        self.attrs[user] = attrs
