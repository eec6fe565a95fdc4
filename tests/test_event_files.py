"""Reading event files: CSV with a column mapping, and the short errors for bad files."""

from __future__ import annotations

import json

import pytest

from interest.tools.event_files import CsvMapping, count_events, parse_csv_map, read_events
from interest.tools.options import InputError


def test_csv_columns_are_mapped_and_converted(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("who,what,when,stars,labels,extra\n"
                    "u1,m1,2023-11-14T22:13:20,4.5,drama|war,x\n"
                    "u2,m2,1700000001,oops,,y\n")
    mapping = CsvMapping(parse_csv_map("user=who, item=what,ts=when,value=stars,tags=labels"),
                         {"type": "rate"})
    first, second = read_events(path, mapping=mapping)
    assert first == {"v": 1, "type": "rate", "user": "u1", "item": "m1", "ts": 1700000000.0,
                     "value": 4.5, "tags": ["drama", "war"], "id": first["id"]}
    assert second["value"] == "oops" and "tags" not in second    # the service rejects "oops"
    again = list(read_events(path, mapping=mapping))
    assert [e["id"] for e in again] == [first["id"], second["id"]] and first["id"] != second["id"]
    assert count_events(path, mapping=mapping) == 2


def test_csv_without_a_map_uses_columns_named_like_event_keys(tmp_path):
    path = tmp_path / "events.tsv"
    path.write_text("id\ttype\tts\tuser\titem\tnote\ne1\tview\t5\tu1\tm1\thi\n")
    assert list(read_events(path)) == [{"v": 1, "id": "e1", "type": "view", "ts": 5.0,
                                        "user": "u1", "item": "m1"}]


@pytest.mark.parametrize("content, mapping, message", [
    ("a,b\n1,2\n", "user=c", "no column 'c'; the header has a, b"),
    ("a,b\n1,2\n", None, "no column is named like an event key"),
    ("", None, "empty, no header row"),
])
def test_bad_csv_is_one_clear_error(tmp_path, content, mapping, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        count_events(path, mapping=CsvMapping(parse_csv_map(mapping)))


def test_bad_map_bad_json_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="expected KEY=COLUMN"):
        parse_csv_map("user")
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"v": 1}) + "\n{oops\n")
    with pytest.raises(InputError, match="e.jsonl:2: not JSON"):
        count_events(path)
    with pytest.raises(InputError, match="no such file or folder"):
        count_events(tmp_path / "absent.jsonl")
    with pytest.raises(InputError, match="not a MovieLens-100K one: no u.data, u.item, u.user"):
        count_events(tmp_path)
