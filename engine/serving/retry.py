"""When a client may send a request again, and how long it waits first.

Read-only ops (``ping``, ``interests``, ``recommend``, ``explain``, ``stats``)
and ``flush`` (it only waits) are idempotent: they are retried after no
reply, ``overloaded`` and ``unavailable``. Every op, ``ingest`` and
``forget`` included, is retried after ``overloaded``, which the service
answers before it runs anything (PROTOCOL.md, "Limits, bad input and
overload"). ``ingest`` is never resent after a lost reply: its events may
have been committed, and the second reply would count them as duplicates.
``NoService`` is never retried: the connection wait already was the wait.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interest.engine.serving.client_errors import NoService, Overloaded, Timeout, Unavailable

IDEMPOTENT = frozenset({"ping", "interests", "recommend", "explain", "stats", "flush"})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2               # further attempts after the first
    backoff_s: float = 0.05        # first wait; doubles each attempt, with jitter
    max_backoff_s: float = 2.0     # no wait is longer (an overloaded hint included)

    def should_retry(self, op: str, exc: BaseException, attempt: int) -> bool:
        """``attempt`` counts from 0 (the first try)."""
        if attempt >= self.retries or isinstance(exc, NoService):
            return False
        if isinstance(exc, Overloaded):
            return True
        return op in IDEMPOTENT and isinstance(exc, (Timeout, Unavailable))

    def delay(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        wait = self.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.0)
        hint = getattr(exc, "retry_after_ms", None)
        if isinstance(exc, Overloaded) and hint:
            wait = max(wait, hint / 1000)
        return min(wait, self.max_backoff_s)


NO_RETRY = RetryPolicy(retries=0)
