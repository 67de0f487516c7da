"""The run config's sections as typed dataclasses: every key a user may write, with its default.

`dpolab.config.parse` reads YAML into them (unknown keys and wrong types fail there); the
generic rules live in `dpolab.config.validate`, and the rules of one stage (the loss section of
preference training, say) with that stage (`dpolab.training.stages`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoraSettings:
    r: int = 16  # the adapters' rank
    alpha: int = 16  # the scaling α (the update is scaled by α / r)
    dropout: float = 0.05  # dropout on the adapters' input
    # "all-linear" (peft: every linear layer but the output head) or a list of module names
    target_modules: list[str] | str = "all-linear"


@dataclass
class ModelSection:
    name_or_path: str = ""  # local path or hub id (required)
    ref_name_or_path: str | None = None  # default: the policy's starting weights
    tokenizer_name_or_path: str | None = None  # default: name_or_path
    dtype: str = "float32"  # float32 | bfloat16
    trust_remote_code: bool = False  # run the model's own code from the hub (transformers' flag)
    # auto | sdpa | eager | flex_attention: auto takes the model's default, else sdpa, else eager,
    # the first under which a pair fits one row (docs/models.md); a model that cannot gets separate
    # rows either way. flex_attention (FlexAttention, a fused kernel with a block mask; trains on a
    # GPU only) is never picked by auto: name it (docs/performance.md)
    attn_implementation: str = "auto"
    # mixture-of-experts models: the weight of the router's load-balancing loss added to the loss,
    # logged as aux_loss (default: the model config's router_aux_loss_coef; 0 turns it off)
    router_aux_loss_coef: float | None = None
    lora: LoraSettings | None = None


@dataclass
class DataSection:
    # a .json/.jsonl/.parquet file or hub dataset id, or a list of {path, split, weight, builder}
    train: str | list[dict[str, Any]] | None = None
    split: str | None = None  # split of a hub dataset for `train` (default "train")
    eval: str | list[dict[str, Any]] | None = None  # evaluation pairs, as `train` (a file, hub id or list)
    eval_split: str | None = None  # split of a hub dataset for `eval` (default "test")
    # hold out this fraction (<1) or number of the distinct training pairs for eval, by source row:
    # a row a weighted mixture repeats is wholly in train or in eval (once) (dpolab.data.prepare.hold_out)
    eval_size: float | int | None = None
    mix_strategy: str = "sum"  # weighted mixtures: sum | interleave_under | interleave_over
    builder: str | None = None  # metamath | arc | hellaswag: build pairs from `source`
    source: str | None = None  # raw dataset for `builder`
    format: str = "auto"  # auto | standard | conversational | implicit
    # the row's columns under other names, dpolab field -> column: {prompt: question, chosen: good,
    # rejected: bad}; also messages (default: a `conversations` or `messages` column), system
    # (default: a `system` column; null: none), query (appended to the prompt, LLaMA-Factory's `input`)
    columns: dict[str, str | None] | None = None
    max_length: int | None = 1024  # prompt + completion tokens
    max_prompt_length: int | None = 512  # the prompt keeps its last tokens
    on_bad_rows: str = "error"  # error | skip
    # padding-free packing: several pairs (SFT: sequences) share a row, up to this many tokens, each
    # masked from the others with positions restarting; batches then group pairs of similar length
    # (training.train_sampling_strategy group_by_length unless set). null: one pair a row
    # (docs/performance.md)
    pack_tokens: int | None = None
    limit: int | None = None  # train on the first N usable pairs only (of the mixture, for several sources)
    num_proc: int | None = None  # processes preparing the data (default: the CPUs available, at most 8)
    cache_dir: str | None = (
        None  # prepared pairs (default: $DPOLAB_CACHE/data or ~/.cache/dpolab/data; docs/data.md)
    )


@dataclass
class IntermediateSettings:
    """Intermediate DPO (Kojima 2024): the loss also at these layers, through the final norm and the
    shared head (the logit lens), mixed with the final layer's as γ·L_final + (1 − γ)·mean_k L_k."""

    layers: list[int] = field(default_factory=list)  # k = hidden_states[k], the output of the k-th block
    gamma: float = 0.9  # γ: the final layer's weight, (1 − γ) the intermediate layers' mean
    final_norm: bool = True  # intermediate layers pass through the model's final norm


@dataclass
class LossSection:
    """The loss (docs/methods.md lists every method, its formula, paper and keys). A key that the
    chosen method does not use is refused at start-up, so every default below is only read by the
    methods that take it."""

    # a name of dpolab.objectives.registry (dpo = sigmoid, ipo, dpop, simpo, orpo, ...), or a list
    # of them: the loss is then their weighted sum (TRL's loss_type list, e.g. MPO)
    method: str | list[str] = "dpo"
    weights: list[float] | None = None  # one per method in the list (default: 1 each); TRL's loss_weights
    beta: float = 0.1  # β; for orpo the odds-ratio weight λ (as TRL and LLaMA-Factory name it)
    dpop_lambda: float = 50.0  # dpop: the penalty weight λ
    label_smoothing: float = 0.0  # ε ∈ [0, 0.5): dpo (cDPO), robust, exo_pair (> 0), aot*, simpo, cpo
    discopop_tau: float = 0.05  # discopop: τ
    f_divergence: str = "reverse_kl"  # f-DPO: reverse_kl | forward_kl | js_divergence | alpha_divergence
    f_alpha: float = 0.5  # α of f_divergence alpha_divergence (TRL's f_alpha_divergence_coef)
    ld_alpha: float | None = None  # LD-DPO: weight in [0, 1] of the tokens past the pair's shared length
    use_weighting: bool = False  # WPO: weigh each pair by the policy's per-token probability of both
    simpo_gamma: float = 0.5  # simpo: the target reward margin γ (TRL's simpo_gamma)
    cpo_alpha: float = 1.0  # cpo: the weight of the NLL term (TRL's cpo_alpha)
    intermediate: IntermediateSettings = field(default_factory=IntermediateSettings)


@dataclass
class ReferenceSection:
    precompute: bool = False  # compute reference log-probs once, cache them, free the reference model
    cache_dir: str | None = None  # default: $DPOLAB_CACHE or ~/.cache/dpolab
    batch_size: int | None = None  # default: per_device_eval_batch_size


@dataclass
class EarlyStoppingSection:
    patience: int | None = None  # evaluations without a new peak before stopping
    # an eval metric the run logs (loss, rewards/margins, layers/8/rewards/accuracies, ...); the
    # losses, dpop/penalty and nll_loss are better lower, the others higher. `dpolab sft` logs no rewards: it
    # watches eval loss (lower is better) unless this names logps/per_token
    metric: str = "rewards/accuracies"
    threshold: float = 0.0  # the least improvement that counts as a new peak


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    reference: ReferenceSection = field(default_factory=ReferenceSection)
    training: dict[str, Any] = field(default_factory=dict)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    # keys the user wrote (dotted), for conflict checks: a default is not a choice
    explicit: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("explicit")
        return out


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name != "explicit"}

# Keys whose value must be one of a fixed set (the loss method is checked against the registry).
CHOICES = {
    "loss.f_divergence": ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"),
    "model.dtype": ("float32", "bfloat16"),
    "model.attn_implementation": ("auto", "sdpa", "eager", "flex_attention"),
    "data.format": ("auto", "standard", "conversational", "implicit"),
    "data.on_bad_rows": ("error", "skip"),
    "data.builder": (None, "metamath", "arc", "hellaswag"),
    "data.mix_strategy": ("sum", "interleave_under", "interleave_over"),
}

# Keys that moved, old spelling -> new: a config that still uses the old one stops with the new.
MOVED_KEYS = {
    "loss.intermediate_layers": "loss.intermediate.layers",
    "loss.gamma": "loss.intermediate.gamma",
    "loss.final_norm": "loss.intermediate.final_norm",
}

# Defaults dpolab gives TrainingArguments unless the config says otherwise (each stage adds its
# own, the learning rate: `dpolab.training.stages`). The run states them in its log at start.
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/dpolab",
    "logging_steps": 10,  # as TRL's configs (TrainingArguments: 500)
    # checkpoints as TrainingArguments and TRL save them (every 500 steps and at the last step), so
    # that `training.resume_from_checkpoint=true` finds one; only the last 2 are kept (with early
    # stopping, the best one too), so that a long run does not fill the disk
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
    "logging_nan_inf_filter": False,  # a non-finite loss must be seen, not filtered out
}
# TrainingArguments fields dpolab sets itself.
TRAINING_RESERVED = {
    "remove_unused_columns": "dpolab keeps its own columns",
    "label_names": "dpolab computes its own loss",
}
