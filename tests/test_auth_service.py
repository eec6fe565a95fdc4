"""End to end: the real Server with ``[security] curve = true`` enforces the roles of
PROTOCOL.md's Authentication section on both sockets."""

from __future__ import annotations

import json

import pytest

from interest.engine.config import load_config
from interest.engine.errors import DeadlineExceeded
from interest.engine.serving import auth
from interest.engine.serving.client import Client, Publisher, RequestError
from interest.engine.serving.server import Server
from tests.conftest import RANDOM_PORT, event, item_event, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(tmp_path):
    clients = tmp_path / "clients"
    paths = {"server": auth.create_key_pair(tmp_path / "server", "server")}
    for name, role in (("paula", "producer"), ("rita", "reader"), ("ada", "admin")):
        paths[role] = auth.create_key_pair(clients, name, role)
    paths["stranger"] = auth.create_key_pair(tmp_path / "outside", "stranger", "admin")
    paths["clients_dir"] = clients
    return paths


@pytest.fixture
def secure_server(keys, tmp_path):
    config = load_config(store={"sync": False}, inference={"enabled": False},
                         runtime={"sweep_seconds": 0.2},
                         security={"curve": True, "clients_dir": str(keys["clients_dir"]),
                                   "server_secret_key": str(keys["server"][1])})
    srv = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT)
    yield srv
    srv.stop()


@pytest.fixture
def connect(secure_server, keys, context):
    """connect(who, kind="client", timeout=5) -> a Client/Publisher closed at teardown."""
    made = []

    def make(who, kind="client", timeout=5.0):
        key_args = {"server_key": keys["server"][0], "client_key": keys[who][1]}
        if kind == "client":
            made.append(Client(secure_server.api, timeout=timeout, context=context,
                               **key_args))
        else:
            made.append(Publisher(secure_server.ingest, context=context, **key_args))
        return made[-1]

    yield make
    for thing in made:
        if isinstance(thing, Publisher):
            thing.close(linger_ms=0)
        else:
            thing.close()


def forbidden(client: Client, op: str, **fields) -> str:
    with pytest.raises(RequestError) as err:
        client.call(op, **fields)
    assert err.value.code == "forbidden", err.value
    return str(err.value)


def test_reader_may_query_but_not_write_or_read_stats(connect):
    reader = connect("reader")
    assert reader.call("ping")["version"] == 1
    assert "items" in reader.call("recommend", user="u1")
    assert "tags" in reader.call("interests", user="u1")
    assert "reader" in forbidden(reader, "ingest", events=[event("e1")])
    forbidden(reader, "stats")
    forbidden(reader, "flush")


def test_producer_may_ingest_and_ping_only(connect):
    producer = connect("producer")
    reply = producer.call("ingest", events=[item_event("m1", ["Drama"]), event("e1", item="m1")])
    assert reply["accepted"] == 2
    assert producer.call("ping")["version"] == 1
    forbidden(producer, "recommend", user="u1")
    forbidden(producer, "stats")


def test_admin_may_do_everything(connect):
    admin = connect("admin")
    assert admin.call("ingest", events=[event("e1")])["accepted"] == 1
    assert "received" in admin.call("stats")
    assert admin.call("flush", timeout_ms=5000)["applied"] >= 1
    assert admin.call("interests", user="u1")["events"] == 1
    with pytest.raises(RequestError) as err:
        admin.call("no-such-op")
    assert err.value.code == "bad_request"


def test_ingest_socket_takes_producers_and_drops_others(connect):
    admin = connect("admin")
    connect("reader", "publisher").send([event("from-reader", user="r")])
    connect("producer", "publisher").send([event("from-producer", user="p")])
    wait_for(lambda: admin.call("interests", user="p")["events"] == 1,
             reason="the producer's pushed event to be applied")
    admin.call("flush", timeout_ms=5000)
    assert admin.call("interests", user="r")["events"] == 0


def test_an_unknown_key_or_a_plain_client_gets_nothing(secure_server, connect, context):
    with pytest.raises(DeadlineExceeded):
        connect("stranger", timeout=1.0).call("ping")
    with Client(secure_server.api, timeout=1.0, context=context) as plain:
        with pytest.raises(DeadlineExceeded):
            plain.call("ping")


def test_tools_take_the_key_options(secure_server, keys, tmp_path, capsys):
    from interest.tools import explain_report, publish, query
    key_args = ["--server-key", str(keys["server"][0])]
    reader = key_args + ["--client-key", str(keys["reader"][1])]
    producer = key_args + ["--client-key", str(keys["producer"][1])]
    assert query.main(["recommend", "--user", "u1", "--api", secure_server.api, *reader]) == 0
    assert query.main(["stats", "--api", secure_server.api, *reader]) == 1
    assert '"forbidden"' in capsys.readouterr().out
    assert explain_report.main(["u1", "--api", secure_server.api, *reader]) == 0
    capsys.readouterr()
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(event(f"e{i}", ts=100.0 + i)) for i in range(3)))
    addresses = ["--ingest", secure_server.ingest, "--api", secure_server.api, "--no-progress"]
    assert publish.main([str(events), *addresses, "--ack", *producer]) == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 3
    assert publish.main([str(events), *addresses, "--push", *producer]) == 0   # not confirmed
    assert "not confirmed" in capsys.readouterr().err
