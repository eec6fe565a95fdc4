"""`interest serve`: run the service until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from engine.config import load_config
from engine.errors import InterestError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interest serve", description=__doc__)
    parser.add_argument("--config", help="TOML file overlaid on configs/default.toml")
    parser.add_argument("--data", help="data directory (LMDB); default [service] data_dir")
    parser.add_argument("--ingest", help="ingest PULL address, e.g. tcp://127.0.0.1:7100")
    parser.add_argument("--api", help="api ROUTER address, e.g. tcp://127.0.0.1:7101")
    parser.add_argument("--log-level", default="INFO")
    return parser


def start_inference(config: dict, data_dir):
    """The shared model actor, or None when inference is disabled or not built."""
    if not config["inference"].get("enabled", True):
        return None
    from actors.inference import Inference   # noqa: PLC0415 - loads llama.cpp
    from pathlib import Path  # noqa: PLC0415
    return Inference.start(config, str(Path(data_dir) / "cache"))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("interest.serve")
    from engine.serving.server import Server  # noqa: PLC0415
    config = load_config(args.config)
    data_dir = args.data or config["service"]["data_dir"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        inference = start_inference(config, data_dir)
        server = Server(config, data_dir, ingest=args.ingest, api=args.api, inference=inference)
    except (InterestError, RuntimeError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    print(f"interest: serving ingest={server.ingest} api={server.api} data={data_dir}",
          flush=True)
    stop.wait()
    log.info("stopping")
    server.stop()
    return 0
