"""What the inference actor is asked and answers: requests, results, the internal job.

Priorities, highest first: ``online`` (a client waits with a deadline),
``interactive`` (an active session's refresh), ``background`` (dormant users,
catalog embeddings, re-profiling). Deadlines are ``time.monotonic()`` based.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PRIORITIES: tuple[str, ...] = ("online", "interactive", "background")
RANK: dict[str, int] = {name: i for i, name in enumerate(PRIORITIES)}


def deadline_in(seconds: float) -> float:
    """An absolute deadline ``seconds`` from now on the ``time.monotonic()`` clock."""
    return time.monotonic() + float(seconds)


@dataclass(frozen=True)
class ProfileRequest:
    user: str
    items: tuple[dict, ...]             # newest last: {"item", "title", "tags", "type"}
    queries: tuple[str, ...]
    vocabulary: tuple[str, ...]
    priority: str                       # "online" | "interactive" | "background"
    deadline: float                     # time.monotonic() based
    on_done: Callable[[ProfileResult | Exception], None]


@dataclass(frozen=True)
class ProfileResult:
    user: str
    tags: tuple[str, ...]
    summary: str
    model: str                          # model id: file name + short sha256
    input_hash: str
    cached: bool
    latency_ms: float                   # this caller's submit-to-answer time
    embedding: tuple[float, ...] | None  # of the summary; None without an embedding model


@dataclass(frozen=True)
class EmbedRequest:
    keys: tuple[str, ...]
    texts: tuple[str, ...]
    priority: str
    deadline: float
    on_done: Callable[[dict[str, list[float]] | Exception], None]


@dataclass
class _Caller:
    on_done: Callable[[Any], None]
    submitted: float
    priority: str


class _Job:
    """Mutable internal work item: what travels through the inbox."""

    __slots__ = (
        "kind", "rank", "deadline", "enqueued_at", "seq", "callers", "eff_rank",
        "user", "items", "queries", "vocabulary", "keys", "texts", "partial", "attempts",
    )

    def __init__(self, kind: str, rank: int, deadline: float, callers: list[_Caller]) -> None:
        self.kind = kind
        self.rank = rank
        self.deadline = deadline
        self.enqueued_at = 0.0
        self.seq = 0
        self.callers = callers
        self.eff_rank = rank
        self.user = ""
        self.items: tuple = ()
        self.queries: tuple = ()
        self.vocabulary: tuple = ()
        self.keys: tuple = ()
        self.texts: tuple = ()
        self.partial: dict[str, list[float]] = {}
        self.attempts = 0

    def merge_newer(self, newer: _Job) -> None:
        """Fold ``newer`` (a later request for the same user) into this job."""
        self.items, self.queries, self.vocabulary = newer.items, newer.queries, newer.vocabulary
        self.callers.extend(newer.callers)
        self.rank = min(self.rank, newer.rank)
        self.deadline = min(self.deadline, newer.deadline)

    def __repr__(self) -> str:
        # an item's key starts with NUL (engine.llm.item_profiles): shown as \0
        who = (self.user.replace("\x00", "\\0") if self.kind == "profile"
               else f"{len(self.keys)} texts")
        return f"_Job({self.kind} {who} {PRIORITIES[self.rank]} seq={self.seq})"


