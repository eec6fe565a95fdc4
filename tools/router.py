"""`interest router`: one ingest and api address in front of partitions on other hosts.

Each partition runs `interest serve --partition I --of N --data DIR --api ADDR`
(configs/cluster.toml); the router forwards by user (engine/partitions/router.py),
with the protocol unchanged. SIGTERM/SIGINT stop it cleanly (queued events get
``[partitions] stop_drain_s`` to reach their partitions). Exit 0 clean, 1 cannot
start, 2 bad config or usage, 70 the socket loop failed.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import zmq

from interest.engine.config import load_config
from interest.engine.errors import ConfigError, InterestError
from interest.engine.logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from interest.tools.options import address, parser as make_parser


def build_parser():
    parser = make_parser("interest router", __doc__)
    parser.add_argument("--config", help="TOML file overlaid on configs/default.toml")
    parser.add_argument("--ingest", type=address, help="ingest PULL address (HOST:PORT means "
                        "tcp://); default [service] ingest")
    parser.add_argument("--api", type=address, help="api ROUTER address (HOST:PORT means "
                        "tcp://); default [service] api")
    parser.add_argument("--partitions", help="each partition's api address, comma-separated, "
                                             "partition 0 first; default [partitions] addresses")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="least severe log level written")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                        help="text lines, or one JSON object a line")
    return parser


def partition_addresses(text: str | None, config: dict) -> list[str]:
    addresses = [address(a.strip()) for a in text.split(",") if a.strip()] if text \
        else list(config["partitions"]["addresses"])
    if not addresses:
        raise ConfigError("no partitions: give --partitions tcp://HOST:PORT,... "
                          "or [partitions] addresses")
    return addresses


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        partitions = partition_addresses(args.partitions, config)
    except ConfigError as exc:
        print(f"interest router: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format)
    log = logging.getLogger("interest.router")
    from interest.engine.partitions.router import Router  # noqa: PLC0415
    from interest.engine.serving.auth import ServerAuth, warn_if_exposed  # noqa: PLC0415
    signalled: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: signalled.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: signalled.append(signum))
    failed: list[BaseException] = []
    stop = threading.Event()

    def on_fatal(exc: BaseException) -> None:
        failed.append(exc)
        stop.set()
    context = zmq.Context()
    auth = router = None
    try:
        auth = ServerAuth.from_config(config.get("security"), context)
        router = Router(partitions, config, ingest=args.ingest or config["service"]["ingest"],
                        api=args.api or config["service"]["api"], context=context,
                        secure=auth.secure if auth else None,
                        authorize=auth.authorize if auth else None,
                        may_ingest=auth.may_ingest if auth else None,
                        on_fatal=on_fatal).start()
    except (InterestError, RuntimeError, OSError, zmq.ZMQError) as exc:
        log.error("cannot start: %s", exc)
        if auth is not None:
            auth.stop()
        context.destroy(linger=0)
        return 1
    for bound in (router.bound_ingest, router.bound_api):
        warn_if_exposed(bound, auth is not None, log)
    log.info("routing ingest=%s api=%s partitions=%s", router.bound_ingest, router.bound_api,
             ",".join(partitions), extra={"event": "started", "ingest": router.bound_ingest,
                                          "api": router.bound_api, "partitions": partitions})
    while not signalled and not stop.wait(0.2):
        pass
    if failed:
        log.error("stopping after a fatal error: %s", failed[0])
    router.stop()
    if auth is not None:
        auth.stop()
    context.destroy(linger=0)
    log.info("stopped", extra={"event": "stopped"})
    return 70 if failed else 0
