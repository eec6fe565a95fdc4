"""`interest forget USER`: erase a user's data from a running service (the `forget` op).

The service erases, in one transaction, the user's journal (behaviour events
and the model's profiles), event-id entries, snapshot and declared
attributes, records the erasure as a tombstone in the journal (so restarts,
`replay check`, `replay export` and snapshots keep the user erased), then
drops the user's actor and the model results cached for its profiles.
Aggregate model counts learned from the user's events stay until the next
`interest train`. With authentication on, it needs an admin key.

Prints the reply as JSON. Exit codes: 0 erased, 1 the service refused (for
example `forbidden`), 2 bad options or keys, 3 no service at the address
(after `--wait`, default 2 s) or no answer within `--timeout`.
"""

from __future__ import annotations

import json
import sys

from interest.tools import options


def _parser():
    p = options.parser("interest forget", __doc__)
    p.add_argument("user", help="the user id to erase (always a string)")
    options.add_service_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        with options.client(args) as client:
            reply = client.forget(args.user)
        print(json.dumps({k: v for k, v in reply.items() if k not in ("rid", "ok")}))
        return options.OK
    return options.run("interest forget", body)


if __name__ == "__main__":
    sys.exit(main())
