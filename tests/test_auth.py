"""CurveZMQ authentication and roles (engine.serving.auth), over real sockets.

A small ROUTER/PULL server built from the helpers stands in for the gateway:
every socket and context belongs to a fixture and is closed with linger 0;
every receive polls with a timeout and fails with a reason.
"""

from __future__ import annotations

import json
import logging
import threading
from types import SimpleNamespace

import pytest
import zmq
from zmq.auth import load_certificate

from interest.engine.errors import DeadlineExceeded
from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.serving import auth
from interest.engine.serving.auth import AuthConfigError, ROLES, ServerAuth, allowed, role_of
from interest.engine.serving.client import Client, Publisher

RANDOM_PORT = "tcp://127.0.0.1:*"
WAIT_MS = 5000          # a message that should arrive
SILENCE_MS = 1000       # how long "no message" is watched for


def recv_or_fail(sock: zmq.Socket, reason: str, timeout_ms: int = WAIT_MS) -> list:
    if not sock.poll(timeout_ms, zmq.POLLIN):
        pytest.fail(f"timed out after {timeout_ms} ms waiting for {reason}")
    return sock.recv_multipart(copy=False)


def assert_silent(sock: zmq.Socket, reason: str) -> None:
    if sock.poll(SILENCE_MS, zmq.POLLIN):
        frames = sock.recv_multipart(copy=False)
        pytest.fail(f"{reason}: got a message from {auth.client_of(frames[-1])!r}")


@pytest.fixture
def keys(tmp_path):
    """A server pair and one client per role in clients/ (the server pair too: it is
    skipped), and a stranger whose certificate is elsewhere."""
    clients = tmp_path / "clients"
    paths = {"server": auth.create_key_pair(clients, "server")}
    for name, role in (("paula", "producer"), ("rita", "reader"), ("ada", "admin")):
        paths[role] = auth.create_key_pair(clients, name, role)
    paths["stranger"] = auth.create_key_pair(tmp_path / "outside", "stranger", "admin")
    paths["security"] = {"curve": True, "clients_dir": str(clients),
                         "server_secret_key": str(paths["server"][1])}
    return paths


@pytest.fixture
def server_auth(keys, context):
    sa = ServerAuth.from_config(keys["security"], context)
    yield sa
    sa.stop()


@pytest.fixture
def sockets(context):
    """socket(kind) -> a socket of ``context`` closed (linger 0) at teardown."""
    made = []

    def make(kind):
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


def bound(sock: zmq.Socket) -> str:
    sock.bind(RANDOM_PORT)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


@pytest.fixture
def router(server_auth, sockets):
    sock = sockets(zmq.ROUTER)
    server_auth.secure(sock)
    return sock, bound(sock)


@pytest.fixture
def pull(server_auth, sockets):
    sock = sockets(zmq.PULL)
    server_auth.secure(sock)
    return sock, bound(sock)


def curve_client(sockets, keys, who: str, address: str, kind=zmq.DEALER) -> zmq.Socket:
    sock = sockets(kind)
    auth.secure_client_socket(sock, keys["server"][0], keys[who][1])
    sock.connect(address)
    return sock


# ------------------------------------------------------------ connections

@pytest.mark.parametrize("role", ROLES)
def test_a_known_client_connects_and_the_server_sees_its_role(keys, sockets, router, role):
    sock, address = router
    client = curve_client(sockets, keys, role, address)
    client.send(b"hello")
    frames = recv_or_fail(sock, f"the {role}'s message on the ROUTER")
    assert role_of(frames[-1]) == role
    assert auth.client_of(frames[-1]) == f"{keys[role][0].stem}:{role}"
    sock.send_multipart([frames[0], b"welcome"])
    assert recv_or_fail(client, "the ROUTER's answer")[0].bytes == b"welcome"


def test_the_role_is_seen_on_a_pull_socket(keys, sockets, pull):
    sock, address = pull
    for role in ("producer", "reader"):
        curve_client(sockets, keys, role, address, zmq.PUSH).send(b"events")
        assert role_of(recv_or_fail(sock, f"the {role}'s push")[0]) == role


def test_a_client_not_in_clients_dir_gets_no_answer(keys, sockets, router, caplog):
    sock, address = router
    client = curve_client(sockets, keys, "stranger", address)
    with caplog.at_level(logging.WARNING, logger="interest.engine.serving.auth"):
        client.send(b"let me in")
        assert_silent(sock, "a certificate outside clients_dir was let in")
    assert not client.poll(0)
    assert "unknown public key" in caplog.text


def test_a_client_without_curve_gets_no_answer(sockets, router):
    sock, address = router
    client = sockets(zmq.DEALER)
    client.connect(address)
    client.send(b"plain text")
    assert_silent(sock, "a client without CURVE was let in")
    assert not client.poll(0)


def test_a_client_with_the_wrong_server_key_gets_no_answer(keys, sockets, router):
    sock, address = router
    client = sockets(zmq.DEALER)
    auth.secure_client_socket(client, keys["stranger"][0], keys["reader"][1])
    client.connect(address)
    client.send(b"hello")
    assert_silent(sock, "a client expecting another server key was let in")


def test_role_of_a_frame_without_curve_is_empty(sockets):
    server, client = sockets(zmq.PULL), sockets(zmq.PUSH)
    client.connect(bound(server))
    client.send(b"x")
    assert role_of(recv_or_fail(server, "a plain push")[0]) == ""


def test_client_and_publisher_take_the_keys(keys, sockets, router, pull, context):
    sock, address = router

    def answer_one():
        frames = recv_or_fail(sock, "the Client's request")
        request = decode_frame(frames[-1].bytes, 1 << 20)
        sock.send_multipart([frames[0], encode_frame(
            {"rid": request["rid"], "ok": True, "role": role_of(frames[-1])})])

    thread = threading.Thread(target=answer_one)
    thread.start()
    with Client(address, timeout=5, context=context, server_key=keys["server"][0],
                client_key=keys["reader"][1]) as client:
        reply = client.call("ping")
    thread.join(WAIT_MS / 1000)
    assert reply["role"] == "reader"
    publisher = Publisher(pull[1], context=context, server_key=keys["server"][0],
                          client_key=keys["producer"][1])
    try:
        publisher.send({"v": 1})
        assert role_of(recv_or_fail(pull[0], "the Publisher's events")[0]) == "producer"
    finally:
        publisher.close(linger_ms=0)


def test_a_client_of_an_unknown_key_times_out_with_a_hint(keys, router, context):
    with Client(router[1], timeout=0.3, context=context, server_key=keys["server"][0],
                client_key=keys["stranger"][1]) as client:
        with pytest.raises(DeadlineExceeded) as err:
            client.call("ping")
    assert "clients_dir" in str(err.value)


def test_client_needs_both_keys(keys, context):
    with pytest.raises(AuthConfigError, match="go together"):
        Client("tcp://127.0.0.1:1", context=context, server_key=keys["server"][0])


def test_one_authenticator_per_context(keys, server_auth, context):
    with pytest.raises(AuthConfigError, match="its own"):
        ServerAuth.from_config(keys["security"], context)


def test_curve_off_starts_nothing(context):
    assert ServerAuth.from_config({"curve": False}, context) is None
    assert ServerAuth.from_config(None, context) is None


# ------------------------------------------------------------------ roles

EXPECTED = {
    "producer": {"ping", "ingest"},
    "reader": {"ping", "interests", "recommend", "explain"},
    "admin": set(auth.OPS),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", auth.OPS)
def test_allowed_table(role, op):
    assert allowed(role, op) is (op in EXPECTED[role])


def test_allowed_edge_cases():
    assert set(auth.OPS) == {"ping", "ingest", "flush", "interests", "recommend", "explain",
                             "stats", "forget"}
    assert allowed("admin", "no-such-op")          # the service answers bad_request
    assert not allowed("reader", "no-such-op")
    assert not any(allowed(role, "ping") for role in ("", "root", None))
    assert not allowed("reader", ["ping"]) and not allowed("producer", None)
    error = auth.forbidden("reader", "stats")
    assert error.code == "forbidden" and error.to_wire() == {
        "code": "forbidden", "message": "role 'reader' may not send 'stats'"}


# ------------------------------------------------------------- key files

def test_keys_new_writes_loadable_certificates_with_the_role(tmp_path, capsys):
    from interest.tools import cli
    assert cli.main(["keys", "new", str(tmp_path / "k"), "--name", "alice",
                     "--role", "producer"]) == 0
    out = json.loads(capsys.readouterr().out)
    public, secret = load_certificate(out["public"])
    assert secret is None and len(public) == 40
    assert load_certificate(out["secret"]) == (public, load_certificate(out["secret"])[1])
    assert load_certificate(out["secret"])[1] is not None
    assert auth.read_metadata(out["public"]) == {"role": "producer"}
    assert auth.read_metadata(out["secret"]) == {"role": "producer"}
    assert (tmp_path / "k" / "alice.key_secret").stat().st_mode & 0o077 == 0
    assert auth.load_clients(tmp_path / "k") == {public: "alice:producer"}


def test_keys_new_server_and_defaults(tmp_path, capsys):
    from interest.tools import keys
    assert keys.main(["new", str(tmp_path), "--name", "server", "--server"]) == 0
    assert json.loads(capsys.readouterr().out)["role"] is None
    assert auth.read_metadata(tmp_path / "server.key") == {}
    assert keys.main(["new", str(tmp_path), "--name", "bob"]) == 0
    assert auth.read_metadata(tmp_path / "bob.key") == {"role": "reader"}
    assert keys.main(["new", str(tmp_path), "--name", "bob", "--role", "admin"]) == 1
    assert "not overwriting" in capsys.readouterr().err
    assert auth.read_metadata(tmp_path / "bob.key") == {"role": "reader"}
    assert keys.main(["new", str(tmp_path), "--name", "../evil"]) == 1
    with pytest.raises(SystemExit):
        keys.main(["new", str(tmp_path), "--name", "x", "--server", "--role", "admin"])


def test_missing_and_malformed_key_files_name_the_file(tmp_path, keys, sockets):
    bad = tmp_path / "bad.key"
    bad.write_text("metadata\ncurve\n    public-key = \"tooshort\"\n")
    empty = tmp_path / "empty.key"
    empty.write_text("# nothing\n")
    mixed = tmp_path / "mixed.key_secret"
    other_public, _ = zmq.curve_keypair()
    mixed.write_text(keys["reader"][1].read_text().replace(
        load_certificate(keys["reader"][1])[0].decode(), other_public.decode()))
    sock = sockets(zmq.DEALER)
    cases = [
        (tmp_path / "absent.key", keys["reader"][1], "absent.key: no such certificate"),
        (bad, keys["reader"][1], "bad.key: malformed key"),
        (empty, keys["reader"][1], "empty.key: not a CurveZMQ certificate"),
        (keys["server"][0], keys["reader"][0], "rita.key: a public certificate"),
        (tmp_path, keys["reader"][1], "no such certificate"),
        (keys["server"][0], mixed, "mixed.key_secret: its public and secret keys do not match"),
    ]
    for server_key, client_key, message in cases:
        with pytest.raises(AuthConfigError, match=message.replace(".", r"\.")):
            auth.secure_client_socket(sock, server_key, client_key)


def test_server_config_errors(tmp_path, keys, context):
    security = keys["security"]
    cases = [
        ({**security, "clients_dir": str(tmp_path / "nope")}, "clients_dir .*nope: no such folder"),
        ({**security, "clients_dir": ""}, "security.clients_dir is required"),
        ({**security, "server_secret_key": str(keys["server"][0])}, "a public certificate"),
        ({**security, "server_secret_key": ""}, "security.server_secret_key is required"),
    ]
    for config, message in cases:
        with pytest.raises(AuthConfigError, match=message):
            ServerAuth.from_config(config, context)


@pytest.mark.parametrize("metadata, message", [
    ("", "role '' is not one of producer, reader, admin"),
    ("    role = root\n", "role 'root' is not one of"),
])
def test_a_certificate_without_a_valid_role_is_refused(tmp_path, metadata, message):
    public, _ = zmq.curve_keypair()
    (tmp_path / "eve.key").write_text(
        f"metadata\n{metadata}curve\n    public-key = \"{public.decode()}\"\n")
    with pytest.raises(AuthConfigError, match=f"eve.key: {message}"):
        auth.load_clients(tmp_path)


def test_query_tool_reports_a_missing_key(tmp_path, capsys):
    from interest.tools import query
    code = query.main(["ping", "--server-key", str(tmp_path / "s.key"),
                       "--client-key", str(tmp_path / "c.key_secret")])
    assert code == 2 and "s.key: no such certificate file" in capsys.readouterr().err


# --------------------------------------------------------- exposed binds

@pytest.mark.parametrize("address, exposed", [
    ("tcp://127.0.0.1:7100", False),
    ("tcp://127.3.4.5:7100", False),
    ("tcp://localhost:7100", False),
    ("tcp://[::1]:7100", False),
    ("ipc:///tmp/interest.sock", False),
    ("inproc://api", False),
    ("tcp://*:7100", True),
    ("tcp://0.0.0.0:7100", True),
    ("tcp://[::]:7100", True),
    ("tcp://192.168.1.20:7100", True),
    ("tcp://203.0.113.7:7100", True),
    ("tcp://eth0:7100", True),
    ("tcp://example.org:7100", True),
])
def test_warn_if_exposed(address, exposed, caplog):
    log = logging.getLogger("test.auth")
    with caplog.at_level(logging.WARNING, logger="test.auth"):
        assert auth.warn_if_exposed(address, False, log) is exposed
        assert auth.warn_if_exposed(address, True, log) is False
    assert (address in caplog.text) is exposed
    if exposed:
        assert "curve = true" in caplog.text


# ------------------------------------------------- the gateway's hooks

def request(op: str):
    """A stand-in for a parsed request: ``authorize`` reads only ``.op``."""
    return SimpleNamespace(op=op, rid=None)


def test_server_auth_hooks_authorize_by_the_senders_role(keys, sockets, router, pull,
                                                         server_auth):
    from interest.engine.errors import Forbidden
    sock, address = router
    frames = {}
    for role in ROLES:
        curve_client(sockets, keys, role, address).send(b"request")
        frames[role] = recv_or_fail(sock, f"the {role}'s request")[-1]
    for role, frame in frames.items():
        server_auth.authorize(frame, request("ping"))                 # everyone may ping
        if role == "admin":
            server_auth.authorize(frame, request("stats"))
        else:
            with pytest.raises(Forbidden, match=f"role '{role}' may not send 'stats'"):
                server_auth.authorize(frame, request("stats"))
    with pytest.raises(Forbidden):
        server_auth.authorize(frames["reader"], request("ingest"))
    for role in ROLES:
        curve_client(sockets, keys, role, pull[1], zmq.PUSH).send(b"events")
        frame = recv_or_fail(pull[0], f"the {role}'s events")[0]
        assert server_auth.may_ingest(frame) is (role != "reader")
