"""The service's exceptions, one tree, with the wire error code each maps to.

    InterestError                      code "internal"
    ├── BadRequest                     code "bad_request"  (malformed message or request)
    │   ├── DecodeError                (not msgpack, truncated, too large)
    │   └── ValidationError            (wrong type, missing or unknown field)
    ├── NotFound                       code "not_found"
    ├── DeadlineExceeded               code "deadline_exceeded"
    ├── Overloaded                     code "overloaded"
    ├── Unavailable                    code "unavailable"
    │   ├── ModelUnavailable           (no model loaded, or the model file is missing)
    │   └── StoreFull                  (the LMDB map reached max_map_size_mb)
    └── StoreError                     code "internal" (any other LMDB failure)

Third-party errors (msgpack, lmdb, llama.cpp) are mapped to these at the
module that talks to the library, with ``raise ... from``.
"""

from __future__ import annotations


class InterestError(Exception):
    """Base of every error the service raises on purpose."""

    code = "internal"

    def to_wire(self) -> dict:
        return {"code": self.code, "message": str(self)}


class BadRequest(InterestError):
    code = "bad_request"


class DecodeError(BadRequest):
    """A frame that is not a msgpack map (or array of maps), or too large."""


class ValidationError(BadRequest):
    """A well-formed message whose fields are wrong."""


class NotFound(InterestError):
    code = "not_found"


class DeadlineExceeded(InterestError):
    code = "deadline_exceeded"


class Overloaded(InterestError):
    code = "overloaded"


class Unavailable(InterestError):
    code = "unavailable"


class ModelUnavailable(Unavailable):
    """No language model is loaded (missing file, or disabled by config)."""


class StoreFull(Unavailable):
    """The LMDB map cannot grow further; the write was not applied."""


class StoreError(InterestError):
    """An LMDB failure other than a full map."""
