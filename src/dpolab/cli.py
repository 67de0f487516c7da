"""The `dpolab` command line: one sub-command per module, each registering its own parser.

A module that offers a command exposes `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from dpolab import __version__
from dpolab.errors import DpolabError
from dpolab.logs import setup_logging

# Modules with sub-commands, in the order `dpolab --help` lists them. Imported lazily so that
# `dpolab --help` does not pay for importing torch.
COMMAND_MODULES: list[str] = [
    "dpolab.commands.train",
    "dpolab.commands.config",
    "dpolab.commands.data",
    "dpolab.commands.sweep",
    "dpolab.commands.demo",
    "dpolab.commands.generate",
    "dpolab.commands.eval",
    "dpolab.commands.analyze",
    "dpolab.commands.report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpolab",
        description="Preference optimisation (DPO and TRL's variants, DPO-Positive, SimPO, CPO, ORPO, "
        "intermediate-layer DPO with any of them) "
        "for Hugging Face causal language models.",
    )
    parser.add_argument("--version", action="version", version=f"dpolab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`dpolab data stats f | head`)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # Windows: take a broken pipe to be stdout's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _discard_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of what is still
    buffered does not fail again (Python's documented way to exit after a broken pipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        code = int(args.func(args) or 0)
        if sys.stdout is not None:
            sys.stdout.flush()  # a reader that has gone shows here, not in the interpreter's exit
        return code
    except DpolabError as err:
        print(f"dpolab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpolab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # some other pipe or socket broke: a bug, or worth its traceback
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for `yes | head`


if __name__ == "__main__":
    raise SystemExit(main())
