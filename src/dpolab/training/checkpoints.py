"""Checkpoints of a run: which one a resume starts from, and which came before a given step."""

from __future__ import annotations

import json
from pathlib import Path

from dpolab.config.schema import TRAINING_DEFAULTS, RunConfig
from dpolab.errors import DpolabError


def resume_target(config: RunConfig) -> str | None:
    """The checkpoint folder `training.resume_from_checkpoint` names: a folder, or for `true`
    (or `last`) the last `checkpoint-N` in `training.output_dir`, as the Trainer would pick it;
    checked before anything loads."""
    from transformers.trainer_utils import get_last_checkpoint

    value = config.training.get("resume_from_checkpoint")
    if value in (None, False, ""):
        return None
    if value is True or value == "true" or value == "last":
        output_dir = config.training.get("output_dir", TRAINING_DEFAULTS["output_dir"])
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise DpolabError(
                f"training.resume_from_checkpoint: {str(value).lower()}, but {output_dir} holds no checkpoint-N folder to "
                f"resume from; name a checkpoint folder, or remove the option to start afresh"
            )
        return last
    if not Path(value).is_dir():
        raise DpolabError(f"training.resume_from_checkpoint: {value} is not a checkpoint folder")
    return value


def resumed_step(checkpoint: str | None) -> int:
    """The step a run resumed from `checkpoint` starts after (0: a fresh start, or a checkpoint
    without trainer_state.json, from which the Trainer takes the weights only)."""
    state = Path(checkpoint) / "trainer_state.json" if checkpoint else None
    if state is None or not state.is_file():
        return 0
    return int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0))


def last_checkpoint_before(output_dir: Path, step: int) -> Path | None:
    """The highest `checkpoint-N` folder with N < `step`: saved before that step's update (any
    later one, e.g. from an earlier run in the same folder, holds weights of after it)."""
    steps = {}
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit() and int(suffix) < step:
            steps[int(suffix)] = path
    return steps[max(steps)] if steps else None
