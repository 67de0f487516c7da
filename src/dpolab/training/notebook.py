"""`PreferenceTrainer`: a run built from objects, as a notebook builds TRL's `DPOTrainer`.

    PreferenceTrainer(model, ref_model, args, train_dataset, eval_dataset, processing_class, peft_config)
    ├── run_config()        the objects' settings as a dpolab config; the datasets written to
    │                       OUTPUT_DIR/data/*.jsonl, so that config.yaml names what the run read
    ├── prepare(given=...)  (dpolab.training.run) the given model, reference and tokenizer used
    │                       instead of loading what the config names
    └── build_trainer()     the DpolabTrainer with dpolab's callbacks
    train()                 train_and_save() and summarise(): a `RunResult`

It is the run of `dpolab train`, step for step: only where the models come from differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpolab.config.parse import explicit_values, read_config
from dpolab.config.schema import TRAINING_DEFAULTS, RunConfig
from dpolab.errors import DpolabError
from dpolab.logs import setup_logging
from dpolab.training.config import config_from_dict, resolve_stage
from dpolab.training.stages import PREFERENCE, Stage

# The LoraConfig fields dpolab's `model.lora` section carries, by their name there.
_LORA_FIELDS = {
    "r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target_modules",
}
# LoraConfig fields whose value does not change what dpolab trains.
_LORA_IGNORED = {"task_type", "peft_type", "base_model_name_or_path", "revision", "inference_mode"}


@dataclass
class RunResult:
    """What a run gives back: `summary` (as OUTPUT_DIR/summary.json), `metrics` (the rows of
    OUTPUT_DIR/metrics.jsonl: `step`, `split` train or eval, `loss`, `rewards/accuracies`, ...),
    and `trainer`, the `transformers.Trainer` that ran (`trainer.model` is the trained model)."""

    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(repr=False)
    trainer: Any = field(repr=False)

    @property
    def output_dir(self) -> Path:
        return Path(self.summary["output_dir"])

    @property
    def model(self):
        return self.trainer.model

    def evals(self) -> list[dict[str, Any]]:
        """The evaluation rows of `metrics`, in step order."""
        return [row for row in self.metrics if row.get("split") == "eval"]


def read_run_metrics(output_dir: Path) -> list[dict[str, Any]]:
    from dpolab.report.runs import read_metrics

    path = Path(output_dir) / "metrics.jsonl"
    return read_metrics(path)[0] if path.is_file() else []


def lora_section(peft_config) -> dict[str, Any]:
    """A peft `LoraConfig` as dpolab's `model.lora` section; a field set to anything dpolab does
    not carry (rank-stabilised scaling, DoRA, bias, modules_to_save, ...) is refused, not dropped."""
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise DpolabError(f"peft_config: dpolab trains LoRA adapters; got a {type(peft_config).__name__}")
    defaults = LoraConfig()
    section = {}
    for f in dataclasses.fields(LoraConfig):
        value = getattr(peft_config, f.name)
        if f.name in _LORA_FIELDS:
            section[_LORA_FIELDS[f.name]] = sorted(value) if isinstance(value, set) else value
        elif f.name not in _LORA_IGNORED and value != getattr(defaults, f.name):
            raise DpolabError(
                f"peft_config.{f.name}={value!r}: dpolab's LoRA takes r, lora_alpha, lora_dropout and "
                f"target_modules only; leave {f.name} at its default"
            )
    if section["target_modules"] is None:
        section["target_modules"] = "all-linear"
    return section


def training_section(args, stage: Stage) -> dict[str, Any]:
    """A `transformers.TrainingArguments` as the `training` section, taken as it is: every field
    set on it, and those that dpolab would otherwise default (learning rate, logging, checkpoints,
    evaluation) at the object's own values, as TRL's DPOTrainer takes a TrainingArguments."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    mine = args.to_dict()
    base = TrainingArguments(output_dir=args.output_dir).to_dict()
    kept = {*TRAINING_DEFAULTS, *stage.training_defaults, "eval_strategy", "eval_steps"}
    section = {}
    for key in names:
        value = getattr(args, key) if key.endswith("_token") else mine.get(key)
        if key in kept or value != base.get(key):
            section[key] = value
    for key in ("remove_unused_columns", "label_names"):  # dpolab's own; an error if set otherwise
        if section.get(key) in (True, None):
            section.pop(key, None)
    return {k: v for k, v in section.items() if not (k.endswith("_token") and v is None)}


def config_values(args, stage: Stage, loss: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sections `args` stands for: a dpolab config (a `RunConfig`, a mapping of sections, a
    YAML file) or a `TrainingArguments`; `loss` (a mapping of `loss.` keys) over it."""
    from transformers import TrainingArguments

    if args is None:
        values: dict[str, Any] = {}
    elif isinstance(args, TrainingArguments):
        values = {"training": training_section(args, stage)}
    elif isinstance(args, RunConfig):
        values = explicit_values(args)
    elif isinstance(args, Mapping):
        values = {k: dict(v) if isinstance(v, Mapping) else v for k, v in args.items()}
    elif isinstance(args, str | Path):
        values = read_config(args)
    else:
        raise DpolabError(
            f"args: expected a dpolab config (load_config(...), a dict of sections, a YAML path) or "
            f"transformers.TrainingArguments, got {type(args).__name__}"
        )
    if loss is not None:
        values["loss"] = {**(values.get("loss") or {}), **dict(loss)}
    return values


def _rows(dataset, name: str) -> list[dict[str, Any]]:
    """The rows of a `datasets.Dataset` or a list of dicts."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDataset | datasets.IterableDatasetDict):
        raise DpolabError(
            f"{name}: pass one split as a datasets.Dataset (e.g. dataset['train']), not a {type(dataset).__name__}"
        )
    if isinstance(dataset, datasets.Dataset):
        return dataset.to_list()
    if isinstance(dataset, list | tuple) and all(isinstance(row, Mapping) for row in dataset):
        return [dict(row) for row in dataset]
    raise DpolabError(f"{name}: expected a datasets.Dataset or a list of dicts, got {type(dataset).__name__}")


def write_dataset(dataset, path: Path, name: str) -> str:
    """`dataset` as a JSONL file at `path` (a file name or hub id string is used as it is)."""
    from dpolab.data.io import write_jsonl_atomic

    if isinstance(dataset, str | Path):
        return str(dataset)
    try:
        write_jsonl_atomic(path, _rows(dataset, name))
    except TypeError as err:
        raise DpolabError(f"{name}: its rows cannot be written as JSON ({err})") from None
    return str(path)


def run_config(
    model,
    args,
    stage: Stage,
    *,
    train_dataset=None,
    eval_dataset=None,
    peft_config=None,
    loss: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The checked config of a run built from objects."""
    values = config_values(args, stage, loss)
    model_section = values.setdefault("model", {})
    if isinstance(model, str | Path):
        model_section["name_or_path"] = str(model)
    elif model is not None:
        # config.yaml names where the model came from; the run uses the object itself
        model_section["name_or_path"] = getattr(model, "name_or_path", "") or f"<{type(model).__name__}>"
    if peft_config is not None:
        if model_section.get("lora") is not None:
            raise DpolabError("peft_config and the config's model.lora are both set: give one")
        model_section["lora"] = lora_section(peft_config)
    data = values.setdefault("data", {})
    output_dir = Path((values.get("training") or {}).get("output_dir") or TRAINING_DEFAULTS["output_dir"])
    for key, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is None:
            continue
        if data.get(key):
            raise DpolabError(f"{key}_dataset and the config's data.{key} are both set: give one")
        data[key] = write_dataset(dataset, output_dir / "data" / f"{key}.jsonl", f"{key}_dataset")
    return config_from_dict(values, stage=stage)


class PreferenceTrainer:
    """Preference training built as TRL's `DPOTrainer` is, from objects:

        trainer = PreferenceTrainer(model, args=config, train_dataset=..., processing_class=tokenizer)
        result = trainer.train()

    Args:
        model: a causal LM (trained in place) or its path / hub id.
        ref_model: the reference; default: a frozen copy of `model` as it is now (with
            `peft_config`, `model` with its adapters disabled; with `reference.precompute`, none).
        args: a dpolab config (`dpolab.load_config(...)`, a dict of sections, a YAML path: its
            `model.name_or_path` and `data.train` may be left out), or a
            `transformers.TrainingArguments`, taken as it is (transformers' defaults included) with
            `loss` for the loss section. None: dpolab's defaults.
        train_dataset, eval_dataset: `datasets.Dataset`s or lists of dicts in any format dpolab
            reads (prompt/chosen/rejected, conversational, ShareGPT, ...); written to
            OUTPUT_DIR/data/ so that OUTPUT_DIR/config.yaml names them.
        processing_class: the tokenizer; default: the model's.
        peft_config: a peft `LoraConfig`: LoRA adapters are added to `model`.
        callbacks: further `transformers.TrainerCallback`s.
        loss: `loss.` keys (e.g. `{"method": "ipo", "beta": 0.5}`), over the config's.

    Everything else (`evaluate()`, `save_model()`, `state`, `model`, ...) is the underlying
    `transformers.Trainer`'s (`self.trainer`). Logs go to stderr as on the command line.
    """

    stage: Stage = PREFERENCE

    def __init__(
        self,
        model,
        ref_model=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        callbacks=(),
        *,
        loss: Mapping[str, Any] | None = None,
    ):
        config = run_config(
            model,
            args,
            self.stage,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            peft_config=peft_config,
            loss=loss,
        )
        from dpolab.training.policy import GivenModels

        in_memory = model is not None and not isinstance(model, str | Path)
        if in_memory and processing_class is None and config.model.name_or_path.startswith("<"):
            raise DpolabError("processing_class: the model was not loaded from a folder; pass its tokenizer")
        given = GivenModels(
            policy=model if in_memory else None,
            reference=ref_model,
            tokenizer=processing_class,
        )
        self._build(config, given, callbacks)

    @classmethod
    def from_config(cls, config: RunConfig, *, stage: Stage | str = PREFERENCE, callbacks=()):
        """The trainer of a config that names its model and data (what `dpolab.train` runs)."""
        from dpolab.training.policy import GivenModels

        self = cls.__new__(cls)
        self.stage = resolve_stage(stage)
        self._build(config, GivenModels(), callbacks)
        return self

    def _build(self, config: RunConfig, given, callbacks) -> None:
        from dpolab.training.run import build_trainer, prepare

        setup_logging(unless_configured=True)
        self.config = config
        self.prepared = prepare(config, self.stage, given)
        self.trainer = build_trainer(self.prepared, tuple(callbacks or ()))

    def train(self, resume_from_checkpoint: str | bool | None = None) -> RunResult:
        """Train, save the model in OUTPUT_DIR, write summary.json; `resume_from_checkpoint` as
        `training.resume_from_checkpoint` (a checkpoint folder, or True for the last one)."""
        from dpolab.training.checkpoints import resume_target
        from dpolab.training.run import summarise, train_and_save

        if resume_from_checkpoint is not None:
            self.config.training["resume_from_checkpoint"] = resume_from_checkpoint
            self.prepared.resume = resume_target(self.config)
        result = train_and_save(self.prepared, self.trainer)
        summary = summarise(self.prepared, self.trainer, result)
        return RunResult(summary, read_run_metrics(self.prepared.output_dir), self.trainer)

    def __getattr__(self, name: str):
        if name in ("trainer", "prepared", "config"):  # not built (yet): no recursion
            raise AttributeError(name)
        return getattr(self.trainer, name)
