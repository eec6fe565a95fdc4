"""The partition options of `interest serve` (README, "Partitions").

``--partition I --of N``: this process is partition I of a data directory split
into N (``DIR/partitions.json`` records N; the partition's data is ``DIR/pI``),
an ordinary service otherwise. ``--partitions N`` (or ``[partitions] count``):
the router on the usual addresses plus N partition processes on this host
(engine.partitions.supervisor). A partitioned directory is never served as an
unpartitioned one.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import zmq

from interest.engine.errors import ConfigError, InterestError
from interest.engine.partitions.layout import ensure_layout, partition_dir, read_layout


def add_options(parser) -> None:
    parser.add_argument("--partition", type=int, metavar="I",
                        help="serve partition I (with --of N) of a partitioned data directory")
    parser.add_argument("--of", type=int, metavar="N", help="the partition count (with --partition)")
    parser.add_argument("--partitions", type=int, metavar="N",
                        help="start the router and N partition processes on this host; "
                             "default [partitions] count (1 = unpartitioned)")
    parser.add_argument("--learner", choices=("thread", "process", "global"),
                        help="override [projections] learner")


def _check_not_unpartitioned(data_dir, count: int) -> None:
    if read_layout(data_dir) is None and (Path(data_dir) / "journal").exists():
        raise ConfigError(f"{data_dir} holds an unpartitioned store: split it with `interest "
                          f"replay repartition --data {data_dir} --to {count} --out NEW_DIR`")


def plan(args, config: dict, data_dir) -> tuple[str, int]:
    """(the data directory this process serves, the partitions it starts: 1 = itself)."""
    if args.partition is not None or args.of is not None:
        if args.partition is None or args.of is None or args.partitions is not None:
            raise ConfigError("--partition I and --of N go together (and without --partitions)")
        if not 0 <= args.partition < args.of:
            raise ConfigError(f"--partition must be 0 .. {args.of - 1}, not {args.partition}")
        _check_not_unpartitioned(data_dir, args.of)
        ensure_layout(data_dir, args.of)
        from interest.engine.partitions.supervisor import die_with_parent  # noqa: PLC0415
        die_with_parent()
        return str(partition_dir(data_dir, args.partition)), 1
    count = args.partitions if args.partitions is not None else config["partitions"]["count"]
    if count < 1:
        raise ConfigError(f"--partitions must be at least 1, not {count}")
    recorded = read_layout(data_dir)
    if count == 1 and recorded is not None:
        raise ConfigError(f"{data_dir} is split into {recorded} partitions: serve it with "
                          f"--partitions {recorded} (or --partition I --of {recorded})")
    if count > 1:
        _check_not_unpartitioned(data_dir, count)
    return str(data_dir), count


def global_learner(config: dict) -> bool:
    """Whether the partitions take their models from the one learner of all partitions
    (`interest learner`, a supervised child): with ``[projections] learner`` "process"
    (the default) or "global"; "thread" keeps a learner per partition, of its own events."""
    return config["projections"]["learner"] in ("process", "global") \
        and importlib.util.find_spec("interest.tools.learner") is not None


def run_cluster(config: dict, data_dir, count: int, args, signalled: list, failed: list,
                stop) -> int:
    """Serve ``count`` partitions behind the router until a signal; 0 clean, 1 cannot start."""
    from interest.engine.partitions.supervisor import Cluster  # noqa: PLC0415
    log = logging.getLogger("interest.serve")

    def on_fatal(exc: BaseException) -> None:
        failed.append(exc)
        stop.set()
    cluster = Cluster(config, data_dir, count, ingest=args.ingest, api=args.api,
                      config_file=args.config, log_level=args.log_level,
                      global_learner=global_learner(config), on_fatal=on_fatal)
    if args.http or (args.http is None and config["http"]["address"]):
        log.warning("the HTTP side port is not served in front of partitions: only the "
                    "router's ZeroMQ ingest and api addresses are")
    try:
        cluster.start()
    except (InterestError, RuntimeError, OSError, zmq.ZMQError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("serving ingest=%s api=%s data=%s partitions=%d", cluster.ingest, cluster.api,
             data_dir, count, extra={"event": "started", "ingest": cluster.ingest,
                                     "api": cluster.api, "data": str(data_dir),
                                     "partitions": count})
    while not signalled and not stop.is_set():
        cluster.supervise(timeout=0.2)
    if failed:
        log.error("stopping after a fatal error: %s", failed[0])
    cluster.stop()
    log.info("stopped", extra={"event": "stopped"})
    return 70 if failed else 0
