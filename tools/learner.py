"""`interest learner --data DIR`: the one model learner of a partitioned data directory.

It reads every partition's log (DIR/p0 .. DIR/p{N-1}), learns the models from
all of them and sends the snapshots to the partition services that run with
`[projections] learner = "global"` (engine/projections/global_learner.py).
Start it beside them on the same host (it reads their LMDB files); it may
start before or after them. SIGTERM/SIGINT stop it with a final checkpoint
(DIR/learner/models.msgpack). Exit codes: 0 stopped cleanly, 1 cannot start
(not a partitioned directory, another learner holds DIR/learner/LOCK),
2 bad config.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from interest.engine.config import load_config
from interest.engine.errors import ConfigError, InterestError
from interest.engine.logs import LOG_FORMATS, LOG_LEVELS, setup_logging


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest learner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the partitioned data directory")
    parser.add_argument("--config", help="TOML file overlaid on configs/default.toml")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="log level (default INFO)")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                        help="text lines or one JSON object per line (default text)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"interest learner: bad config: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format)
    from interest.engine.partitions.supervisor import die_with_parent  # noqa: PLC0415
    from interest.engine.projections.global_learner import GlobalLearner  # noqa: PLC0415
    die_with_parent()           # under `serve --partitions N`: end with the supervisor
    try:
        learner = GlobalLearner(config, args.data)
    except InterestError as exc:
        print(f"interest learner: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    learner.run(stop)
    return 0
