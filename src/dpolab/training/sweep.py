"""`dpolab sweep`: the papers' ablations (β sweeps, layer choices) as one command.

A grid of overrides, one training run per process, each run named by the values that vary and
written to its own folder. A run counts as finished, and is skipped, only when its folder holds a
`summary.json` and a `config.yaml` (what `dpolab train` writes: the resolved config) equal to the
config the sweep would run (`training.output_dir` aside), so an interrupted sweep continues where it
stopped. A folder that holds a run made with another config (or files that are not a run) stops the
sweep before anything runs: the folder name alone does not say which fixed values made it, and
someone's results are never overwritten. Every config of the grid is checked before the first run
starts.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from dpolab.config.parse import parse_override
from dpolab.config.schema import RunConfig
from dpolab.errors import DpolabError
from dpolab.training.config import load_config

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
    parsed, keys = [], []
    for axis in axes:
        if "=" not in axis:
            raise DpolabError(f"sweep axis {axis!r} is not of the form section.key=v1,v2")
        key, values = axis.split("=", 1)
        parse_override(f"{key}=x")  # the key must name a section and a key
        if key in keys:
            raise DpolabError(f"sweep: {key} is given twice; list its values once, {key}=v1,v2")
        keys.append(key)
        values = split_values(values)
        canonical = [_canonical(v) for v in values]
        if len(set(canonical)) != len(canonical):
            raise DpolabError(f"sweep: {key} lists the same value twice ({', '.join(values)})")
        parsed.append([f"{key}={v}" for v in values])
    return [list(combo) for combo in itertools.product(*parsed)]


def _canonical(value: str) -> str:
    """A value as the config reads it (YAML), written one way: `0.10` and `0.1` are both `0.1`."""
    try:
        return json.dumps(yaml.safe_load(value), sort_keys=True)
    except (yaml.YAMLError, TypeError, ValueError):
        return value


def run_name(overrides: list[str]) -> str:
    """A folder name from the values that vary, as the config reads them: `loss.beta=0.10
    loss.method=dpo` -> `beta-0.1_method-dpo`; a nested key keeps its path below the section
    (`loss.intermediate.layers=[11,22]` -> `intermediate_layers-11-22`)."""
    parts = []
    for override in overrides:
        key, value = override.split("=", 1)
        value = re.sub(r"[^A-Za-z0-9.+-]+", "-", _canonical(value)).strip("-") or "none"
        parts.append(f"{key.split('.', 1)[-1].replace('.', '_')}-{value}")
    return "_".join(parts) or "base"


def _comparable(values: Any) -> Any:
    """A config as `config.yaml` holds it (YAML types), without `training.output_dir`: the folder is
    the folder, however its path was written."""
    values = yaml.safe_load(yaml.safe_dump(values, sort_keys=False))
    if isinstance(values, dict) and isinstance(values.get("training"), dict):
        values["training"].pop("output_dir", None)
    return values


def config_differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two configs differ, as `key: SAVED there, WANTED here`."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in [*wanted, *(k for k in saved if k not in wanted)]:
            missing = "(not set)"
            out += config_differences(saved.get(key, missing), wanted.get(key, missing), f"{prefix}{key}.")
        return out
    if saved == wanted:
        return []
    return [f"{prefix.rstrip('.')}: {saved!r} there, {wanted!r} here"]


def run_state(folder: Path, config: RunConfig) -> tuple[str, str | None]:
    """What the folder of a run of the sweep holds: `("new", None)` (nothing), `("finished", None)`
    (summary.json and the same config), `("unfinished", None)` (the same config, no summary.json:
    it runs again), or `("other", why)` (another config, or files that are not a run)."""
    saved_path = folder / "config.yaml"
    if not saved_path.exists():
        if folder.is_dir() and any(folder.iterdir()):
            return "other", f"{folder} holds files but no config.yaml, so it is not a run of this sweep"
        return "new", None
    try:
        saved = _comparable(yaml.safe_load(saved_path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return "other", f"{saved_path} cannot be read ({err}), so what made that run is not known"
    differences = config_differences(saved, _comparable(config.to_dict()))
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        return "other", f"{folder} holds a run made with another config ({shown})"
    return ("finished" if (folder / "summary.json").exists() else "unfinished"), None


def sweep(
    config_path: str,
    axes: list[str],
    *,
    out_dir: str | None = None,
    report: bool = True,
    in_process: bool = False,
) -> list[Path]:
    """Run the grid; returns the run folders in grid order. Each run is a `dpolab train` process,
    or with `in_process` a call in this one (what `dpolab demo` does: no start-up per run)."""
    combos = grid(axes)
    varying = [i for i in range(len(axes)) if len(split_values(axes[i].split("=", 1)[1])) > 1]
    base = load_config(config_path)
    root = Path(out_dir or base.training.get("output_dir", "runs/sweep"))
    runs = []
    for combo in combos:  # check every config before the first run
        folder = root / run_name([combo[i] for i in varying])
        runs.append((combo, folder, load_config(config_path, [*combo, f"training.output_dir={folder}"])))
    if len({f for _, f, _ in runs}) != len(runs):
        raise DpolabError("two runs of the sweep would share a folder; give distinct values")
    states = [run_state(folder, config) for _, folder, config in runs]
    conflicts = [why for state, why in states if state == "other"]
    if conflicts:  # before any run: a sweep never overwrites a run it did not make
        raise DpolabError(
            "\n".join(conflicts) + "\nnothing was run and those folders are left as they are; sweep into "
            "another folder (--out DIR), or move those runs away"
        )
    for n, ((combo, folder, _), (state, _)) in enumerate(zip(runs, states), start=1):
        if state == "finished":
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
        if in_process:
            from dpolab.cli import main

            code = main(command[3:])
        else:
            code = subprocess.run(command).returncode
        if code != 0:
            raise DpolabError(
                f"sweep run {folder} failed (exit code {code}); finished runs are kept, "
                f"re-run the same command to continue"
            )
    folders = [f for _, f, _ in runs]
    if report:
        from dpolab.report import write_report

        path = write_report([str(f) for f in folders], out=str(root / "report.html"))
        log.info("sweep report: %s", path)
    return folders
