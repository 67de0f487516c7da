"""Where the `dpolab` logger's messages go: one line each on stderr, `dpolab: ...`. The command
line sets this up at start; the Python API (`dpolab.train`, `PreferenceTrainer`) does the same
unless the caller gave the `dpolab` logger a handler of their own, so that a notebook sees the
run's log as the command line shows it."""

from __future__ import annotations

import logging
import sys

LOGGER = "dpolab"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the message (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(*, unless_configured: bool = False) -> None:
    """Send the `dpolab` logger's INFO messages to stderr as `dpolab: ...` (once). With
    `unless_configured`, a logger that already has a handler (the caller's own) is left alone."""
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, StderrHandler) for h in logger.handlers):
        return
    if unless_configured and logger.handlers:
        return
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("dpolab: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
