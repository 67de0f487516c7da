"""Trainer callbacks: metrics.jsonl, a progress bar with the live loss and accuracy, and a stop at
the first non-finite loss before it can overwrite a good checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

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


class MetricsJsonlCallback(TrainerCallback):
    """Appends one JSON object per logging or evaluation step to OUTPUT_DIR/metrics.jsonl, with
    `step` and `split` (train / eval); eval keys lose their `eval_` prefix. On resume, lines from
    steps after the checkpoint (written by the interrupted run) are dropped first."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "metrics.jsonl"

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= state.global_step
        ]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


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
    """Stops training at the first logging or saving step after the loss went non-finite, and
    cancels that save, so the last checkpoint on disk is a good one. `first_bad_step()` reads the
    trainer's on-device record (one host synchronisation, only at those steps)."""

    def __init__(self, first_bad_step):
        self.first_bad_step = first_bad_step
        self.bad_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if not (
            control.should_log
            or control.should_save
            or control.should_evaluate
            or state.global_step >= state.max_steps
        ):
            return
        step = int(self.first_bad_step())
        if step >= 0:
            self.bad_step = step
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True
