"""Trainer callbacks: metrics.jsonl, a progress bar with the live loss and accuracy, and a stop at
the first non-finite loss before it can overwrite a good checkpoint."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from dpolab.data.io import write_text_atomic
from dpolab.errors import DpolabError
from dpolab.storage import append_text

log = logging.getLogger("dpolab")

# Logged by the Trainer at the end of training; they go to summary.json, not metrics.jsonl.
_SUMMARY_KEYS = ("train_runtime", "train_loss", "total_flos")


def split_of(logs: dict) -> str | None:
    if "eval_loss" in logs:
        return "eval"
    if "loss" in logs:
        return "train"
    return None


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def lines_up_to(text: str, step: int, *, source: str = "metrics.jsonl") -> tuple[list[str], bool]:
    """The lines of a metrics.jsonl text whose `step` is at most `step`, and whether a torn last
    line (a process killed while writing it) was dropped. Any other unreadable line is an error."""
    lines = [line for line in text.splitlines() if line.strip()]
    kept, torn = [], False
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                torn = True
                continue
            raise DpolabError(
                f"{source}, line {number}: not valid JSON; remove the line or the file to resume"
            ) from None
        if record["step"] <= step:
            kept.append(line)
    return kept, torn


class MetricsJsonlCallback(TrainerCallback):
    """Appends one JSON object per logging or evaluation step to OUTPUT_DIR/metrics.jsonl, with
    `step` and `split` (train / eval); eval keys lose their `eval_` prefix. On resume, lines from
    steps after the checkpoint (written by the interrupted run), and a last line torn by the kill,
    are dropped first (the file rewritten atomically). A line is appended whole or not at all: on a
    full disk the run stops with one line, and the file keeps the lines before it."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "metrics.jsonl"

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept, torn = lines_up_to(
            self.path.read_text(encoding="utf-8"), state.global_step, source=str(self.path)
        )
        if torn:
            log.warning("%s: dropped its last line, cut off when the run was killed", self.path)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        split = split_of(logs)
        if split is None:
            return
        record = {"step": state.global_step, "split": split, "epoch": state.epoch}
        for key, value in logs.items():
            if key == "epoch" or key in _SUMMARY_KEYS:
                continue
            name = key[len("eval_") :] if split == "eval" and key.startswith("eval_") else key
            record[name] = _clean(value)
        append_text(
            self.path,
            json.dumps(record) + "\n",
            what=f"the line of step {state.global_step}",
            then="the lines before it are kept: free some space, then resume with "
            "training.resume_from_checkpoint=true",
        )


class LiveProgressCallback(ProgressCallback):
    """The Trainer's progress bar, showing the live loss and rewards/accuracies instead of printing
    every log dict; evaluations are printed as one line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        split = split_of(logs)
        if split == "train":
            postfix = {"loss": f"{logs['loss']:.4f}"}
            if "rewards/accuracies" in logs:
                postfix["acc"] = f"{logs['rewards/accuracies']:.3f}"
            self.training_bar.set_postfix(postfix, refresh=False)
        elif split == "eval":
            shown = [f"loss {logs['eval_loss']:.4f}"]
            if "eval_rewards/accuracies" in logs:
                shown.append(f"rewards/accuracies {logs['eval_rewards/accuracies']:.3f}")
            self.training_bar.write(f"step {state.global_step} eval: " + ", ".join(shown))


class NonFiniteLossCallback(TrainerCallback):
    """Stops training at the first logging, evaluation or saving point after the loss went
    non-finite, and cancels that save and evaluation, so that every checkpoint on disk is from
    before the bad step. `first_bad_step()` reads the trainer's on-device record (one host
    synchronisation, only at those points).

    The Trainer decides to log, evaluate and save in its `DefaultFlowCallback`, which runs before
    any callback added later: at `on_step_end` for the `steps` strategies, at `on_epoch_end` for
    `epoch`; it acts on `control` right after each event. Both are checked here, and once a bad
    step is known no later event may turn a save back on."""

    def __init__(self, first_bad_step):
        self.first_bad_step = first_bad_step
        self.bad_step: int | None = None

    def _stop_if_bad(self, control) -> None:
        if self.bad_step is None:
            step = int(self.first_bad_step())
            if step < 0:
                return
            self.bad_step = step
        control.should_save = False
        control.should_evaluate = False
        control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if (
            control.should_log
            or control.should_save
            or control.should_evaluate
            or state.global_step >= state.max_steps
        ):
            self._stop_if_bad(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._stop_if_bad(control)
