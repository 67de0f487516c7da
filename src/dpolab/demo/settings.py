"""What `dpolab demo` runs: the task, the model, and each training run's config, full or quick.

The full values come from trial runs on this task on a 2-core machine: SFT (one pass over 22,400
problems) reaches 50–75 % held-out greedy accuracy depending on the seed, and 100 preference
steps per method are long enough for DPO's failure mode on low-edit pairs to show (DPO lowered
the chosen solution's log-prob by 1–1.7 nats and cost 16–22 points of accuracy on three seeds;
DPOP kept it within +0.1 nat and lost 0–3 points). `--quick` keeps every stage but shrinks each so
that the test suite can run it; at that size the model barely learns the task and shows nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dpolab.demo.model import ModelSize
from dpolab.demo.task import SplitSizes, TaskConfig


@dataclass(frozen=True)
class PreferenceRun:
    """One preference run of the demo: its name, pairs (`low` or `high` edit distance) and loss."""

    name: str
    pairs: str
    loss: dict[str, Any]


@dataclass(frozen=True)
class DemoSettings:
    task: TaskConfig = field(default_factory=TaskConfig)
    # SFT sees each training problem once (700 steps × 32); the preference runs use the first 3,200
    sizes: SplitSizes = field(default_factory=lambda: SplitSizes(train=22400, eval=200, test=200))
    model: ModelSize = field(
        default_factory=lambda: ModelSize(hidden_size=128, num_layers=6, intermediate_size=352)
    )
    sft: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 1e-3,
            "max_steps": 700,
            "per_device_train_batch_size": 32,
            "adam_beta2": 0.98,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.05,
            "weight_decay": 0.0,
            "logging_steps": 25,
            "eval_steps": 175,
        }
    )
    preference: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 3e-5,
            "max_steps": 100,
            "per_device_train_batch_size": 32,
            "logging_steps": 10,
            "eval_steps": 50,
            "lr_scheduler_type": "constant_with_warmup",
            "warmup_steps": 0.1,
        }
    )
    preference_pairs: int = 3200  # data.limit of the preference runs: max_steps × batch, each pair once
    runs: tuple[PreferenceRun, ...] = (
        PreferenceRun("dpo-low", "low", {"method": "dpo", "beta": 0.3}),
        PreferenceRun("dpop-low", "low", {"method": "dpop", "beta": 0.3, "dpop_lambda": 50.0}),
        PreferenceRun(
            "idpo-low",
            "low",
            {"method": "dpo", "beta": 0.3, "intermediate": {"layers": [3, 5], "gamma": 0.9}},
        ),
        PreferenceRun("dpo-high", "high", {"method": "dpo", "beta": 0.3}),
        PreferenceRun("dpop-high", "high", {"method": "dpop", "beta": 0.3, "dpop_lambda": 50.0}),
    )
    eval_pairs: int = 200  # eval pairs for the analyses (rewards/accuracies, layer curve, tokens)
    test_problems: int = 200  # held-out problems for exact-match accuracy
    generation_batch: int = 50
    max_new_tokens: int = 40
    seed: int = 0

    @property
    def beta(self) -> float:
        """β of the layer-wise DPO likelihood (the runs' β)."""
        return float(self.runs[0].loss["beta"])


FULL = DemoSettings()

QUICK = replace(
    FULL,
    sizes=SplitSizes(train=640, eval=32, test=32),
    model=ModelSize(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=176),
    sft={
        **FULL.sft,
        "learning_rate": 2e-3,
        "max_steps": 40,
        "per_device_train_batch_size": 16,
        "logging_steps": 10,
        "eval_steps": 20,
    },
    preference={
        **FULL.preference,
        "learning_rate": 1e-4,
        "max_steps": 8,
        "per_device_train_batch_size": 8,
        "logging_steps": 4,
        "eval_steps": 4,
    },
    preference_pairs=64,
    runs=tuple(
        replace(r, loss={**r.loss, "intermediate": {**r.loss["intermediate"], "layers": [2, 3]}})
        if "intermediate" in r.loss
        else r
        for r in FULL.runs
    ),
    eval_pairs=32,
    test_problems=32,
    generation_batch=32,
)


def settings_for(*, quick: bool, seed: int) -> DemoSettings:
    return replace(QUICK if quick else FULL, seed=seed)
