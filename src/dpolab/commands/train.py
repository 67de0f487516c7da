"""`dpolab train CONFIG [section.key=value ...]` and `dpolab sft CONFIG [...]`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    for name, sft, help_text in (
        ("train", False, "preference training (DPO, IPO, DPOP, intermediate-layer DPO)"),
        (
            "sft",
            True,
            "supervised fine-tuning on the chosen responses (the first stage of the papers' pipeline)",
        ),
    ):
        parser = subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog="Overrides take the form section.key=value, e.g. "
            + ("data.max_length=512" if sft else "loss.beta=0.3")
            + " training.learning_rate=1e-5. `dpolab config example"
            + (" sft" if sft else "")
            + "` prints a commented config.",
        )
        parser.add_argument("config", help="YAML config file")
        parser.add_argument(
            "overrides", nargs="*", metavar="section.key=value", help="overrides of the config"
        )
        parser.set_defaults(func=lambda args, sft=sft: _run(args, sft=sft))


def _run(args: argparse.Namespace, *, sft: bool) -> int:
    from dpolab.config import load_config

    config = load_config(args.config, args.overrides, sft=sft)  # fails here, before any model loads
    from dpolab.runner import run

    summary = run(config, sft=sft)
    print(
        f"dpolab {'sft' if sft else 'train'}: done, {summary['global_step']} steps; model saved in "
        f"{summary['output_dir']}"
    )
    return 0
