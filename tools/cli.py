"""The `interest` command: one entry point, a subcommand per tool.

Each tool lives in its own module with ``main(argv) -> int``; this file only
routes to it, importing lazily so `interest query` does not load the model.
A new tool is one line in COMMANDS: name -> (module, one-line help).

``kill -USR1 PID`` makes any `interest` process print every thread's stack to
its stderr and go on (Python's faulthandler): the first look at a process that
seems stuck.
"""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import signal
import sys

COMMANDS = {
    "serve": ("interest.tools.serve", "run the service"),
    "router": ("interest.tools.router", "one address in front of partitions on other hosts"),
    "publish": ("interest.tools.publish", "send a file of events (JSON lines, msgpack, CSV, MovieLens)"),
    "export": ("interest.tools.export", "export every user's recommendations (JSON lines)"),
    "replay": ("interest.tools.replay", "check, export or re-publish the journal"),
    "query": ("interest.tools.query", "send one api request, print the JSON reply"),
    "bench": ("interest.tools.bench", "benchmarks: ingest, inference, recommend, model, profiles, ..."),
    "train": ("interest.tools.train", "build the collaborative model from a journal or dataset"),
    "eval": ("interest.tools.eval", "evaluate on MovieLens-100K (prequential and leave-one-out)"),
    "explain": ("interest.tools.explain_report", "explain a user's interests, optionally as HTML"),
    "keys": ("interest.tools.keys", "make CurveZMQ key pairs for authentication"),
    "learner": ("interest.tools.learner", "the one model learner of a partitioned data directory"),
    "forget": ("interest.tools.forget", "erase a user's data (the `forget` op; admin)"),
    "config": ("interest.tools.config_docs", "`config docs`: write docs/CONFIG.md, every config key"),
}


def _usage() -> str:
    from interest.tools.options import EXIT_CODES  # noqa: PLC0415
    lines = ["usage: interest COMMAND [ARGS...] | --version | --help", "", "commands:"]
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            lines.append(f"  {name:<9} {help_text}")
    lines.append("\n`interest COMMAND --help` for a command's options.\n")
    lines.append(EXIT_CODES)
    return "\n".join(lines)


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` prints every thread's stack to stderr (when stderr is a file:
    not when a caller captured it in memory)."""
    if not hasattr(signal, "SIGUSR1"):
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation: no fileno
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv and argv[0] == "--version":
        from importlib.metadata import version  # noqa: PLC0415
        print(f"interest {version('interest-capture')}")
        return 0
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    entry = COMMANDS.get(argv[0])
    if entry is None or importlib.util.find_spec(entry[0]) is None:
        names = ", ".join(n for n, (m, _) in COMMANDS.items() if importlib.util.find_spec(m))
        print(f"interest: unknown command {argv[0]!r}; the commands: {names} "
              "(`interest --help` says what each does)", file=sys.stderr)
        return 2
    _dump_stacks_on_sigusr1()
    module = importlib.import_module(entry[0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
