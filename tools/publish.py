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

from interest.engine.errors import InterestError
from interest.engine.serving.client import Client, Publisher, RequestError
from interest.tools.event_files import count_events, read_events
from interest.tools.keys import add_key_options, key_options


def batches(events, size: int):
    iterator = iter(events)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _received(api: str, keys: dict) -> int | None:
    """Events the service has taken in; None when this key may not read ``stats``."""
    with Client(api, timeout=30, **keys) as client:
        try:
            stats = client.call("stats")
        except RequestError as exc:
            if exc.code != "forbidden":
                raise
            print("interest publish: this key may not ask for stats/flush (producer role): "
                  "events are handed to ZeroMQ, not confirmed; --ack confirms them",
                  file=sys.stderr)
            return None
    return stats["received"] + stats["rejected"]


def _wait_received(api: str, target: int, keys: dict, timeout: float = 600.0) -> None:
    """PUSH has no acknowledgement and no ordering with the api socket: wait until the
    service has taken in as many events as were sent, so the flush that follows covers them."""
    deadline = time.monotonic() + timeout
    while _received(api, keys) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service took in fewer than {target} events in {timeout:.0f} s")
        time.sleep(0.05)


def publish(events, *, ingest: str, api: str, rate: float, batch: int, ack: bool,
            progress: bool = True, total: int | None = None,
            server_key=None, client_key=None) -> dict:
    keys = {"server_key": server_key, "client_key": client_key}
    sent = 0
    started = time.perf_counter()
    received_before = None if ack else _received(api, keys)
    bar = tqdm(total=total, unit="ev", disable=not progress, file=sys.stderr)
    sender = Client(api, timeout=60, **keys) if ack else Publisher(ingest, **keys)
    summary = {"accepted": 0, "duplicates": 0, "rejected": 0}
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
        if received_before is not None:
            _wait_received(api, received_before + sent, keys)
            with Client(api, timeout=600, **keys) as client:
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
    add_key_options(parser)
    args = parser.parse_args(argv)
    try:
        total = count_events(args.file, args.format)
        result = publish(read_events(args.file, args.format), ingest=args.ingest, api=args.api,
                         rate=args.rate, batch=args.batch, ack=args.ack,
                         progress=not args.no_progress, total=total, **key_options(args))
    except (OSError, ValueError, InterestError) as exc:
        print(f"interest publish: {exc}", file=sys.stderr)
        return 1
    import json  # noqa: PLC0415
    print(json.dumps(result))
    return 0
