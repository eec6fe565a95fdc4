"""Authentication with CurveZMQ (pyzmq's ``zmq.auth``) and authorisation by role.

PROTOCOL.md, "Authentication": with ``[security] curve = true`` both service
sockets are CURVE servers; only clients whose public certificate is in
``clients_dir`` may connect, and the certificate's metadata ``role`` says what
they may do:

    producer   the ingest socket, the ``ingest`` op, and ``ping``
    reader     ``interests``, ``recommend``, ``explain``, ``ping``
    admin      every op (``stats``, ``flush``, ``forget`` included)

``ping`` is allowed to producers too (a decision of this module, not of the
protocol text): every client must be able to check that the service is up and
that its key is accepted, and ``ping`` reveals nothing but the version and the
uptime. Admins may send any op, so an unknown op is answered ``bad_request``
by the service rather than ``forbidden``.

Server side: ``ServerAuth`` starts a ZAP authenticator on the gateway's
context that accepts exactly the certificates of ``clients_dir`` and answers
each accepted connection's User-Id as ``"NAME:ROLE"`` (NAME is the certificate
file name without ``.key``); ``role_of(frame)`` reads the role back from any
frame received with ``copy=False``. Client side: ``secure_client_socket``.
Certificates are pyzmq's (``zmq.auth.create_certificates``); ``create_key_pair``
adds the role to the public certificate, which pyzmq leaves without metadata.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import struct
from pathlib import Path

import zmq
from zmq.auth import create_certificates, load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from interest.engine.errors import ConfigError, Forbidden

logger = logging.getLogger(__name__)

ROLES = ("producer", "reader", "admin")
OPS = ("ping", "ingest", "flush", "interests", "recommend", "explain", "stats", "forget")
ROLE_OPS = {
    "producer": frozenset({"ingest", "ping"}),
    "reader": frozenset({"interests", "recommend", "explain", "ping"}),
    "admin": frozenset(OPS),
}
INGEST_OP = "ingest"        # what a message on the ingest PULL socket counts as
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LOOPBACK_NAMES = ("localhost", "lo", "lo0")


class AuthConfigError(ConfigError):
    """A key file, the clients folder or the ``[security]`` section is unusable;
    the message names the file."""


# ------------------------------------------------------------------ roles

def allowed(role: str, op: str) -> bool:
    """May a client with ``role`` send ``op``? Admins may send anything."""
    if role == "admin":
        return True
    return isinstance(op, str) and op in ROLE_OPS.get(role, ())


def forbidden(role: str, op) -> Forbidden:
    """The error to answer a request outside the client's role."""
    who = f"role '{role}'" if role else "a client without a role"
    return Forbidden(f"{who} may not send '{str(op)[:64]}'")


def role_of(frame: zmq.Frame) -> str:
    """The role of the client that sent ``frame`` (received with ``copy=False``).

    "" when the message carries no User-Id from our authenticator (CURVE off).
    """
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        return ""
    role = str(user_id).rpartition(":")[2]
    return role if role in ROLE_OPS else ""


def client_of(frame: zmq.Frame) -> str:
    """The whole User-Id (``"NAME:ROLE"``) of ``frame``'s sender, for logs; "" if none."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""


# -------------------------------------------------------- certificate files

def load_key(path: str | os.PathLike, *, secret: bool, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of a certificate; ``secret=True`` requires the secret key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AuthConfigError(f"{what} {path}: no such certificate file")
    try:
        public, secret_key = load_certificate(path)
    except OSError as exc:
        raise AuthConfigError(f"{what} {path}: cannot read: {exc}") from exc
    except ValueError as exc:
        raise AuthConfigError(f"{what} {path}: not a CurveZMQ certificate "
                              "(no public-key line)") from exc
    _check_z85(public, path, what)
    if secret and secret_key is None:
        raise AuthConfigError(f"{what} {path}: a public certificate; the secret one "
                              f"({path.name}_secret) is needed here")
    if secret_key is not None:
        _check_z85(secret_key, path, what)
        if zmq.curve_public(secret_key) != public:
            raise AuthConfigError(f"{what} {path}: its public and secret keys do not match")
    return public, secret_key


def _check_z85(key: bytes, path: Path, what: str) -> None:
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error) as exc:
        raise AuthConfigError(f"{what} {path}: malformed key (not Z85)") from exc
    if not ok:
        raise AuthConfigError(f"{what} {path}: malformed key (a key is 40 Z85 characters)")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata`` section of a certificate in pyzmq's (ZPL) format."""
    meta, section = {}, None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"certificate {path}: cannot read: {exc}") from exc
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.strip()
        elif section == "metadata" and "=" in line:
            key, _, value = line.partition("=")
            meta[key.strip()] = value.strip().strip("'\"")
    return meta


def load_clients(clients_dir: str | os.PathLike, skip: bytes | None = None) -> dict[bytes, str]:
    """{z85 public key: "NAME:ROLE"} for every ``*.key`` in ``clients_dir``.

    ``skip`` (the server's own public key) is left out, so the server pair may
    live in the same folder. Any other certificate must have a valid role.
    """
    folder = Path(clients_dir).expanduser()
    if not folder.is_dir():
        raise AuthConfigError(f"security.clients_dir {folder}: no such folder")
    clients = {}
    for path in sorted(folder.glob("*.key")):
        public, _ = load_key(path, secret=False, what="client certificate")
        if public == skip:
            continue
        role = read_metadata(path).get("role", "")
        if role not in ROLE_OPS:
            raise AuthConfigError(f"client certificate {path}: role {role!r} is not one of "
                                  f"{', '.join(ROLES)} (metadata 'role = ...')")
        clients[public] = f"{path.stem}:{role}"
    if not clients:
        logger.warning("security.clients_dir %s has no client certificates: "
                       "no client can connect", folder)
    return clients


def create_key_pair(directory: str | os.PathLike, name: str,
                    role: str | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` with pyzmq; both carry the role.

    ``role=None`` makes a server pair. Existing files are never overwritten.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise AuthConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
    if role is not None and role not in ROLE_OPS:
        raise AuthConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    folder = Path(directory).expanduser()
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise AuthConfigError(f"{path} exists; not overwriting a key")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {"role": role} if role else None
        create_certificates(folder, name, metadata=metadata)
        secret.chmod(0o600)
        if metadata:
            _add_metadata(public, metadata)
    except OSError as exc:
        raise AuthConfigError(f"cannot write keys in {folder}: {exc}") from exc
    return public, secret


def _add_metadata(public: Path, metadata: dict[str, str]) -> None:
    """pyzmq writes metadata to the secret certificate only; copy it to the public one."""
    lines = "".join(f"    {key} = {value}\n" for key, value in metadata.items())
    text = public.read_text(encoding="utf-8")
    public.write_text(text.replace("metadata\n", "metadata\n" + lines, 1), encoding="utf-8")


# ----------------------------------------------------------------- server

class RoleAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, accepting the keys of ``clients`` and naming each by "NAME:ROLE"."""

    def __init__(self, context: zmq.Context, clients: dict[bytes, str]):
        super().__init__(context=context, log=logging.getLogger("zmq.auth"))
        self.clients = clients
        self._refused: set[bytes] = set()
        self.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials check (``key`` is Z85); refusals are logged once per key."""
        if key in self.clients:
            return True
        if key not in self._refused and len(self._refused) < 1000:
            self._refused.add(key)
            logger.warning("refused a CURVE client with unknown public key %s",
                           key.decode("ascii", "replace"))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.clients[z85.encode(client_public_key)]


def start_authenticator(security: dict, context: zmq.Context) -> RoleAuthenticator:
    """Start the ZAP authenticator for ``context`` over ``security["clients_dir"]``.

    One per context (ZAP's address is fixed): give the service its own context.
    """
    server_public, _ = server_keys(security)
    clients = load_clients(_required(security, "clients_dir"), skip=server_public)
    auth = RoleAuthenticator(context, clients)
    try:
        auth.start()
    except zmq.ZMQError as exc:
        raise AuthConfigError(f"cannot start the ZAP authenticator ({exc}); this ZeroMQ "
                              "context already has one: give each service its own") from exc
    logger.info("CURVE on: %d client certificate(s) from %s", len(clients),
                security["clients_dir"])
    return auth


def server_keys(security: dict) -> tuple[bytes, bytes]:
    """The service's (public, secret) z85 keys from ``security["server_secret_key"]``."""
    public, secret = load_key(_required(security, "server_secret_key"), secret=True,
                              what="security.server_secret_key")
    return public, secret


def make_curve_server(sock: zmq.Socket, security: dict) -> None:
    """Make ``sock`` a CURVE server with the service's key pair. Call before ``bind``."""
    public, secret = server_keys(security)
    try:
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
    except zmq.ZMQError as exc:
        raise AuthConfigError(f"cannot make a CURVE server socket: {exc}") from exc


def _required(security: dict, key: str) -> str:
    value = security.get(key) or ""
    if not isinstance(value, str) or not value:
        raise AuthConfigError(f"security.{key} is required when security.curve = true")
    return value


def curve_enabled(security: dict | None) -> bool:
    return bool((security or {}).get("curve", False))


class ServerAuth:
    """The service's side of CURVE: its key pair and the authenticator thread.

    ``ServerAuth.from_config(config.get("security"), ctx)`` returns None when
    ``curve`` is off. ``secure(sock)`` before each ``bind``; ``stop()`` after the
    sockets are closed.
    """

    def __init__(self, security: dict, context: zmq.Context):
        self.security = dict(security)
        self.authenticator = start_authenticator(self.security, context)

    @classmethod
    def from_config(cls, security: dict | None, context: zmq.Context) -> "ServerAuth | None":
        return cls(security, context) if curve_enabled(security) else None

    def secure(self, sock: zmq.Socket) -> None:
        """The ``secure=`` hook of Gateway and IngestLoop: call before ``bind``."""
        make_curve_server(sock, self.security)

    def authorize(self, frame: zmq.Frame, request) -> None:
        """The Gateway's ``authorize=`` hook: raise Forbidden unless the sender's role
        allows ``request.op`` (``frame`` is the request frame, received with copy=False)."""
        role = role_of(frame)
        if not allowed(role, request.op):
            raise forbidden(role, request.op)

    def may_ingest(self, frame: zmq.Frame) -> bool:
        """May the sender of ``frame`` (from the ingest PULL, copy=False) publish events?"""
        return allowed(role_of(frame), INGEST_OP)

    def stop(self) -> None:
        self.authenticator.stop()


# ----------------------------------------------------------------- client

def secure_client_socket(sock: zmq.Socket, server_key_path: str | os.PathLike,
                         client_key_path: str | os.PathLike) -> None:
    """Make ``sock`` a CURVE client: the server's public key and the client's secret
    certificate (``NAME.key_secret``). Call before ``connect``."""
    server_public, _ = load_key(server_key_path, secret=False, what="server key")
    public, secret = load_key(client_key_path, secret=True, what="client key")
    try:
        sock.curve_serverkey = server_public
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    except zmq.ZMQError as exc:
        raise AuthConfigError(f"cannot make a CURVE client socket: {exc}") from exc


# ---------------------------------------------------------- exposed binds

def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback host (127.x, ::1, localhost)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ws", "wss"):
        return scheme in ("ipc", "inproc")
    host = rest.rpartition(":")[0] if ":" in rest else rest
    host = host.split("/", 1)[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False        # "*", an interface name, a hostname: may be reachable


def warn_if_exposed(address: str, curve_enabled: bool, log: logging.Logger = logger) -> bool:
    """Log a warning (and return True) for a non-loopback bind without CURVE."""
    if curve_enabled or is_loopback(address):
        return False
    log.warning("bound to %s without authentication: anyone who can reach it can read "
                "and write every user's data; set [security] curve = true "
                "(README, Authentication)", address)
    return True
