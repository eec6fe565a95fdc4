"""`interest query OP [key=value ...]`: one api request, the reply as JSON.

Values are parsed as JSON when they can be (k=5, fresh=true, candidates='["1","2"]'),
otherwise taken as strings (user=42 is the number 42; write user='"42"' or
use --user for ids).
"""

from __future__ import annotations

import argparse
import json
import sys

from interest.engine.serving.auth import AuthConfigError
from interest.engine.serving.client import Client
from interest.engine.errors import DeadlineExceeded
from interest.tools.keys import add_key_options, key_options


def _parse_fields(pairs: list[str]) -> dict:
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"interest query: expected key=value, got {pair!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return fields


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", help="ping, ingest, flush, interests, recommend, explain, stats")
    parser.add_argument("fields", nargs="*", help="request fields as key=value")
    parser.add_argument("--user", help="user id (always a string)")
    parser.add_argument("--item", help="item id (always a string)")
    parser.add_argument("--api", default="tcp://127.0.0.1:7101")
    parser.add_argument("--timeout", type=float, default=10.0)
    add_key_options(parser)
    args = parser.parse_intermixed_args(argv)
    fields = _parse_fields(args.fields)
    for key in ("user", "item"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    try:
        client = Client(args.api, timeout=args.timeout, **key_options(args))
    except AuthConfigError as exc:
        print(f"interest query: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            reply = client.raw({"op": args.op, **fields})
        except DeadlineExceeded as exc:
            print(json.dumps({"ok": False, "error": {"code": "deadline_exceeded",
                                                     "message": str(exc)}}))
            print(f"interest query: no answer; is `interest serve` running at {args.api}?",
                  file=sys.stderr)
            return 3
    print(json.dumps(reply, indent=2, default=str))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
