"""`interest keys new DIR --name NAME [--role producer|reader|admin] [--server]`.

Writes a CurveZMQ key pair in pyzmq's certificate format: DIR/NAME.key (public,
with `role` in its metadata: copy it into the service's clients_dir) and
DIR/NAME.key_secret (keep it private: the client's --client-key). `--server`
makes the service's pair instead (no role): `[security] server_secret_key` is
its .key_secret, clients get its .key as --server-key. Never overwrites a key.
"""

from __future__ import annotations

import argparse
import json
import sys

from interest.engine.serving.auth import ROLES, AuthConfigError, create_key_pair


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """The --server-key/--client-key pair every tool that talks to the service takes."""
    parser.add_argument("--server-key", metavar="PATH",
                        help="the service's public certificate (CurveZMQ; with --client-key)")
    parser.add_argument("--client-key", metavar="PATH",
                        help="this client's secret certificate, NAME.key_secret")


def key_options(args: argparse.Namespace) -> dict:
    """``server_key=``/``client_key=`` keyword arguments for Client and Publisher."""
    return {"server_key": args.server_key, "client_key": args.client_key}


def key_argv(args: argparse.Namespace) -> list[str]:
    """The same options again, as command-line arguments for another tool."""
    argv = []
    for flag, value in (("--server-key", args.server_key), ("--client-key", args.client_key)):
        if value is not None:
            argv += [flag, value]
    return argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interest keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="write a key pair (NAME.key and NAME.key_secret)")
    new.add_argument("dir", help="folder to write into (created if missing)")
    new.add_argument("--name", required=True, help="file name of the pair, e.g. alice")
    kind = new.add_mutually_exclusive_group()
    kind.add_argument("--role", choices=ROLES, default=None,
                      help="what the client may do (default reader)")
    kind.add_argument("--server", action="store_true", help="the service's own pair, no role")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    role = None if args.server else (args.role or "reader")
    try:
        public, secret = create_key_pair(args.dir, args.name, role)
    except AuthConfigError as exc:
        print(f"interest keys: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"public": str(public), "secret": str(secret), "role": role}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
