"""Every block of README.md and docs/*.md marked `<!-- docs-test: run -->` is executed, as a new
user would type it, from a fresh folder that holds what `make demo` leaves for a first run:
`demo-out/base-model` (the demo's tiny Llama, built by the demo's own `model` stage: 6 layers,
hidden 128, its 127-token tokenizer) and `demo-out/data/` (the demo's task, by its `task` stage, with
256 training problems instead of 22,400), and the repository's `examples/`.

The blocks of one page run in order in one folder; a page marked `<!-- docs-test: after README.md -->`
starts from a copy of the folder the README's blocks left (its `runs/sft`, `runs/dpo`, ...).

Fast settings, and why they are not an environment variable that dpolab reads: the harness appends
`training.max_steps=2 training.eval_steps=2 training.save_steps=2 training.logging_steps=1` to
every `dpolab sft` and `dpolab train` command it runs; the last override wins, so each run is
two steps with one evaluation and one checkpoint, and nothing else of the command changes. A user
could type the same overrides; no code path of dpolab exists only for the docs. Everything else
(the configs, data files, model paths, every other key) is as printed.

A plain `dpolab ...` line (with at most `> FILE`) runs in this process through `dpolab.cli.main`,
which saves the 5–10 s of importing torch and transformers per command; any other line runs under
bash, with `dpolab` on the PATH. Training commands must be plain lines, so that they get the fast
settings. Blocks that need a GPU, the network, several processes or minutes of CPU are not marked:
tests/docs/test_doc_commands.py checks them without running them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docs_blocks import (
    PAGES,
    REPO,
    console_steps,
    dpolab_argv,
    matches,
    page_markers,
    read_blocks,
    shell_commands,
    split_tokens,
)

FAST = ("training.max_steps=2", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1")
TRAINING = ("train", "sft", "sweep")
README = REPO / "README.md"
RUN_PAGES = [page for page in PAGES if any(b.marker == "run" for b in read_blocks(page))]


def _after(page: Path) -> Path | None:
    """The page whose folder this page's runnable blocks start from."""
    markers = page_markers(page)
    assert len(markers) <= 1, f"{page.name}: more than one `after` marker"
    return REPO / markers[0].removeprefix("after ").strip() if markers else None


@contextlib.contextmanager
def _inside(folder: Path):
    """The command's working folder and a reference cache of its own (never the user's)."""
    old_cwd, old_cache = os.getcwd(), os.environ.get("DPOLAB_CACHE")
    os.chdir(folder)
    os.environ["DPOLAB_CACHE"] = str(folder / ".dpolab-cache")
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_cache is None:
            os.environ.pop("DPOLAB_CACHE", None)
        else:
            os.environ["DPOLAB_CACHE"] = old_cache


def _output_lines(text: str) -> list[str]:
    """Printed lines as a terminal shows them: a progress bar's last state, no blank lines."""
    lines = (line.split("\r")[-1].rstrip() for line in text.split("\n"))
    return [line for line in lines if line]


def _shim(folder: Path) -> Path:
    """A `dpolab` executable for the lines that run under bash."""
    bin_dir = folder / ".docs-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "dpolab"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dpolab "$@"\n')
    script.chmod(0o755)
    return bin_dir


def run_command(command: str, folder: Path) -> tuple[int, str]:
    """Run one command line in `folder`; its exit code and what it printed (stdout and stderr)."""
    from dpolab.cli import main

    tokens = split_tokens(command)
    argv = dpolab_argv(tokens)
    plain = argv is not None and Path(tokens[0]).name == "dpolab"
    rest = tokens[1 + len(argv) :] if plain else []
    if plain and (not rest or (len(rest) == 2 and rest[0] == ">")):
        if argv and argv[0] in ("train", "sft"):
            argv = [*argv, *FAST]
        out = io.StringIO()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_inside(folder))
            target = stack.enter_context(open(rest[1], "w", encoding="utf-8")) if rest else out
            stack.enter_context(contextlib.redirect_stdout(target))
            stack.enter_context(contextlib.redirect_stderr(out))
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse
                code = stop.code if isinstance(stop.code, int) else 2
        return code, out.getvalue()
    assert not (argv and argv[0] in TRAINING), (
        f"{command!r}: a runnable training command must be a plain `dpolab ...` line (it gets the fast settings)"
    )
    env = {
        **os.environ,
        "PATH": f"{_shim(folder)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "DPOLAB_CACHE": str(folder / ".dpolab-cache"),
    }
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def run_page(page: Path, folder: Path) -> None:
    """Run the page's runnable blocks in order in `folder`."""
    for block in read_blocks(page):
        if block.marker != "run":
            continue
        if block.lang == "console":
            for step in console_steps(block.text):
                _, printed = run_command(step.command, folder)
                actual = _output_lines(printed)
                expected = [line for line in step.output if line.strip()]
                assert matches(expected, actual), (
                    f"{block.where}: `{step.command}` printed\n"
                    + "\n".join(actual)
                    + "\nnot what the page shows:\n"
                    + "\n".join(expected)
                )
            continue
        assert block.lang in ("bash", "sh"), f"{block.where}: only bash and console blocks can be marked run"
        for command in shell_commands(block.text):
            code, printed = run_command(command, folder)
            assert code == 0, f"{block.where}: `{command}` exited with {code}:\n{printed[-4000:]}"


def _shared_root(tmp_path_factory) -> Path:
    """A folder shared by the pytest-xdist workers of this run (this process's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _once(root: Path, name: str, build) -> Path:
    """`build(folder)` once per test run, whichever worker gets here first; the others wait."""
    from filelock import FileLock

    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)  # what a failed attempt left
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


def _build_demo_out(folder: Path) -> None:
    """What `make demo`'s first two stages write, with a smaller training split."""
    from dpolab.demo.pipeline import stage_model, stage_task
    from dpolab.demo.settings import FULL
    from dpolab.demo.task import SplitSizes

    settings = dataclasses.replace(FULL, sizes=SplitSizes(train=256, eval=32, test=32))
    stage_model(folder, settings, stage_task(folder, settings), None)


def _new_folder(folder: Path, demo_out: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo-out").symlink_to(demo_out, target_is_directory=True)
    (folder / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> Path:
    return _once(_shared_root(tmp_path_factory), "docs-demo-out", _build_demo_out)


@pytest.fixture(scope="session")
def readme_folder(tmp_path_factory, demo_out) -> Path:
    """The folder the README's runnable blocks leave (run once per test run)."""
    return _once(
        _shared_root(tmp_path_factory), "docs-readme", lambda f: run_page(README, _new_folder(f, demo_out))
    )


def test_the_readme_and_the_docs_have_runnable_blocks():
    assert README in RUN_PAGES and len(RUN_PAGES) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_runnable_blocks_run_as_printed(page, request, tmp_path, demo_out):
    if page == README:
        request.getfixturevalue("readme_folder")
        return
    after = _after(page)
    folder = tmp_path / "work"
    if after is None:
        _new_folder(folder, demo_out)
    else:
        assert after == README, f"{page.name}: pages start after README.md or from nothing"
        shutil.copytree(request.getfixturevalue("readme_folder"), folder, symlinks=True)
    run_page(page, folder)
