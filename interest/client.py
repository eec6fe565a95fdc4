"""The client library: ``from interest.client import Client``.

Placeholder re-export while the full library (sync and asyncio clients,
retries, error classes by code) is being written; see issue 11.
"""
from interest.engine.serving.client import Client, Publisher, RequestError

__all__ = ["Client", "Publisher", "RequestError"]
