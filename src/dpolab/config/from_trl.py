"""`dpolab config from-trl FILE`: a TRL DPO config (the YAML of `trl dpo --config FILE`: the keys
of TRL 1.16's `ScriptArguments`, `DPOConfig` with the TrainingArguments fields, `ModelConfig` and
`DatasetMixtureConfig`, all at the top level) as a dpolab config."""

from __future__ import annotations

from typing import Any

from dpolab.config.foreign import (
    TRAINING_RENAMES,
    Conversion,
    Rule,
    apply_rules,
    drop_dpolab_defaults,
    keep_used_loss_keys,
)

TOOL = "TRL"

RULES = {
    rule.key: rule
    for rule in (
        # ScriptArguments
        Rule("dataset_name", "data.train", "a hub id or a local folder; with dataset_config, `name:config`"),
        Rule("dataset_config", "data.train", "dpolab names a hub dataset's configuration as `name:config`"),
        Rule("dataset_train_split", "data.split"),
        Rule(
            "dataset_test_split",
            "data.eval_split",
            "used, with data.eval the same dataset, when eval_strategy is set",
        ),
        Rule("dataset_streaming", None, "dpolab reads the whole dataset", same_as=False),
        Rule("ignore_bias_buffers", None, "a DDP work-around dpolab does not need", same_as=False),
        # DatasetMixtureConfig
        Rule(
            "datasets",
            "data.train",
            "a list of sources; `fraction` becomes `weight` (mix_strategy interleave_under)",
        ),
        Rule("streaming", None, "dpolab reads the whole dataset", same_as=False),
        Rule("test_split_size", "data.eval_size"),
        # ModelConfig
        Rule("model_name_or_path", "model.name_or_path"),
        Rule("model_revision", None, "dpolab loads a hub model's main revision", same_as="main"),
        Rule("dtype", "model.dtype", "float32 or bfloat16"),
        Rule(
            "attn_implementation",
            "model.attn_implementation",
            "sdpa, eager or flex_attention: dpolab packs each pair with a 4-D mask",
        ),
        Rule("trust_remote_code", "model.trust_remote_code"),
        Rule("use_peft", "model.lora", "with TRL's LoRA defaults: r 16, alpha 32, dropout 0.05"),
        Rule("lora_r", "model.lora.r"),
        Rule("lora_alpha", "model.lora.alpha"),
        Rule("lora_dropout", "model.lora.dropout"),
        Rule(
            "lora_target_modules", "model.lora.target_modules", "unset in TRL: peft's choice per model type"
        ),
        Rule("lora_target_parameters", None, "dpolab's LoRA targets modules", same_as=None),
        Rule("lora_modules_to_save", None, "dpolab trains the adapters only", same_as=None),
        Rule("lora_task_type", None, "dpolab trains causal LMs", same_as="CAUSAL_LM"),
        Rule("use_rslora", None, "not in dpolab's LoRA settings", same_as=False),
        Rule("use_dora", None, "not in dpolab's LoRA settings", same_as=False),
        Rule("load_in_8bit", None, "quantised training is not in dpolab", same_as=False),
        Rule("load_in_4bit", None, "quantised training is not in dpolab", same_as=False),
        Rule("bnb_4bit_quant_type", None, "quantised training is not in dpolab", same_as="nf4"),
        Rule("use_bnb_nested_quant", None, "quantised training is not in dpolab", same_as=False),
        Rule("bnb_4bit_quant_storage", None, "quantised training is not in dpolab", same_as=None),
        # DPOConfig
        Rule("model_init_kwargs", None, "use the model section's keys", same_as=None),
        Rule("router_aux_loss_coef", None, "MoE auxiliary losses are not in dpolab", same_as=None),
        Rule("disable_dropout", None, "dpolab trains with the model's dropout as configured", same_as=False),
        Rule("dataset_num_proc", None, "dpolab prepares the data itself", same_as=None),
        Rule("max_length", "data.max_length"),
        Rule("truncation_mode", None, "dpolab keeps the start of a completion", same_as="keep_start"),
        Rule(
            "padding_free",
            None,
            "dpolab packs a pair's chosen and rejected in one row; several pairs a row with data.pack_tokens",
            same_as=False,
        ),
        Rule("pad_to_multiple_of", None, "dpolab pads to the longest row", same_as="auto"),
        Rule("precompute_ref_log_probs", "reference.precompute"),
        Rule("precompute_ref_batch_size", "reference.batch_size"),
        Rule("loss_type", "loss.method", "sigmoid is dpo; a list of several is their weighted sum"),
        Rule("loss_weights", "loss.weights"),
        Rule("ld_alpha", "loss.ld_alpha"),
        Rule("f_divergence_type", "loss.f_divergence"),
        Rule("f_alpha_divergence_coef", "loss.f_alpha"),
        Rule("label_smoothing", "loss.label_smoothing"),
        Rule("beta", "loss.beta"),
        Rule("use_weighting", "loss.use_weighting"),
        Rule("discopop_tau", "loss.discopop_tau"),
        Rule("activation_offloading", None, "not in dpolab", same_as=False),
        Rule("sync_ref_model", None, "TR-DPO's reference updates are not in dpolab", same_as=False),
        Rule("ref_model_mixup_alpha", None, "TR-DPO's reference updates are not in dpolab", same_as=0.6),
        Rule("ref_model_sync_steps", None, "TR-DPO's reference updates are not in dpolab", same_as=512),
        Rule("pad_token", None, "deprecated in TRL; give the tokenizer a pad token", same_as=None),
        *TRAINING_RENAMES,
    )
}
SPECIAL = {
    "dataset_train_split",
    "dataset_name",
    "dataset_config",
    "dataset_test_split",
    "datasets",
    "dtype",
    "attn_implementation",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "loss_type",
    "disable_dropout",  # a note below, when TRL's default (true) is kept
}
# TRL's defaults where dpolab's differ (its _BaseConfig and DPOConfig): a note when the file keeps them.
DIFFERENT_DEFAULTS = {
    "bf16": "TRL trains in bf16 by default (bf16 unset and no fp16); dpolab does not: add training.bf16: true",
    "gradient_checkpointing": "TRL turns gradient checkpointing on by default; dpolab does not: add "
    "training.gradient_checkpointing: true",
    "disable_dropout": "TRL turns the models' dropout off by default; dpolab trains with the model's dropout as "
    "configured (0 in most recent LLMs)",
}


def _method(name: str) -> str | None:
    from dpolab.objectives.registry import LOSSES

    spec = LOSSES.get(name)
    return spec.name if spec is not None else None


def _dataset(values: dict[str, Any], out: Conversion) -> None:
    name = values.get("dataset_name")
    if name is not None:
        config = values.get("dataset_config")
        out.set("data.train", f"{name}:{config}" if config else name, "dataset_name")
        split = values.get("dataset_train_split", "train")
        if values.get("eval_strategy", "no") != "no":
            out.set("data.eval", out.get("data.train"), "dataset_name")
            out.set("data.eval_split", values.get("dataset_test_split", "test"), "dataset_test_split")
        elif values.get("dataset_test_split", "test") != "test":
            out.notes.append("dataset_test_split: TRL evaluates only with eval_strategy set; left out")
        if split != "train":
            out.set("data.split", split, "dataset_train_split")
    if values.get("datasets"):
        sources = [s for s in (_source(spec, i, out) for i, spec in enumerate(values["datasets"])) if s]
        if name is not None:
            out.drop("datasets", values["datasets"], "dataset_name is set: TRL reads that one")
        elif len(sources) == 1 and "weight" not in sources[0]:
            out.set("data.train", sources[0]["path"], "datasets")
            if sources[0].get("split"):
                out.set("data.split", sources[0]["split"], "datasets")
        elif sources:
            out.set("data.train", sources, "datasets")
            if any("weight" in s for s in sources):
                out.set("data.mix_strategy", "interleave_under", "datasets")


def _source(spec: dict[str, Any], index: int, out: Conversion) -> dict[str, Any] | None:
    """One of TRL's `datasets` entries (load_dataset's arguments) as a dpolab source spec."""
    key = f"datasets[{index}]"
    path, files = spec.get("path"), spec.get("data_files")
    if path in ("json", "parquet") and isinstance(files, str):
        path = files
    elif files is not None or path in ("json", "parquet", "csv"):
        out.drop(f"{key}.data_files", files, "dpolab reads one .jsonl/.json/.parquet file per source")
        return None
    if spec.get("name"):
        path = f"{path}:{spec['name']}"
    source: dict[str, Any] = {"path": path}
    if spec.get("split", "train") != "train":
        source["split"] = spec["split"]
    if spec.get("fraction") is not None:
        source["weight"] = spec["fraction"]
    if spec.get("data_dir"):
        out.drop(f"{key}.data_dir", spec["data_dir"], "name the file or folder in path")
    if spec.get("columns"):
        out.notes.append(f"{key}.columns: TRL keeps only these columns; dpolab reads the ones it needs")
    return source


def _model(values: dict[str, Any], out: Conversion) -> None:
    dtype = values.get("dtype")
    if dtype in ("float32", "bfloat16"):
        out.set("model.dtype", dtype, "dtype")
    elif dtype is not None:
        out.drop("dtype", dtype, "dpolab loads float32 or bfloat16 (model.dtype)")
    attention = values.get("attn_implementation")
    if attention in ("sdpa", "eager", "flex_attention"):
        out.set("model.attn_implementation", attention, "attn_implementation")
    elif attention is not None:
        out.drop(
            "attn_implementation",
            attention,
            "dpolab packs each pair with a 4-D mask: sdpa, eager or flex_attention",
        )
    if values.get("use_peft"):
        targets = values.get("lora_target_modules")
        lora = {
            "r": values.get("lora_r", 16),
            "alpha": values.get("lora_alpha", 32),
            "dropout": values.get("lora_dropout", 0.05),
            "target_modules": targets if targets is not None else "all-linear",
        }
        out.set("model.lora", lora, "use_peft")
        if targets is None:
            out.notes.append(
                "lora_target_modules: unset, TRL lets peft choose by model type (q_proj and v_proj for "
                "Llama); dpolab's default is all-linear"
            )
    else:
        for key, default in (
            ("lora_r", 16),
            ("lora_alpha", 32),
            ("lora_dropout", 0.05),
            ("lora_target_modules", None),
        ):
            if key in values and values[key] != default:
                out.drop(key, values[key], "use_peft is not set: TRL trains no adapters")


def _loss(values: dict[str, Any], out: Conversion) -> None:
    if "loss_type" not in values:
        return
    given = values["loss_type"]
    names = given if isinstance(given, list) else [given]
    methods = [_method(str(n)) for n in names]
    if None in methods:
        unknown = [n for n, m in zip(names, methods) if m is None]
        out.drop("loss_type", given, f"dpolab has no {', '.join(map(str, unknown))} (docs/methods.md)")
        return
    out.set("loss.method", methods[0] if len(methods) == 1 else methods, "loss_type")


def convert(values: dict[str, Any]) -> Conversion:
    """The dpolab config of a TRL DPO config's keys."""
    out = Conversion(TOOL)
    _dataset(values, out)
    _model(values, out)
    _loss(values, out)
    apply_rules(values, RULES, out, SPECIAL)
    weights = out.get("loss.weights")
    if weights is not None and not isinstance(out.get("loss.method"), list):
        out.values["loss"].pop("weights")
        if list(weights) != [1]:
            out.drop("loss_weights", weights, "one loss type: its weight is 1")
    keep_used_loss_keys(out)
    drop_dpolab_defaults(out)
    # TRL 1.16 has no max_prompt_length: it cuts prompt + completion at the end to max_length
    out.set("data.max_prompt_length", None)
    out.notes.append(
        "data.max_prompt_length: null, as TRL cuts prompt + completion to max_length at the end (dpolab's "
        "default 512 would cut a long prompt from its start instead)"
    )
    for key, note in DIFFERENT_DEFAULTS.items():
        if key not in values or (key == "disable_dropout" and values[key]):
            out.notes.append(note)
    return out
