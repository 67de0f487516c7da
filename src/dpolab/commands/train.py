"""`dpolab train CONFIG [section.key=value ...]` and `dpolab sft CONFIG [...]`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    for name, example, help_text in (
        (
            "train",
            "loss.beta=0.3",
            "preference training (DPO and TRL's variants, DPOP, SimPO, CPO, ORPO; intermediate layers with any)",
        ),
        (
            "sft",
            "data.max_length=512",
            "supervised fine-tuning on the chosen responses (the first stage of the papers' pipeline)",
        ),
    ):
        parser = subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"Overrides take the form section.key=value, e.g. {example} training.learning_rate=1e-5. "
            f"`dpolab config example{' sft' if name == 'sft' else ''}` prints a commented config.",
        )
        parser.add_argument("config", help="YAML config file")
        parser.add_argument(
            "overrides", nargs="*", metavar="section.key=value", help="overrides of the config"
        )
        parser.set_defaults(func=lambda args, stage=name: _run(args, stage))


def _run(args: argparse.Namespace, stage: str) -> int:
    from dpolab.training import STAGES, load_config, run

    config = load_config(args.config, args.overrides, stage=stage)  # fails here, before any model loads
    summary = run(config, STAGES[stage])
    print(f"dpolab {stage}: done, {summary['global_step']} steps; model saved in {summary['output_dir']}")
    return 0
