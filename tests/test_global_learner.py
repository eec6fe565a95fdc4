"""The one learner of a partitioned directory: two real partition services (LMDB in a temp
dir, ZeroMQ sockets) in `learner = "global"` mode and the learner in a process of its own.

It learns across partitions (what p0's users did is recommended to p1's), both partitions
take its snapshots, its checkpoint is where it resumes, and while it is gone the
partitions serve their last snapshot, report it absent and keep taking events; the
handle starts a killed learner again."""

from __future__ import annotations

import os
import signal

import msgpack
import numpy as np
import pytest

from interest.engine.config import load_config
from interest.engine.journal.files import read_checked
from interest.engine.partitions.layout import ensure_layout, partition_dir, partition_of
from interest.engine.projections.global_learner import LearnerHandle, checkpoint_path
from interest.engine.serving.client import Client
from interest.engine.serving.server import Server
from tests.conftest import RANDOM_PORT, event, item_event, wait_for

pytestmark = pytest.mark.integration


def users_of(index: int, count: int) -> list[str]:
    out, n = [], 0
    while len(out) < count:
        if partition_of(f"u{n}", 2) == index:
            out.append(f"u{n}")
        n += 1
    return out


@pytest.fixture
def config():
    return load_config(store={"sync": False}, inference={"enabled": False},
                       runtime={"sweep_seconds": 0.2},
                       projections={"learner": "global", "publish_ms": 50.0,
                                    "learner_absent_s": 1.0, "max_learner_lag_events": 5})


@pytest.fixture
def cluster(config, tmp_path, context):
    """Two partition servers on DIR/p0 and DIR/p1 and a client for each."""
    root = tmp_path / "data"
    ensure_layout(root, 2)
    servers, clients = [], []
    try:
        for i in range(2):
            servers.append(Server(config, partition_dir(root, i), ingest=RANDOM_PORT,
                                  api=RANDOM_PORT))
            clients.append(Client(servers[-1].api, timeout=10, context=context))
        yield root, servers, clients
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop()


@pytest.fixture
def learner(config, cluster):
    handles = []

    def start(**options):
        handles.append(LearnerHandle(config, cluster[0], **options).start())
        return handles[-1]
    yield start
    for handle in handles:
        handle.stop()


def ingest(clients, events) -> None:
    """As the router sends them: catalog events to both partitions, user events to the owner."""
    for i, client in enumerate(clients):
        mine = [e for e in events if e["type"] == "item" or partition_of(e["user"], 2) == i]
        if mine:
            client.call("ingest", events=mine)


def learned(clients, timeout: float = 30.0) -> list[dict]:
    """Each partition's learner stats once its snapshot has learned its head."""
    def caught_up():
        out = [c.call("stats")["projections"]["learner"] for c in clients]
        return out if all(s["lag_events"] == 0 and s["publishes"] for s in out) else None
    return wait_for(caught_up, timeout=timeout, reason="both partitions' snapshots to catch up")


def p0_history() -> list[dict]:
    """Six users of partition 0 go m0 -> m1 -> m2; partition 1 never sees m1 or m2."""
    items = [item_event(f"m{i}", ["Drama" if i % 2 else "Comedy"]) for i in range(5)]
    events = [event(f"e{u}-{n}", user=u, item=f"m{n}", ts=100.0 + 10 * k + n)
              for k, u in enumerate(users_of(0, 6)) for n in range(3)]
    filler = [event(f"f{u}", user=u, item="m4", ts=90.0) for u in users_of(1, 2)]
    return items + events + filler


def test_it_learns_across_partitions_and_both_take_its_snapshots(cluster, learner):
    root, servers, clients = cluster
    handle = learner()
    ingest(clients, p0_history())
    stats = learned(clients)
    assert all(s["connected"] and s["mode"] == "global" for s in stats)
    assert [s["partition"] for s in stats] == [0, 1]
    assert stats[0]["learner_pid"] == stats[1]["learner_pid"] == handle.pid != os.getpid()
    fresh = users_of(1, 7)[-1]                         # a user of partition 1
    ingest(clients, [event("new", user=fresh, item="m0", ts=500.0)])
    learned(clients)
    rec = clients[1].call("recommend", user=fresh, k=2)
    top = {row["item"]: row for row in rec["items"]}    # m1, m2: what follows m0
    assert set(top) == {"m1", "m2"}                     # learned from partition 0's users only
    assert top["m1"]["sources"]["sequential"] > top["m2"]["sources"]["sequential"] > 0
    assert top["m1"]["sources"]["collaborative"] > 0
    # partition 1's own log has no m1 at all: only the global models know it
    assert all(e.event.get("item") != "m1" for e in
               servers[1].service.store.read_all() if e.stream)
    # partition 0 serves the same models (same snapshot version, same counts)
    r0 = clients[0].call("stats")["recommender"]
    r1 = clients[1].call("stats")["recommender"]
    assert r0["observed"] == r1["observed"] == 6 * 3 + 2 + 1
    # an item vector computed in partition 1 (its language model) reaches the learner and,
    # through its snapshots, partition 0
    assert r0["models"]["semantic"]["item_vectors"] == 0
    servers[1].service.item_vectors.set_item_vector("m3", np.ones(8, dtype=np.float32))
    wait_for(lambda: clients[0].call("stats")["recommender"]["models"]["semantic"]
             ["item_vectors"] == 1, timeout=20, reason="the item vector to go round")


def test_its_checkpoint_is_where_it_resumes(cluster, learner):
    root, _servers, clients = cluster
    first = learner()
    ingest(clients, p0_history())
    learned(clients)
    observed = clients[0].call("stats")["recommender"]["observed"]
    first.stop()                                        # SIGTERM: publish, checkpoint, exit
    saved = msgpack.unpackb(read_checked(checkpoint_path(root)), raw=False,
                            strict_map_key=False)
    heads = [c.call("stats")["head"] for c in clients]
    assert saved["positions"] == heads and saved["partitions"] == 2
    learner()
    wait_for(lambda: all(c.call("stats")["projections"]["learner"]["learner_starts_seen"] == 2
                         for c in clients), timeout=30, reason="the second learner's snapshots")
    ingest(clients, [event("more", user=users_of(0, 1)[0], item="m3", ts=900.0)])
    learned(clients)
    stats = clients[1].call("stats")
    assert stats["recommender"]["observed"] == observed + 1      # nothing learned twice
    assert stats["recommender"]["base_gseq"] > 0
    assert stats["projections"]["learner"]["saved_position"] <= stats["head"]


def test_a_killed_learner_is_started_again_and_partitions_serve_meanwhile(cluster, learner):
    _root, _servers, clients = cluster
    handle = learner()
    ingest(clients, p0_history())
    learned(clients)
    pid = handle.pid
    os.kill(pid, signal.SIGKILL)
    fresh = users_of(1, 8)[-1]
    # served from the last snapshot while the learner is gone
    assert clients[1].call("recommend", user=fresh, k=3)["items"]
    wait_for(lambda: handle.pid != pid and handle.alive(), timeout=20,
             reason="the handle to start the learner again")
    ingest(clients, [event("after", user=fresh, item="m0", ts=950.0)])
    learned(clients)
    assert handle.restarts == 1
    wait_for(lambda: all(c.call("stats")["projections"]["learner"]["learner_pid"] == handle.pid
                         for c in clients), timeout=20, reason="both partitions to hear anew")
    assert all(c.call("stats")["projections"]["learner"]["connected"] for c in clients)
    assert "m1" in [row["item"] for row in clients[1].call("recommend", user=fresh, k=2)["items"]]


def test_an_absent_learner_is_reported_and_ingest_goes_on(cluster, learner):
    _root, _servers, clients = cluster
    handle = learner(restart=False)
    ingest(clients, p0_history())
    learned(clients)
    os.kill(handle.pid, signal.SIGKILL)
    wait_for(lambda: not clients[0].call("stats")["projections"]["learner"]["connected"],
             timeout=10, reason="partition 0 to report the learner absent")
    # far past max_learner_lag_events (5): not overloaded, the learner catches up later
    many = [event(f"late{n}", user=users_of(0, 1)[0], item="m2", ts=1000.0 + n)
            for n in range(20)]
    reply = clients[0].call("ingest", events=many)
    assert reply["accepted"] == 20
    stats = clients[0].call("stats")
    learner_stats = stats["projections"]["learner"]
    assert learner_stats["lag_events"] >= 20 and learner_stats["last_heard_s"] >= 1.0
    assert clients[0].call("recommend", user=users_of(0, 1)[0], k=2)["items"]


def test_the_command_refuses_an_unpartitioned_directory_and_a_second_learner(tmp_path, capsys):
    from interest.engine.journal.lock import DataDirLock
    from interest.engine.projections.global_link import learner_dir
    from interest.tools import learner as learner_tool
    assert learner_tool.main(["--data", str(tmp_path / "plain")]) == 1
    assert "not a partitioned data directory" in capsys.readouterr().err
    root = tmp_path / "split"
    ensure_layout(root, 2)
    with DataDirLock(learner_dir(root)):
        assert learner_tool.main(["--data", str(root)]) == 1
    assert "in use by process" in capsys.readouterr().err
