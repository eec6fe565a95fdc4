"""Messages the service's actors exchange. Plain frozen dataclasses; never pickled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class Apply:
    """Fold these committed journal entries (oldest first), then call ``done()``."""

    entries: list
    done: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """Answer an api op from the actor's state: ``reply(result dict | InterestError)``."""

    op: str
    request: Any                   # the typed request (engine.serving.requests)
    reply: Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class ProfileDone:
    """The inference actor's answer to this actor's profile refresh."""

    result: Any
