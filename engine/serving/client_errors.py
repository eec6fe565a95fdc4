"""What a client raises: one class per wire error code, and the two ways of getting no answer.

    RequestError (InterestError)       the service answered ``ok: false``; ``code``, ``reply``
    ├── BadRequest                     bad_request        (also an engine.errors.BadRequest)
    ├── NotFound                       not_found
    ├── DeadlineExceeded               deadline_exceeded  (the service's own deadline ran out)
    ├── Overloaded                     overloaded, ``retry_after_ms`` (nothing was run)
    ├── Unavailable                    unavailable
    ├── Forbidden                      forbidden
    └── Internal                       internal, and any code this client does not know
    Timeout (engine DeadlineExceeded)  connected, but no reply within the call's timeout
    └── NoService                      no connection in ``connect_timeout``: nothing listens
    BadAddress (InterestError, ValueError)  not tcp://HOST:PORT, ipc://PATH or HOST:PORT

Each answered error is also an instance of the engine's class of the same
name, so ``except interest.engine.errors.Overloaded`` catches it too.
"""

from __future__ import annotations

from interest.engine import errors


class RequestError(errors.InterestError):
    """The service answered ``ok: false``; ``code`` is the wire error code."""

    code = "internal"

    def __init__(self, code: str | None = None, message: str = "", *, reply: dict | None = None):
        Exception.__init__(self, message)
        if code is not None:
            self.code = code
        self.reply = reply or {}
        self.retry_after_ms = (self.reply.get("error") or {}).get("retry_after_ms")


class BadRequest(RequestError, errors.BadRequest):
    code = "bad_request"


class NotFound(RequestError, errors.NotFound):
    code = "not_found"


class DeadlineExceeded(RequestError, errors.DeadlineExceeded):
    code = "deadline_exceeded"


class Overloaded(RequestError, errors.Overloaded):
    """Not run: the service is over a limit; retry after ``retry_after_ms`` (may be None)."""

    code = "overloaded"


class Unavailable(RequestError, errors.Unavailable):
    code = "unavailable"


class Forbidden(RequestError, errors.Forbidden):
    code = "forbidden"


class Internal(RequestError):
    code = "internal"


BY_CODE = {cls.code: cls for cls in
           (BadRequest, NotFound, DeadlineExceeded, Overloaded, Unavailable, Forbidden, Internal)}


class Timeout(errors.DeadlineExceeded):
    """Connected, but no reply came within the call's timeout (client side)."""


class NoService(Timeout):
    """No connection to the address within ``connect_timeout``: no service listens there
    (or, with CurveZMQ, it does not accept this client's key); or the connection was lost
    for that long while a reply was awaited (the service stopped or crashed)."""


class BadAddress(errors.InterestError, ValueError):
    """An address ZeroMQ cannot connect to."""


def error_from_reply(reply: dict) -> RequestError:
    """The exception for an ``ok: false`` reply, chosen by its code."""
    error = reply.get("error") or {}
    code = str(error.get("code", "internal"))
    cls = BY_CODE.get(code, Internal)
    return cls(code, str(error.get("message", "")), reply=reply)


def normalize_address(address: str) -> str:
    """``HOST:PORT`` becomes ``tcp://HOST:PORT``; anything else must name its transport."""
    address = str(address).strip()
    if "://" in address:
        return address
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit():
        return f"tcp://{address}"
    raise BadAddress(f"bad address {address!r}: expected tcp://HOST:PORT, ipc://PATH "
                     "or HOST:PORT")
