"""`interest publish FILE`: send a file of events to a running service and say what it did.

FILE is JSON lines, a msgpack stream (.msgpack), CSV (.csv/.tsv, with
--csv-map) or a MovieLens-100K folder (items, users, then ratings in time
order). The file is read once first (total count; a bad line stops here,
before anything is sent).

By default events go through the acknowledged api `ingest` op, a few batches
in flight (--window): each reply counts, exactly, the events accepted
(durable and applied), the duplicates (an id already in its stream) and the
rejected ones with their reasons. Under overload a batch is resent after the
service's retry_after_ms hint; batches in flight may then be applied out of
file order (--window 1 keeps it strictly).

--push sends over the ingest socket instead (fire-and-forget, the fastest),
then waits until the service has taken in and applied everything; its counts
come from the service's counters (exact only while no other producer sends)
and rejections carry no reasons (the service logs them). A producer key may
not read those counters: with it, --push only hands the events to ZeroMQ.

Progress: "sending" (total and percentage), then "waiting for the service:
applied N/M", then one line: accepted, duplicates, rejected (the first
reasons; "event N" is the file's Nth event, for CSV its Nth data row), and a
JSON summary on stdout. Exit 1 when any event was rejected, 3 when the
service is not there or stops answering (what was acknowledged so far is
printed; publishing the file again is safe: re-sent ids are duplicates).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from interest.engine.serving.aio import AsyncClient
from interest.engine.serving.client import Publisher
from interest.engine.serving.client_errors import BadRequest, Forbidden, RequestError, Timeout
from interest.engine.serving.retry import RetryPolicy
from interest.tools import options
from interest.tools.event_files import FORMATS, CsvMapping, count_events, parse_csv_map, read_events
from interest.tools.keys import key_options

PROG = "interest publish"
FIRST_REASONS = 5
POLL_S = 0.5                 # stats polls while waiting (2 Hz at most)
STALL_S = 30.0               # --push: give up when the service moves nothing for this long
# an overloaded batch is resent for as long as the service keeps saying so
OVERLOAD_RETRIES = RetryPolicy(retries=1 << 30, backoff_s=0.05, max_backoff_s=2.0)


def batches(events, size: int):
    iterator = iter(events)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class Tally:
    """What the service did with the events sent; ``exact`` says where the counts came from."""
    mode: str
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list = field(default_factory=list)     # the first few: {event, code, message}
    exact: bool = True
    confirmed: bool = True
    seconds: float = 0.0

    def reply(self, start: int, reply: dict) -> None:
        self.accepted += reply["accepted"]
        self.duplicates += reply["duplicates"]
        for bad in reply["rejected"]:
            self.reject(start + int(bad.get("index", 0)), bad.get("code", "bad_request"),
                        bad.get("message", ""))

    def reject(self, index: int, code: str, message: str) -> None:
        self.rejected += 1
        if len(self.rejections) < FIRST_REASONS:
            self.rejections.append({"event": index + 1, "code": code, "message": message})

    def summary(self) -> dict:
        out = {"mode": self.mode, "sent": self.sent, "seconds": round(self.seconds, 3),
               "events_per_s": round(self.sent / self.seconds, 1) if self.seconds else 0.0}
        if not self.confirmed:
            return {**out, "confirmed": False}
        return {**out, "accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": self.rejected, "rejections": self.rejections, "exact": self.exact}

    def line(self) -> str:
        if not self.confirmed:
            return f"sent {self.sent} events, not confirmed"
        text = f"accepted {self.accepted}, duplicates {self.duplicates}, rejected {self.rejected}"
        if self.rejections:
            text += "; first: " + "; ".join(
                f"event {r['event']}: {r['message']}" for r in self.rejections)
        elif self.rejected and not self.exact:
            text += " (reasons are in the service's log; publish without --push to get them)"
        if not self.exact:
            text += " (from the service's counters: exact only if no other producer sent)"
        return text


class Progress:
    """Two phases on stderr: "sending" N/M (percentage), then "waiting for the service:
    applied" N/M."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.waiting_phase = False
        self.bar = self._bar("sending", 0)

    def _bar(self, desc: str, initial: int):
        return tqdm(total=self.total, initial=initial, desc=desc, unit="ev",
                    disable=not self.enabled, file=sys.stderr, dynamic_ncols=True)

    def sent(self, n: int) -> None:
        self.bar.update(n)

    def waiting(self, applied: int, label: str = "applied") -> None:
        self.bar.close()
        self.waiting_phase = True
        self.bar = self._bar(f"waiting for the service: {label}", applied)

    def at(self, applied: int) -> None:
        """The service's count so far; shown once sending is over."""
        if self.waiting_phase:
            self.bar.update(max(0, applied - self.bar.n))

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------ acknowledged

async def acknowledged(events, args, progress: Progress, tally: Tally) -> None:
    """Batches through the `ingest` op, ``args.window`` in flight; the tally is exact.
    The first batch that fails for good (no service, no reply, forbidden, unavailable)
    stops the rest: no new batch is sent and those in flight are abandoned."""
    client = AsyncClient(args.api, timeout=args.timeout, connect_timeout=args.wait,
                         retry=OVERLOAD_RETRIES, **key_options(args))
    window = asyncio.Semaphore(args.window)
    failed = asyncio.Event()
    failures: list[BaseException] = []
    applied = [0]

    async def one(start: int, chunk: list) -> None:
        try:
            tally.reply(start, await client.ingest(chunk))
        except BadRequest as exc:                 # the batch as a whole was refused
            for i in range(len(chunk)):
                tally.reject(start + i, exc.code, str(exc))
        except (RequestError, Timeout) as exc:
            failures.append(exc)
            failed.set()
            return
        finally:
            window.release()
        applied[0] += len(chunk)
        progress.at(applied[0])

    tasks = []
    started = time.perf_counter()
    try:
        for chunk in batches(events, args.batch):
            await window.acquire()
            if failed.is_set():
                break
            tasks.append(asyncio.create_task(one(tally.sent, chunk)))
            tally.sent += len(chunk)
            progress.sent(len(chunk))
            await _pace(tally.sent, args.rate, started)
        progress.waiting(applied[0])
        await _all_or_first_failure(tasks, failed)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    if failures:
        raise failures[0]


async def _all_or_first_failure(tasks: list, failed: asyncio.Event) -> None:
    if not tasks:
        return
    everything = asyncio.gather(*tasks)
    stopped = asyncio.create_task(failed.wait())
    await asyncio.wait({everything, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not everything.done():
        everything.cancel()
    await asyncio.gather(everything, stopped, return_exceptions=True)


async def _pace(sent: int, rate: float, started: float) -> None:
    if rate > 0:
        ahead = sent / rate - (time.perf_counter() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


# -------------------------------------------------------------------------- push

def push(events, args, client, progress: Progress, tally: Tally) -> None:
    """Over the ingest socket, then wait (polling stats at most twice a second)."""
    tally.mode, tally.exact = "push", False
    try:
        before = client.stats()
    except Forbidden:
        print(f"{PROG}: this key may not ask for stats/flush (producer role): events are "
              "handed to ZeroMQ, not confirmed; without --push they are", file=sys.stderr)
        before = None
    started = time.perf_counter()
    with Publisher(args.ingest, **key_options(args)) as publisher:
        for chunk in batches(events, args.batch):
            _send(publisher, chunk, client)
            tally.sent += len(chunk)
            progress.sent(len(chunk))
            if args.rate > 0:
                time.sleep(max(0.0, tally.sent / args.rate - (time.perf_counter() - started)))
        if before is None:
            tally.confirmed = False
            return
        _wait_taken(client, before, tally.sent, progress, args.ingest)
        client.flush(timeout=max(args.timeout, 600.0))
    after = client.stats()
    delta = {key: after[key] - before[key] for key in ("received", "duplicates", "rejected")}
    tally.duplicates = delta["duplicates"]
    tally.accepted = delta["received"] - delta["duplicates"]
    tally.rejected = delta["rejected"]


def _send(publisher: Publisher, chunk: list, client) -> None:
    """Block while the service does not read (backpressure), checking every 2 s that it
    is still there."""
    while True:
        try:
            publisher.send(chunk, timeout=2.0)
            return
        except Timeout:
            client.ping(retries=0)           # NoService when it went away


def _wait_taken(client, before: dict, sent: int, progress: Progress, ingest: str) -> None:
    """Until the service has taken in (received or rejected) every event sent."""
    progress.waiting(0, "taken in")
    moved_at, last = time.monotonic(), None
    while True:
        stats = client.stats()
        taken = (stats["received"] - before["received"]) + (stats["rejected"] - before["rejected"])
        progress.at(min(taken, sent))
        if taken >= sent:
            return
        now_state = (taken, stats.get("applied"), stats.get("head"))
        if now_state != last:
            moved_at, last = time.monotonic(), now_state
        elif time.monotonic() - moved_at > STALL_S:
            raise options.InputError(
                f"the service took in {taken} of {sent} events and nothing moved for "
                f"{STALL_S:.0f} s: is {ingest} its ingest address (--ingest)?")
        time.sleep(POLL_S)


# -------------------------------------------------------------------------- main

def build_parser():
    p = options.parser(PROG, __doc__)
    p.add_argument("file", help="events file (.jsonl, .msgpack, .csv, .tsv) or a "
                                "MovieLens-100K folder")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="file format; auto: by suffix (a folder is MovieLens)")
    p.add_argument("--csv-map", metavar="KEY=COLUMN,...",
                   help="CSV: which column holds each event key, e.g. user=user_id,item=movie,"
                        "type=event,ts=timestamp,value=rating (default: columns named like "
                        "event keys)")
    p.add_argument("--csv-type", metavar="TYPE",
                   help="CSV: the event type of every row when no column holds it (e.g. rate)")
    p.add_argument("--csv-delimiter", metavar="CHAR",
                   help="CSV: the field separator (default: tab for .tsv, else comma)")
    p.add_argument("--push", action="store_true",
                   help="fire-and-forget over the ingest socket (fastest; counts from the "
                        "service's counters, no reasons)")
    p.add_argument("--ack", action="store_true",
                   help="the acknowledged `ingest` op (the default; kept for old scripts)")
    p.add_argument("--batch", type=options.positive_int, default=500,
                   help="events per message")
    p.add_argument("--window", type=options.positive_int, default=4,
                   help="acknowledged batches in flight at once (1 keeps strict file order)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = unlimited")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    options.add_service_options(p, timeout=60.0, ingest=True)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.push and args.ack:
        return options.fail(PROG, "--push and --ack exclude each other", options.USAGE)
    return options.run(PROG, lambda: _publish(args))


def _publish(args) -> int:
    mapping = CsvMapping(parse_csv_map(args.csv_map),
                         {"type": args.csv_type} if args.csv_type else {}, args.csv_delimiter)
    total = count_events(args.file, args.format, mapping)
    events = read_events(args.file, args.format, mapping)
    tally = Tally(mode="ack")
    started = time.perf_counter()
    with options.client(args) as client:
        progress = Progress(total, enabled=not args.no_progress)
        try:
            if args.push:
                push(events, args, client, progress, tally)
            else:
                asyncio.run(acknowledged(events, args, progress, tally))
        except (RequestError, Timeout, options.InputError):
            tally.seconds = time.perf_counter() - started
            print(f"{PROG}: stopped after {tally.sent} of {total} events sent; so far: "
                  f"{tally.line()}", file=sys.stderr)
            raise
        finally:
            progress.close()
    tally.seconds = time.perf_counter() - started
    print(f"{PROG}: {tally.line()}", file=sys.stderr)
    print(json.dumps(tally.summary()))
    return options.FAILED if tally.rejected else options.OK
