"""Start and stop a whole service (store, projections, actors, sockets) from a config."""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

from interest.engine.serving.auth import ServerAuth, warn_if_exposed
from interest.engine.serving.gateway import Gateway
from interest.engine.serving.ingest import IngestLoop
from interest.engine.serving.service import Service

logger = logging.getLogger(__name__)


class Server:
    """A running service with its sockets bound. ``with Server(config) as s:``.

    ``on_fatal(exc)`` is called from a socket thread whose loop cannot go on
    (``interest serve`` exits non-zero so a supervisor restarts it).
    """

    def __init__(self, config: dict, data_dir: str | Path | None = None, *,
                 ingest: str | None = None, api: str | None = None, inference=None,
                 on_fatal=None, http: str | None = None):
        svc = config["service"]
        self._stopped = False
        self.context = zmq.Context()      # one per server: ZAP allows one authenticator per context
        self.ingest_loop = self.gateway = self.auth = self.http = None
        self.service = Service(config, data_dir, inference=inference)
        try:
            self.auth = ServerAuth.from_config(config.get("security"), self.context)
            auth = self.auth
            self.ingest_loop = IngestLoop(self.service, ingest or svc["ingest"],
                                          svc.get("feeds", ()), context=self.context,
                                          secure=auth.secure if auth else None,
                                          may_ingest=auth.may_ingest if auth else None,
                                          on_fatal=on_fatal).start()
            self.gateway = Gateway(self.service, api or svc["api"], context=self.context,
                                   secure=auth.secure if auth else None,
                                   authorize=auth.authorize if auth else None,
                                   on_fatal=on_fatal).start()
            http = http if http is not None else (config.get("http") or {}).get("address", "")
            if http:          # the HTTP side port (engine.serving.http); "" = off
                from interest.engine.serving.http import HttpSide  # noqa: PLC0415
                self.http = HttpSide(self.service, http, config).start()
        except BaseException:
            self.stop()
            raise
        for address in (self.ingest, self.api):
            warn_if_exposed(address, self.auth is not None, logger)
        # debug: `interest serve` logs the one start-up line (model, config file too)
        logger.debug("serving: ingest %s, api %s, data %s", self.ingest, self.api,
                     self.service.data_dir)

    @property
    def ingest(self) -> str:
        return self.ingest_loop.bound

    @property
    def api(self) -> str:
        return self.gateway.bound

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading events, stop the service (it answers what is pending, within
        ``timeout``), then close the api socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if self.http is not None:
            self.http.stop(min(timeout, 5.0))
        if self.ingest_loop is not None:
            self.ingest_loop.stop()
        try:
            self.service.stop(timeout)
        finally:
            if self.gateway is not None:
                self.gateway.stop()
            if self.auth is not None:
                self.auth.stop()
            self.context.destroy(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
