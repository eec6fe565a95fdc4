"""`interest publish FILE`: send events to a running service's ingest socket.

FILE is JSON lines, a msgpack stream (.msgpack), or a MovieLens-100K folder
(items, users, then ratings in time order). `--rate` limits events per second
(0 = as fast as possible). With `--ack`, events go through the api `ingest`
op instead and each batch is acknowledged (durable and applied) before the
next is sent.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from tqdm import tqdm

from engine.serving.client import Client, Publisher
from tools.event_files import count_events, read_events


def batches(events, size: int):
    iterator = iter(events)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _received(api: str) -> int:
    with Client(api, timeout=30) as client:
        stats = client.call("stats")
    return stats["received"] + stats["rejected"]


def _wait_received(api: str, target: int, timeout: float = 600.0) -> None:
    """PUSH has no acknowledgement and no ordering with the api socket: wait until the
    service has taken in as many events as were sent, so the flush that follows covers them."""
    deadline = time.monotonic() + timeout
    while _received(api) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service took in fewer than {target} events in {timeout:.0f} s")
        time.sleep(0.05)


def publish(events, *, ingest: str, api: str, rate: float, batch: int, ack: bool,
            progress: bool = True, total: int | None = None) -> dict:
    sent = 0
    started = time.perf_counter()
    bar = tqdm(total=total, unit="ev", disable=not progress, file=sys.stderr)
    sender = Client(api, timeout=60) if ack else Publisher(ingest)
    summary = {"accepted": 0, "duplicates": 0, "rejected": 0}
    received_before = None if ack else _received(api)
    try:
        for chunk in batches(events, batch):
            if ack:
                reply = sender.call("ingest", events=chunk)
                summary["accepted"] += reply["accepted"]
                summary["duplicates"] += reply["duplicates"]
                summary["rejected"] += len(reply["rejected"])
            else:
                sender.send(chunk)
            sent += len(chunk)
            bar.update(len(chunk))
            if rate > 0:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if not ack:
            _wait_received(api, received_before + sent)
            with Client(api, timeout=600) as client:
                client.call("flush", timeout=600)
    finally:
        bar.close()
        sender.close()
    elapsed = time.perf_counter() - started
    return {"sent": sent, "seconds": elapsed, "events_per_s": sent / elapsed if elapsed else 0.0,
            **(summary if ack else {})}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="events file or MovieLens-100K folder")
    parser.add_argument("--format", default="auto", choices=["auto", "jsonl", "msgpack", "movielens"])
    parser.add_argument("--ingest", default="tcp://127.0.0.1:7100")
    parser.add_argument("--api", default="tcp://127.0.0.1:7101",
                        help="used for --ack and for the final flush")
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = unlimited")
    parser.add_argument("--batch", type=int, default=100, help="events per message")
    parser.add_argument("--ack", action="store_true", help="use the acknowledged ingest op")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        total = count_events(args.file, args.format)
        result = publish(read_events(args.file, args.format), ingest=args.ingest, api=args.api,
                         rate=args.rate, batch=args.batch, ack=args.ack,
                         progress=not args.no_progress, total=total)
    except (OSError, ValueError) as exc:
        print(f"interest publish: {exc}", file=sys.stderr)
        return 1
    import json  # noqa: PLC0415
    print(json.dumps(result))
    return 0
