"""What `dpolab demo` runs: the task, the model, and each training run's config, full or quick,
on the tiny model the demo builds (FULL, QUICK) or on a pretrained one (`--model`: REAL, REAL_QUICK).

The full values come from trial runs on this task on a 2-core machine: SFT (one pass over 22,400
problems) reaches 50–75 % held-out greedy accuracy depending on the seed, and 100 preference
steps per method are long enough for DPO's failure mode on low-edit pairs to show (DPO lowered
the chosen solution's log-prob by 1–1.7 nats and cost 16–22 points of accuracy on three seeds;
DPOP kept it within +0.1 nat and lost 0–3 points). `--quick` keeps every stage but shrinks each so
that the test suite can run it; at that size the model barely learns the task and shows nothing.

The practitioner study's two findings (forgetting against β, early stopping at the peak of eval
rewards/accuracies) reuse the first run (DPO on low-edit pairs, β 0.3): it is evaluated and saved
every `checkpoint_every` steps, and `dpolab sweep` trains it again at the other β of `betas`.

On a pretrained model (REAL: sized from SmolLM2-135M-Instruct's speed, about 5 s per step of 4
pairs on 2 CPU cores, for the whole demo to stay within 45 minutes there; REAL_QUICK within 10)
the pairs go through the model's chat template, SFT is a short full fine-tuning, and the preference
runs train LoRA adapters with the Intermediate DPO paper's Table-1 settings (docs/notes.md), their
intermediate layers at the paper's depths (11 and 22 of 32 layers: 10 and 21 of SmolLM2's 30).
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
    max_length: int = 128  # data.max_length of every run (prompt + completion tokens)
    max_prompt_length: int = 80
    # the practitioner study: DPO (runs[0]) at each β, its forgetting measured on held-out text;
    # runs[0] evaluated and saved every `checkpoint_every` steps, each checkpoint answering the
    # first `checkpoint_problems` test problems (win rate against SFT, exact-answer judge)
    betas: tuple[float, ...] = (0.1, 0.3, 0.5)
    checkpoint_every: int = 20
    checkpoint_problems: int = 50
    forgetting_tokens: int = 4096  # of held-out text (the test problems' texts; on a real model, docstrings)
    forgetting_context: int = 128
    # a pretrained model (--model): pairs as conversations through its chat template, LoRA adapters
    # for the preference runs, intermediate layers at these fractions of the model's depth
    chat: bool = False
    preference_lora: dict[str, Any] | None = None
    layer_fractions: tuple[float, ...] | None = None

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
    checkpoint_every=2,  # 4 checkpoints of 8 steps: more than the 2 a run keeps by default
    checkpoint_problems=16,
    forgetting_tokens=1024,
)


# The Intermediate DPO paper's Table 1 (docs/notes.md): LoRA r 16, α 16, dropout 0.05 on every projection
TABLE_1_LORA = {
    "r": 16,
    "alpha": 16,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
PAPER_LAYERS = (11 / 32, 22 / 32)  # the Intermediate DPO paper's K = {11, 22} of Llama-2-7B's 32 layers


def _real_runs(layers: list[int]) -> tuple[PreferenceRun, ...]:
    return (
        PreferenceRun("dpo-low", "low", {"method": "dpo", "beta": 0.3}),
        PreferenceRun("dpop-low", "low", {"method": "dpop", "beta": 0.3, "dpop_lambda": 50.0}),
        PreferenceRun(
            "idpo-low",
            "low",
            {"method": "dpo", "beta": 0.3, "intermediate": {"layers": layers, "gamma": 0.9}},
        ),
    )


REAL = replace(
    FULL,
    # SFT sees 384 problems once (48 steps × 8); the preference runs their first 96 (24 steps × 4)
    sizes=SplitSizes(train=384, eval=32, test=48),
    sft={
        **FULL.sft,
        "learning_rate": 3e-5,
        "max_steps": 48,
        "per_device_train_batch_size": 8,
        "adam_beta2": 0.999,
        "warmup_steps": 0.1,
        "logging_steps": 4,
        "eval_steps": 24,
    },
    preference={
        **FULL.preference,
        "learning_rate": 5e-4,  # Table 1's, for LoRA
        "max_steps": 24,
        "per_device_train_batch_size": 4,
        "logging_steps": 2,
        "eval_steps": 24,
    },
    preference_pairs=96,
    runs=_real_runs([]),  # the layers: PAPER_LAYERS of the model's depth, once it is known
    eval_pairs=32,
    test_problems=48,
    generation_batch=48,
    max_new_tokens=48,
    max_length=256,
    max_prompt_length=160,
    checkpoint_every=4,
    checkpoint_problems=16,
    forgetting_tokens=2048,
    forgetting_context=512,
    chat=True,
    preference_lora=TABLE_1_LORA,
    layer_fractions=PAPER_LAYERS,
)

REAL_QUICK = replace(
    REAL,
    sizes=SplitSizes(train=32, eval=8, test=8),
    sft={**REAL.sft, "max_steps": 8, "per_device_train_batch_size": 4, "logging_steps": 2, "eval_steps": 8},
    preference={
        **REAL.preference,
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "eval_steps": 4,
    },
    preference_pairs=8,
    eval_pairs=8,
    test_problems=8,
    generation_batch=8,
    checkpoint_every=2,
    checkpoint_problems=4,
    forgetting_tokens=512,
    forgetting_context=256,
)


def paper_layers(num_layers: int, fractions: tuple[float, ...] = PAPER_LAYERS) -> list[int]:
    """The intermediate layers at the paper's depths for a model of `num_layers` (30 -> [10, 21]),
    each inside the model (1 .. L − 1) and distinct."""
    return sorted({min(max(1, round(num_layers * f)), num_layers - 1) for f in fractions})


def settings_for(*, quick: bool, seed: int, real: bool = False) -> DemoSettings:
    if real:
        return replace(REAL_QUICK if quick else REAL, seed=seed)
    return replace(QUICK if quick else FULL, seed=seed)


def with_model_layers(settings: DemoSettings, num_layers: int) -> DemoSettings:
    """The settings with intermediate DPO's layers at `layer_fractions` of the model's depth (when
    they are given as fractions: a pretrained model's depth is known once it is loaded)."""
    if settings.layer_fractions is None:
        return settings
    layers = paper_layers(num_layers, settings.layer_fractions)
    runs = tuple(
        replace(r, loss={**r.loss, "intermediate": {**r.loss["intermediate"], "layers": layers}})
        if "intermediate" in r.loss
        else r
        for r in settings.runs
    )
    return replace(settings, runs=runs)
