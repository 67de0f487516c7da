"""Sub-commands of the `dpolab` command line, one module per command group."""

from __future__ import annotations

import argparse

from dpolab.modeling.loading import DTYPE_CHOICES


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (`--limit 0` would otherwise read as "no rows")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype` of the commands that load a model for inference."""
    parser.add_argument("--device", default="auto", help="cuda, cpu, cuda:1, ... (default: cuda if present)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="model dtype (default: bfloat16 on GPUs that have it, else float32)",
    )
