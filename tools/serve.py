"""`interest serve`: run the service until SIGINT/SIGTERM.

`interest serve --check-config [--config PATH]` only checks the config: it
prints "config OK" (exit 0) or the one-line error (exit 2). A bad config stops
`interest serve` the same way, before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import zmq

from interest.engine.config import load_config
from interest.engine.errors import ConfigError, InterestError
from interest.engine.logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from interest.tools import serve_partitions
from interest.tools.options import address


#: ``interest serve --http`` without an address
DEFAULT_HTTP = "127.0.0.1:7102"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interest serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file overlaid on configs/default.toml")
    parser.add_argument("--check-config", action="store_true",
                        help="check the config (defaults + --config) and exit: 0 OK, 2 bad")
    parser.add_argument("--data", help="data directory (LMDB); default [service] data_dir")
    parser.add_argument("--ingest", type=address, help="ingest PULL address, e.g. "
                        "tcp://127.0.0.1:7100 (HOST:PORT means tcp://); default [service] ingest")
    parser.add_argument("--api", type=address, help="api ROUTER address, e.g. "
                        "tcp://127.0.0.1:7101 (HOST:PORT means tcp://); default [service] api")
    parser.add_argument("--http", nargs="?", const=DEFAULT_HTTP, metavar="HOST:PORT",
                        help="serve the HTTP side port (metrics, probes, dashboard, JSON api) "
                             f"on HOST:PORT; --http alone: {DEFAULT_HTTP}; \"\" = off; "
                             "default [http] address (off)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="least severe log level written (default %(default)s)")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                        help="text lines, or one JSON object a line (default %(default)s)")
    serve_partitions.add_options(parser)
    return parser


def start_inference(config: dict, data_dir):
    """The shared model actor, or None when inference is disabled or not built."""
    if not config["inference"].get("enabled", True):
        return None
    from interest.actors.inference import Inference   # noqa: PLC0415 - loads llama.cpp
    from pathlib import Path  # noqa: PLC0415
    return Inference.start(config, str(Path(data_dir) / "cache"))


def check_data_dir(data_dir) -> None:
    """Fail fast (before loading a model) when another process holds the data directory."""
    from interest.engine.journal.lock import DataDirLock  # noqa: PLC0415
    DataDirLock(data_dir).acquire().release()


def start(config: dict, data_dir, args, on_fatal=None):
    """(inference, server); whatever started is stopped again if the rest fails."""
    from interest.engine.serving.server import Server  # noqa: PLC0415
    check_data_dir(data_dir)
    inference = start_inference(config, data_dir)
    try:
        return inference, Server(config, data_dir, ingest=args.ingest, api=args.api,
                                 inference=inference, on_fatal=on_fatal,
                                 http=getattr(args, "http", None))
    except BaseException:
        if inference is not None:
            inference.stop(timeout=5)
        raise


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, **({"projections": {"learner": args.learner}}
                                             if args.learner else {}))
    except ConfigError as exc:
        print(f"interest serve: bad config: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print("config OK")
        return 0
    setup_logging(args.log_level, args.log_format)
    log = logging.getLogger("interest.serve")
    data_dir = args.data or config["service"]["data_dir"]
    try:
        data_dir, partitions = serve_partitions.plan(args, config, data_dir)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = threading.Event()
    failed: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        """A socket loop cannot go on: stop, and exit non-zero so a supervisor restarts us."""
        failed.append(exc)
        stop.set()
    signalled: list[int] = []
    # a handler only records the signal: Event.set() from a handler can deadlock on the
    # lock the interrupted Event.wait() holds; the main loop below polls the record
    signal.signal(signal.SIGTERM, lambda signum, _frame: signalled.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: signalled.append(signum))
    if partitions > 1:
        return serve_partitions.run_cluster(config, data_dir, partitions, args, signalled,
                                            failed, stop)
    try:
        _inference, server = start(config, data_dir, args, on_fatal)
    except (InterestError, RuntimeError, OSError, zmq.ZMQError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    log_started(log, server, data_dir, config, args.config)
    while not signalled and not stop.wait(0.2):
        pass
    if failed:
        log.error("stopping after a fatal error: %s", failed[0])
    try:
        server.stop()
    except Exception as exc:  # noqa: BLE001 - one line and exit 1, never a traceback
        log.error("unclean stop: %s", exc if isinstance(exc, InterestError)
                  else f"{type(exc).__name__}: {exc}",
                  extra={"event": "stopped", "exit_code": 1})
        return 1
    code = 70 if failed else 0
    log.info("stopped (exit %d)", code, extra={"event": "stopped", "exit_code": code})
    return code


def log_started(log, server, data_dir, config: dict, config_file) -> None:
    """The one start-up line: addresses, data directory, model, config file."""
    fields = {"ingest": server.ingest, "api": server.api,
              "http": server.http.url if server.http is not None else None,
              "data": str(data_dir), "model": describe_model(config),
              "config": config_file or "defaults (configs/default.toml)"}
    log.info("serving " + " ".join(f"{k}={v}" for k, v in fields.items()),
             extra={"event": "started", **fields})


def describe_model(config: dict) -> str:
    inference = config["inference"]
    if not inference.get("enabled", True):
        return "none (inference disabled)"
    if inference.get("backend") == "openai":
        return f"openai {inference.get('url')} {inference.get('model') or '(first listed)'}"
    return config["model"].get("path") or "bundled SmolLM2-135M-Instruct"
