"""The shell commands of README.md and docs/*.md that are not run (they need a GPU, the network,
several processes or minutes) are checked without running them, so that they cannot drift either:

- a `dpolab` command (also under `python -m`, `accelerate launch`, `torchrun`) passes the command
  line's parser: its sub-command and options exist;
- the `section.key=value` overrides of `dpolab train`, `sft` and `sweep` name keys of the config
  schema with values of the right type; over the example config the command names (`dpo.yaml`
  is what `dpolab config example dpo` writes), the whole config passes `dpolab train`'s checks;
- a `make` target exists in the Makefile; a `python SCRIPT` or `--config_file FILE` is a file of
  the repository; a `python -m MODULE` is importable.

The blocks marked runnable are run instead (test_doc_runs.py), their errors shown on purpose.
"""

from __future__ import annotations

import importlib.util
import re

import pytest
from docs_blocks import REPO, SHELLS, all_blocks, block_commands, dpolab_argv, split_tokens

from dpolab.cli import build_parser
from dpolab.commands.config import example_names
from dpolab.config import merge_overrides, parse_config
from dpolab.errors import DpolabError
from dpolab.training import load_config
from dpolab.training.sweep import grid

BLOCKS = [b for b in all_blocks(SHELLS) if b.marker != "run" and not b.marker.startswith("skip")]
COMMANDS = [(block, command) for block in BLOCKS for command in block_commands(block)]
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.M))


def check_dpolab(argv: list[str]) -> None:
    """`argv` (the arguments after `dpolab`) as the command line would take them."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        raise AssertionError(
            f"`dpolab {' '.join(argv)}` is refused by the command line (exit {stop.code})"
        ) from None
    if args.command not in ("train", "sft", "sweep"):
        return
    stage = "sft" if args.command == "sft" else "train"
    config = REPO / args.config
    if not config.is_file() and config.stem in example_names():
        config = REPO / "examples" / f"{config.stem}.yaml"  # what `dpolab config example NAME` writes
    for combo in grid(args.axes) if args.command == "sweep" else [args.overrides]:
        parse_config(merge_overrides({}, combo))  # keys and types
        if config.is_file():
            load_config(config, combo, stage=stage)  # the whole config, through dpolab train's checks


def check_command(command: str) -> None:
    tokens = split_tokens(command)
    argv = dpolab_argv(tokens)
    if argv is not None:
        check_dpolab(argv)
    words = [t for t in tokens if not re.match(r"^[A-Za-z_]\w*=", t)]  # environment assignments dropped
    if not words:
        return
    if words[0] == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert all(t in MAKE_TARGETS for t in targets), f"`{command}`: no such make target ({targets})"
    if words[0] in ("python", "python3") and len(words) > 1:
        if words[1] == "-m":
            assert importlib.util.find_spec(words[2]) is not None, f"`{command}`: no module {words[2]}"
        elif words[1].endswith(".py"):
            assert (REPO / words[1]).is_file(), f"`{command}`: no script {words[1]} in the repository"
    if "--config_file" in words:
        path = words[words.index("--config_file") + 1]
        assert (REPO / path).is_file(), f"`{command}`: no config file {path} in the repository"


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize(("block", "command"), COMMANDS, ids=[f"{b.where}:{c[:40]}" for b, c in COMMANDS])
def test_every_command_is_accepted(block, command):
    try:
        check_command(command)
    except (AssertionError, DpolabError) as err:
        pytest.fail(f"{block.where}: {err}")


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("dpolab train dpo.yaml loss.bta=0.3", "unknown key 'loss.bta'"),
        ("dpolab train dpo.yaml loss.dpop_lambda=10", "only used by loss.method dpop"),
        ("dpolab sweep dpo.yaml loss.intermediate_layers=[],[11,22]", "is now loss.intermediate.layers"),
        ("dpolab eval winrate --a a.jsonl --judge exact:", "refused by the command line"),
        (
            "accelerate launch --config_file examples/accelerate/nope.yaml -m dpolab train x.yaml",
            "no config file",
        ),
        ("make docs", "no such make target"),
        ("python benchmarks/nope.py --quick", "no script"),
    ],
)
def test_the_checks_catch_drift(command, problem, capsys):
    """What the checks are for: each of these commands has drifted from the code."""
    with pytest.raises((AssertionError, DpolabError), match=re.escape(problem)):
        check_command(command)
