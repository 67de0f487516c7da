"""A training run killed with SIGKILL at random moments (seeded), resumed each time, ends with the
metrics, summary and final weights of an uninterrupted run; no kill leaves a checkpoint-N folder
that is not whole."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch
from safetensors.torch import load_file

from dpolab.training import config_from_dict, run
from dpolab.training.checkpoints import checkpoint_problem, last_complete_checkpoint

ROW = {"prompt": "Question 1:", "chosen": " yes yes", "rejected": " no no"}
KILLS = 4  # random moments, after one kill during a checkpoint's save


def values(out, model_dir, train, *, resume):
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train), "max_length": 32, "max_prompt_length": 16},
        # precomputed: the reference cache is written (atomically) during the first attempt
        "reference": {"precompute": True, "cache_dir": str(out.parent / f"{out.name}-cache")},
        "training": {
            "output_dir": str(out),
            "max_steps": 8,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 1,
            "save_total_limit": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 5e-3,
            "seed": 5,
            "disable_tqdm": True,
            "resume_from_checkpoint": resume,
        },
    }


def resumes_at(out) -> int:
    """The step the next attempt resumes at (0: it starts afresh)."""
    last = last_complete_checkpoint(out, quiet=True)
    return int(last.rsplit("-", 1)[1]) if last else 0


def attempt(out, model_dir, train):
    """One `dpolab train` of the run: resumed from its last complete checkpoint if it has one."""
    resume = resumes_at(out) > 0
    return lambda: run(config_from_dict(values(out, model_dir, train, resume=resume)))


def after(checkpoint, now, extra):
    """A `when` for `run_and_kill`: true `extra` seconds after `checkpoint` exists (or after the
    start, if `now`)."""
    since = [time.monotonic()] if now else []

    def when():
        if not since and checkpoint.is_dir():
            since.append(time.monotonic())
        return bool(since) and time.monotonic() >= since[0] + extra

    return when


def assert_nothing_half_written(out):
    """After a kill: every checkpoint-N folder is whole, every metrics line but a torn last one reads."""
    for folder in out.glob("checkpoint-*"):
        assert checkpoint_problem(folder) is None, folder
    text = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
    lines = text.split("\n")
    for line in lines[:-1]:
        json.loads(line)


@pytest.mark.slow
def test_killed_at_random_moments_ends_as_the_uninterrupted_run(tmp_path, model_dir, killer):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({**ROW, "prompt": f"Question {i}:"}) + "\n" for i in range(16)))
    whole, out = tmp_path / "whole", tmp_path / "killed"
    run(config_from_dict(values(whole, model_dir, train, resume=False)))

    # a kill while a checkpoint is being saved: its partial folder is there, no checkpoint-N half
    during_save = killer(attempt(out, model_dir, train), when=lambda: any(out.glob(".partial-checkpoint-*")))
    assert during_save and any(out.glob(".partial-checkpoint-*"))
    assert_nothing_half_written(out)
    # random moments, found by the run's progress rather than by the clock (a busy machine runs
    # slower): once checkpoint-k is there (k drawn from the resumed step to 3 steps later; the
    # resumed one is there from the start), a random fraction of two steps later: in the start-up,
    # a step, a save, or the final save
    step_time = json.loads((whole / "summary.json").read_text())["train_runtime"] / 8
    rng, moments = random.Random(20), []
    for _ in range(KILLS):
        k, extra = min(resumes_at(out) + rng.randint(0, 3), 8), rng.uniform(0, 2 * step_time)
        moments.append((k, round(extra, 3)))
        killer(attempt(out, model_dir, train), when=after(out / f"checkpoint-{k}", k == 0, extra))
        assert_nothing_half_written(out)
    attempt(out, model_dir, train)()  # the last one runs to its end

    got, expected = (
        [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for folder in (out, whole)
    )
    assert [x["step"] for x in got] == [x["step"] for x in expected] == list(range(1, 9))
    for a, b in zip(expected, got):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key, moments)
    final, reference = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert final.keys() == reference.keys()
    for name in final:
        torch.testing.assert_close(final[name], reference[name], rtol=1e-5, atol=1e-6)
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (out, whole)]
    assert summaries[0]["train_loss"] == pytest.approx(summaries[1]["train_loss"], rel=1e-5)
    assert summaries[0]["train_loss_from_step"] == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-7", "checkpoint-8"]
    assert not any(out.glob(".partial-*"))
