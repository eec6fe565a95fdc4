"""`interest query OP [key=value ...]`: one api request, the reply as JSON.

OP is one of the protocol's ops: ping, ingest, flush, interests, recommend,
explain, stats, forget. Values are parsed as JSON when they can be (k=5,
fresh=true, candidates='["1","2"]'), otherwise taken as strings (user=42 is
the number 42; write user='"42"' or use --user for ids). The reply is
printed as it came, errors included (exit 1 for an error reply).
"""

from __future__ import annotations

import json
import sys

from interest.tools import options

PROG = "interest query"


def _parse_fields(pairs: list[str]) -> dict:
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise options.InputError(f"expected key=value, got {pair!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return fields


def build_parser():
    p = options.parser(PROG, __doc__)
    p.add_argument("op", help="ping, ingest, flush, interests, recommend, explain, stats, forget")
    p.add_argument("fields", nargs="*", metavar="key=value", help="request fields")
    p.add_argument("--user", help="user id (always a string)")
    p.add_argument("--item", help="item id (always a string)")
    options.add_service_options(p, timeout=10.0)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return options.run(PROG, lambda: _query(args))


def _query(args) -> int:
    fields = _parse_fields(args.fields)
    for key in ("user", "item"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    with options.client(args) as client:
        reply = client.raw({"op": args.op, **fields})
    print(json.dumps(reply, indent=2, default=str))
    return options.OK if reply.get("ok") else options.FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
