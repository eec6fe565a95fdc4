"""Start and stop a whole service (store, actors, gateway) from a config."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.serving.gateway import Gateway
from engine.serving.service import Service

logger = logging.getLogger(__name__)


class Server:
    """A running service with its sockets bound. ``with Server(config) as s:``."""

    def __init__(self, config: dict, data_dir: str | Path | None = None, *,
                 ingest: str | None = None, api: str | None = None, inference=None):
        svc = config["service"]
        self.service = Service(config, data_dir, inference=inference)
        self.gateway = Gateway(self.service, ingest or svc["ingest"], api or svc["api"],
                               svc.get("feeds", ()))
        self.gateway.start()
        self._stopped = False
        logger.info("serving: ingest %s, api %s, data %s", self.gateway.bound["ingest"],
                    self.gateway.bound["api"], self.service.data_dir)

    @property
    def ingest(self) -> str:
        return self.gateway.bound["ingest"]

    @property
    def api(self) -> str:
        return self.gateway.bound["api"]

    def stop(self) -> None:
        """Stop sockets, then the service (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.gateway.stop()
        self.service.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
