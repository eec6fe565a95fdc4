"""What every tool that talks to a running service shares: options, exit codes, short errors.

Exit codes (documented in `interest --help` and the README):
  0  done
  1  failed: an error reply, rejected events, an unclean stop, a check that found problems
  2  bad usage: unknown option or value, bad address, missing or unreadable file, bad config
  3  no service: nothing answers at the address within --wait, or no reply within --timeout
  70 (serve) a socket loop failed; a supervisor should restart the service
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from interest.engine.serving.auth import AuthConfigError
from interest.engine.serving.client import Client
from interest.engine.serving.client_errors import (BadAddress, NoService, RequestError,
                                                   Timeout, normalize_address)
from interest.tools.keys import add_key_options, key_options

DEFAULT_API = "tcp://127.0.0.1:7101"
DEFAULT_INGEST = "tcp://127.0.0.1:7100"
DEFAULT_WAIT_S = 2.0

OK, FAILED, USAGE, NO_SERVICE, LOOP_FAILED = 0, 1, 2, 3, 70

EXIT_CODES = """exit codes:
  0   done
  1   failed: an error reply, rejected events, an unclean stop, problems found
  2   bad usage: unknown option or value, bad address, missing or unreadable file, bad config
  3   no service: nothing answers at the address within --wait (default 2 s),
      or no reply within --timeout
  70  (serve) a socket loop failed: a supervisor should restart the service"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and each option's default after its help (unless the help
    already says it, or there is none: a flag, an optional value)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, epilog=EXIT_CODES,
                                   formatter_class=HelpFormatter)


def address(text: str) -> str:
    """argparse type: a ZeroMQ address; HOST:PORT is taken as tcp://HOST:PORT."""
    try:
        return normalize_address(text)
    except BadAddress as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def seconds(text: str) -> float:
    """argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def add_service_options(p: argparse.ArgumentParser, *, timeout: float = 10.0,
                        ingest: bool = False) -> None:
    """--api, --wait, --timeout (and --ingest), plus the CurveZMQ key pair."""
    if ingest:
        p.add_argument("--ingest", type=address, default=DEFAULT_INGEST, metavar="ADDR",
                       help="the service's ingest (PULL) address; HOST:PORT means tcp://")
    p.add_argument("--api", type=address, default=DEFAULT_API, metavar="ADDR",
                   help="the service's api address; HOST:PORT means tcp://")
    p.add_argument("--wait", type=seconds, default=DEFAULT_WAIT_S, metavar="SECONDS",
                   help="how long to wait for the service to answer at all "
                        "(raise it while a service is starting)")
    p.add_argument("--timeout", type=seconds, default=timeout, metavar="SECONDS",
                   help="how long to wait for each reply once connected")
    add_key_options(p)


def client(args: argparse.Namespace, **kwargs) -> Client:
    """A Client from the service options; the service answered a ping (or NoService)."""
    made = Client(args.api, timeout=args.timeout, connect_timeout=args.wait, **key_options(args),
                  **kwargs)
    try:
        made.ping(timeout=max(args.wait, 0.1), retries=0)
    except BaseException:
        made.close()
        raise
    return made


def run(prog: str, body) -> int:
    """``body()`` with every expected failure turned into one line on stderr and its exit code."""
    try:
        return body()
    except NoService as exc:
        return fail(prog, str(exc), NO_SERVICE)
    except Timeout as exc:
        return fail(prog, f"{exc} (the service is there but did not answer; --timeout "
                          "waits longer)", NO_SERVICE)
    except RequestError as exc:
        return fail(prog, f"{exc.code}: {exc}", FAILED)
    except (AuthConfigError, BadAddress) as exc:
        return fail(prog, str(exc), USAGE)
    except FileNotFoundError as exc:
        return fail(prog, f"no such file: {exc.filename}", USAGE)
    except IsADirectoryError as exc:
        return fail(prog, f"is a directory, not a file: {exc.filename}", USAGE)
    except PermissionError as exc:
        return fail(prog, f"permission denied: {exc.filename}", USAGE)
    except UnicodeDecodeError as exc:
        return fail(prog, f"not UTF-8 text: {exc}", USAGE)
    except InputError as exc:
        return fail(prog, str(exc), USAGE)
    except KeyboardInterrupt:
        return fail(prog, "interrupted", 130)
    except BrokenPipeError:        # the reader of our output went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED


class InputError(ValueError):
    """A file or option value a tool cannot use (exit 2)."""


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (benchmarks, attacks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
