"""Sub-commands of the `dpolab` command line, one module per command group."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (`--limit 0` would otherwise read as "no rows")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value
