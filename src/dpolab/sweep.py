"""`dpolab sweep`: the papers' ablations (β sweeps, layer choices) as one command.

A grid of overrides, one training run per process, each run named by its values and written to
its own folder; runs that already finished (their `summary.json` exists) are skipped, so an
interrupted sweep continues where it stopped. Every config of the grid is checked before the
first run starts.
"""

from __future__ import annotations

import itertools
import logging
import re
import subprocess
import sys
from pathlib import Path

from dpolab.config import load_config, parse_override
from dpolab.errors import DpolabError

log = logging.getLogger("dpolab")


def split_values(text: str) -> list[str]:
    """`0.1,0.3` -> ['0.1', '0.3']; commas inside brackets or braces stay: `[11],[11,22]` ->
    ['[11]', '[11,22]']."""
    values, depth, current = [], 0, []
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    if depth != 0 or any(not v.strip() for v in values):
        raise DpolabError(f"sweep values {text!r}: unbalanced brackets or an empty value")
    return [v.strip() for v in values]


def grid(axes: list[str]) -> list[list[str]]:
    """Each `key=v1,v2,...` is an axis; the result is every combination as a list of overrides."""
    parsed = []
    for axis in axes:
        if "=" not in axis:
            raise DpolabError(f"sweep axis {axis!r} is not of the form section.key=v1,v2")
        key, values = axis.split("=", 1)
        parse_override(f"{key}=x")  # the key must name a section and a key
        parsed.append([f"{key}={v}" for v in split_values(values)])
    return [list(combo) for combo in itertools.product(*parsed)]


def run_name(overrides: list[str]) -> str:
    """A folder name from the values that vary: `loss.beta=0.1 loss.method=dpo` -> `beta-0.1_method-dpo`."""
    parts = []
    for override in overrides:
        key, value = override.split("=", 1)
        value = re.sub(r"[^A-Za-z0-9.+-]+", "-", value).strip("-") or "none"
        parts.append(f"{key.split('.')[-1]}-{value}")
    return "_".join(parts) or "base"


def sweep(
    config_path: str, axes: list[str], *, out_dir: str | None = None, report: bool = True
) -> list[Path]:
    """Run the grid; returns the run folders in grid order."""
    combos = grid(axes)
    varying = [i for i in range(len(axes)) if len(split_values(axes[i].split("=", 1)[1])) > 1]
    base = load_config(config_path)
    root = Path(out_dir or base.training.get("output_dir", "runs/sweep"))
    runs = []
    for combo in combos:  # check every config before the first run
        folder = root / run_name([combo[i] for i in varying])
        load_config(config_path, [*combo, f"training.output_dir={folder}"])
        runs.append((combo, folder))
    if len({f for _, f in runs}) != len(runs):
        raise DpolabError("two runs of the sweep would share a folder; give distinct values")
    for n, (combo, folder) in enumerate(runs, start=1):
        if (folder / "summary.json").exists():
            log.info("sweep %d/%d: %s already finished, skipped", n, len(runs), folder)
            continue
        log.info("sweep %d/%d: %s (%s)", n, len(runs), folder, " ".join(combo))
        command = [
            sys.executable,
            "-m",
            "dpolab",
            "train",
            config_path,
            *combo,
            f"training.output_dir={folder}",
        ]
        finished = subprocess.run(command)
        if finished.returncode != 0:
            raise DpolabError(
                f"sweep run {folder} failed (exit code {finished.returncode}); finished runs are kept, "
                f"re-run the same command to continue"
            )
    folders = [f for _, f in runs]
    if report:
        from dpolab.report import write_report

        path = write_report([str(f) for f in folders], out=str(root / "report.html"))
        log.info("sweep report: %s", path)
    return folders
