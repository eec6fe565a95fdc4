"""The service's exceptions, one tree, with the wire error code each maps to.

    InterestError                      code "internal"
    ├── ConfigError                    (config file missing or not TOML, a bad key or value)
    ├── BadRequest                     code "bad_request"  (malformed message or request)
    │   ├── DecodeError                (not msgpack, truncated, too large)
    │   └── ValidationError            (wrong type, missing or unknown field)
    ├── NotFound                       code "not_found"
    ├── DeadlineExceeded               code "deadline_exceeded"
    ├── Overloaded                     code "overloaded" (to_wire adds retry_after_ms when known)
    ├── Forbidden                      code "forbidden" (the client's role does not allow the op)
    ├── Unavailable                    code "unavailable"
    │   ├── ModelUnavailable           (no model loaded, or the model file is missing)
    │   └── StoreFull                  (the LMDB map reached max_map_size_mb)
    │       └── DiskFull               (no space left on the device under the data directory)
    └── StoreError                     code "internal" (any other LMDB failure)
        ├── CorruptFile                (a checked file with a bad magic, length or checksum)
        └── DataDirLocked              (another process holds the data directory's lock)

Third-party errors (msgpack, lmdb, llama.cpp) are mapped to these at the
module that talks to the library, with ``raise ... from``.
"""

from __future__ import annotations


class InterestError(Exception):
    """Base of every error the service raises on purpose."""

    code = "internal"

    def to_wire(self) -> dict:
        return {"code": self.code, "message": str(self)}


class ConfigError(InterestError):
    """The configuration cannot be used; the message is one line naming the key."""


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

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def to_wire(self) -> dict:
        out = super().to_wire()
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out


class Forbidden(InterestError):
    code = "forbidden"


class Unavailable(InterestError):
    code = "unavailable"


class ModelUnavailable(Unavailable):
    """No language model is loaded (missing file, or disabled by config)."""


class StoreFull(Unavailable):
    """The LMDB map cannot grow further; the write was not applied."""


class DiskFull(StoreFull):
    """The filesystem under the data directory has no space left; nothing was written."""


class StoreError(InterestError):
    """An LMDB failure other than a full map."""


class CorruptFile(StoreError):
    """A file written by ``write_checked`` failed its magic, length or checksum test."""


class DataDirLocked(StoreError):
    """Another process (or another open store in this one) holds the data directory."""
