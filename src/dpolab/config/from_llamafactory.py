"""`dpolab config from-llamafactory FILE`: a LLaMA-Factory training config (`llamafactory-cli train
FILE`, stage dpo or sft: the keys of its ModelArguments, DataArguments, FinetuningArguments and
TrainingArguments) as a dpolab config.

Its datasets are names in `DATASET_DIR/dataset_info.json` (`dataset_dir`, default `data`, read
from the current folder as LLaMA-Factory does, else beside FILE): each becomes a `data.train`
source, its `columns` dpolab's `data.columns`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpolab.config.foreign import (
    TRAINING_RENAMES,
    Conversion,
    Rule,
    apply_rules,
    drop_dpolab_defaults,
    keep_used_loss_keys,
)
from dpolab.errors import DpolabError

TOOL = "LLaMA-Factory"
_QUANT = "quantised training is not in dpolab"
_ADAPTERS = "not in dpolab's LoRA settings"

RULES = {
    rule.key: rule
    for rule in (
        # ModelArguments
        Rule("model_name_or_path", "model.name_or_path"),
        Rule(
            "adapter_name_or_path",
            "model.name_or_path",
            "dpolab merges an adapter folder into its base model",
        ),
        Rule("trust_remote_code", "model.trust_remote_code"),
        Rule("flash_attn", "model.attn_implementation", "sdpa or eager (disabled); fa2 is not supported"),
        Rule("model_revision", None, "dpolab loads a hub model's main revision", same_as="main"),
        Rule("quantization_bit", None, _QUANT, same_as=None),
        Rule(
            "disable_gradient_checkpointing",
            None,
            "dpolab's is training.gradient_checkpointing",
            same_as=False,
        ),
        Rule("use_unsloth", None, "not in dpolab", same_as=False),
        Rule("enable_liger_kernel", None, "set training.use_liger_kernel", same_as=False),
        Rule("rope_scaling", None, "not in dpolab", same_as=None),
        Rule("resize_vocab", None, "not in dpolab", same_as=False),
        Rule("use_fast_tokenizer", None, "dpolab loads the tokenizer's fast version", same_as=True),
        Rule("low_cpu_mem_usage", None, "transformers' loading", same_as=True),
        Rule("upcast_layernorm", None, "not in dpolab", same_as=False),
        # FinetuningArguments
        Rule("stage", None, "dpo: dpolab train; sft: dpolab sft; the others are not in dpolab"),
        Rule("finetuning_type", "model.lora", "lora (LLaMA-Factory's default): LoRA adapters; full: none"),
        Rule("lora_rank", "model.lora.r"),
        Rule("lora_alpha", "model.lora.alpha", "default 2 × lora_rank, as in LLaMA-Factory"),
        Rule("lora_dropout", "model.lora.dropout", "default 0, as in LLaMA-Factory"),
        Rule("lora_target", "model.lora.target_modules", "all is all-linear; a comma-separated list, a list"),
        Rule("additional_target", None, "dpolab trains the adapters only", same_as=None),
        Rule("use_rslora", None, _ADAPTERS, same_as=False),
        Rule("use_dora", None, _ADAPTERS, same_as=False),
        Rule("pissa_init", None, _ADAPTERS, same_as=False),
        Rule("loraplus_lr_ratio", None, _ADAPTERS, same_as=None),
        Rule("create_new_adapter", None, "dpolab always trains a new adapter", same_as=False),
        Rule("pref_beta", "loss.beta"),
        Rule("pref_loss", "loss.method", "sigmoid is dpo; ipo averages per token there, not here"),
        Rule("pref_ftx", "loss.method", "adds dpolab's sft loss with this weight"),
        Rule(
            "pref_bco_weight",
            None,
            "BCO mixing is not in dpolab (loss.method bco_pair is a loss of its own)",
            0.0,
        ),
        Rule("dpo_label_smoothing", "loss.label_smoothing"),
        Rule("simpo_gamma", "loss.simpo_gamma"),
        Rule("ld_alpha", "loss.ld_alpha"),
        Rule("ref_model", "model.ref_name_or_path"),
        Rule("ref_model_adapters", None, "give the reference as one merged folder", same_as=None),
        Rule("ref_model_quantization_bit", None, _QUANT, same_as=None),
        Rule("pure_bf16", "model.dtype", "true: bfloat16 weights"),
        Rule("plot_loss", None, "`dpolab report` draws the curves", same_as=False),
        Rule("use_galore", None, "not in dpolab", same_as=False),
        Rule("use_badam", None, "not in dpolab", same_as=False),
        Rule("use_llama_pro", None, "not in dpolab", same_as=False),
        # DataArguments
        Rule("template", None, "dpolab renders conversations with the tokenizer's own chat template"),
        Rule("dataset", "data.train", "names in dataset_info.json: their files, splits and columns"),
        Rule("eval_dataset", "data.eval", "as dataset"),
        Rule("dataset_dir", None, "where dataset_info.json is read", same_as="data"),
        Rule("cutoff_len", "data.max_length", "data.max_prompt_length is set to half of it"),
        Rule("max_samples", "data.limit", "of one dataset; with several, dpolab's limit is the mixture's"),
        Rule("val_size", "data.eval_size"),
        Rule("mix_strategy", "data.mix_strategy", "concat is sum; interleave_under, interleave_over"),
        Rule("interleave_probs", "data.train", "the sources' weights"),
        Rule("train_on_prompt", None, "dpolab scores the completions", same_as=False),
        Rule("mask_history", None, "dpolab scores the completions", same_as=False),
        Rule("streaming", None, "dpolab reads the whole dataset", same_as=False),
        Rule("packing", None, "dpolab packs a pair's chosen and rejected in one row", same_as=None),
        Rule("neat_packing", None, "dpolab packs a pair's chosen and rejected in one row", same_as=False),
        Rule("default_system", None, "give the rows a system column", same_as=None),
        Rule("enable_thinking", None, "the chat template's own setting", same_as=True),
        Rule("preprocessing_num_workers", None, "dpolab prepares the data itself", same_as=None),
        Rule("preprocessing_batch_size", None, "dpolab prepares the data itself", same_as=1000),
        Rule("overwrite_cache", None, "dpolab prepares the data at each run", same_as=False),
        Rule("tokenized_path", None, "dpolab prepares the data at each run", same_as=None),
        # LLaMA-Factory's TrainingArguments
        Rule("overwrite_output_dir", None, "dpolab writes into output_dir as it is", same_as=True),
        *TRAINING_RENAMES,
    )
}
SPECIAL = {
    *("adapter_name_or_path", "flash_attn", "stage", "finetuning_type", "lora_rank", "lora_alpha"),
    *("lora_dropout", "lora_target", "pref_loss", "pref_ftx", "pure_bf16", "dataset", "eval_dataset"),
    *("dataset_dir", "cutoff_len", "max_samples", "mix_strategy", "interleave_probs", "template", "val_size"),
}
PREF_LOSSES = {"sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo", "orpo": "orpo", "simpo": "simpo"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
UNSUPPORTED_COLUMNS = ("history", "tools", "images", "videos", "audios", "kto_tag")


def _names(value: Any) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value or [])


def dataset_info(values: dict[str, Any], source: Path) -> tuple[dict[str, Any] | None, Path]:
    """dataset_info.json of `dataset_dir` (None when there is none) and the folder its file names
    are relative to, as dpolab should name it: `dataset_dir` from the current folder, as
    LLaMA-Factory reads it, else the same beside the config file."""
    folder = Path(values.get("dataset_dir", "data"))
    for shown in (folder, source.parent / folder):
        path = shown / "dataset_info.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")), shown
            except ValueError as err:
                raise DpolabError(f"{path}: not valid JSON ({err})") from None
    return None, folder


def _columns(entry: dict[str, Any], key: str, out: Conversion) -> dict[str, Any] | None:
    """A dataset_info.json entry's columns as dpolab's `columns` (only what differs from dpolab's
    own reading); None when the entry cannot be read as preference pairs."""
    formatting = entry.get("formatting", "alpaca")
    if not entry.get("ranking"):
        out.drop(key, entry, "not a preference dataset (ranking: true): dpolab trains on pairs")
        return None
    given = entry.get("columns")
    if formatting == "alpaca":
        columns = {"prompt": "instruction", "query": "input"} if given is None else {}
        wanted = ("prompt", "query", "chosen", "rejected", "system")
    else:
        tags = {**(SHAREGPT_TAGS if formatting == "sharegpt" else OPENAI_TAGS), **entry.get("tags", {})}
        if {k: tags[k] for k in SHAREGPT_TAGS} not in (SHAREGPT_TAGS, OPENAI_TAGS):
            out.drop(
                f"{key}.tags",
                entry.get("tags"),
                "dpolab reads from/value (human, gpt) or role/content messages",
            )
            return None
        columns = {"messages": "conversations"} if given is None else {}
        wanted = ("messages", "chosen", "rejected", "system")
    for name, column in (given or {}).items():
        if name in wanted:
            columns[name] = column
        elif name in UNSUPPORTED_COLUMNS and column:
            out.drop(f"{key}.columns.{name}", column, "not in dpolab's data")
    return {k: v for k, v in columns.items() if v is not None and v != k}


def _source(name: str, info: dict[str, Any] | None, folder: Path, out: Conversion, key: str) -> dict | None:
    if info is None:
        out.notes.append(f"{key}: {name}: no {folder}/dataset_info.json found; read as a file or hub id")
        return {"path": name}
    entry = info.get(name)
    if entry is None:
        out.drop(key, name, f"not in {folder}/dataset_info.json")
        return None
    if "file_name" in entry:
        path = str(folder / entry["file_name"])
    elif "hf_hub_url" in entry:
        path = entry["hf_hub_url"] + (f":{entry['subset']}" if entry.get("subset") else "")
    else:
        out.drop(key, name, "only file_name and hf_hub_url datasets are read by dpolab")
        return None
    columns = _columns(entry, f"{key} {name}", out)
    if columns is None:
        return None
    source: dict[str, Any] = {"path": path}
    if entry.get("split", "train") != "train":
        source["split"] = entry["split"]
    if columns:
        source["columns"] = columns
    if entry.get("num_samples"):
        out.drop(f"{key} {name}.num_samples", entry["num_samples"], "set data.limit")
    return source


def _data(values: dict[str, Any], source: Path, out: Conversion) -> None:
    info, folder = dataset_info(values, source)
    for key, target in (("dataset", "data.train"), ("eval_dataset", "data.eval")):
        sources = [s for s in (_source(n, info, folder, out, key) for n in _names(values.get(key))) if s]
        if not sources:
            continue
        probs = _names(values.get("interleave_probs")) if key == "dataset" else []
        if probs and len(probs) == len(sources):
            for spec, prob in zip(sources, probs):
                spec["weight"] = float(prob)
        if len(sources) == 1 and set(sources[0]) <= {"path", "split", "columns"}:
            out.set(target, sources[0]["path"], key)
            if sources[0].get("split"):
                out.set("data.split" if key == "dataset" else "data.eval_split", sources[0]["split"], key)
            if sources[0].get("columns"):
                out.set("data.columns", sources[0]["columns"], key)
        else:
            out.set(target, sources, key)
    strategy = values.get("mix_strategy", "concat")
    if strategy.startswith("interleave"):
        out.set("data.mix_strategy", strategy, "mix_strategy")
    cutoff = int(values.get("cutoff_len", 2048))
    out.set("data.max_length", cutoff, "cutoff_len")
    out.set("data.max_prompt_length", cutoff // 2, "cutoff_len")
    out.notes.append(
        "cutoff_len: LLaMA-Factory shares it between prompt and response by their lengths; dpolab keeps a "
        f"prompt's last {cutoff // 2} tokens (data.max_prompt_length)"
    )
    if values.get("val_size"):  # 0, LLaMA-Factory's default: no eval split
        out.set("data.eval_size", values["val_size"], "val_size")
    if values.get("max_samples") is not None:
        if isinstance(out.get("data.train"), list):
            out.drop("max_samples", values["max_samples"], "per dataset there; data.limit caps the mixture")
        else:
            out.set("data.limit", values["max_samples"], "max_samples")
    if values.get("template") is not None:
        out.notes.append(
            f"template: {values['template']}: dpolab renders conversations with the tokenizer's own chat "
            "template, and string prompts as they are"
        )


def _model(values: dict[str, Any], out: Conversion) -> None:
    if values.get("adapter_name_or_path"):
        adapters = _names(values["adapter_name_or_path"])
        if len(adapters) > 1:
            out.drop(
                "adapter_name_or_path", values["adapter_name_or_path"], "merge the adapters into one folder"
            )
        else:
            out.set("model.name_or_path", adapters[0], "adapter_name_or_path")
            out.notes.append(
                f"adapter_name_or_path: dpolab reads the base model from {adapters[0]}/adapter_config.json"
            )
    attention = values.get("flash_attn", "auto")
    if attention in ("sdpa", "disabled"):
        out.set("model.attn_implementation", "sdpa" if attention == "sdpa" else "eager", "flash_attn")
    elif attention != "auto":
        out.drop("flash_attn", attention, "dpolab packs each pair with a 4-D mask: sdpa or eager")
    if values.get("pure_bf16"):
        out.set("model.dtype", "bfloat16", "pure_bf16")
    kind = values.get("finetuning_type", "lora")
    if kind == "lora":
        rank = values.get("lora_rank", 8)
        target = values.get("lora_target", "all")
        out.set(
            "model.lora",
            {
                "r": rank,
                "alpha": values.get("lora_alpha") or 2 * rank,
                "dropout": values.get("lora_dropout", 0.0),
                "target_modules": "all-linear" if target == "all" else _names(target),
            },
            "finetuning_type",
        )
    elif kind != "full":
        out.drop("finetuning_type", kind, "dpolab trains all weights (full) or LoRA adapters (lora)")
    if "finetuning_type" not in values:
        out.notes.append("finetuning_type: unset, LLaMA-Factory's default lora (rank 8, all linear layers)")
    if not values.get("disable_gradient_checkpointing"):
        out.notes.append(
            "LLaMA-Factory turns gradient checkpointing on unless disable_gradient_checkpointing; dpolab does "
            "not: add training.gradient_checkpointing: true"
        )


def _loss(values: dict[str, Any], out: Conversion) -> None:
    name = values.get("pref_loss", "sigmoid")
    method = PREF_LOSSES.get(name)
    if method is None:
        out.drop("pref_loss", name, "dpolab has no kto_pair")
        return
    if method == "ipo":
        out.notes.append(
            "pref_loss: ipo: LLaMA-Factory averages the log-probs per token, dpolab sums them (as TRL)"
        )
    if method == "orpo":
        out.notes.append("pref_loss: orpo: dpolab's NLL term covers prompt and response, as the ORPO paper")
    ftx = values.get("pref_ftx", 0.0)
    if ftx > 1e-6:
        out.set("loss.method", [method, "sft"], "pref_ftx")
        out.set("loss.weights", [1.0, float(ftx)], "pref_ftx")
        out.notes.append(
            "pref_ftx: dpolab's sft loss is the mean NLL over the batch's chosen tokens; LLaMA-Factory averages "
            "each pair's per-token NLL, then the pairs"
        )
    elif method != "dpo" or "pref_loss" in values:
        out.set("loss.method", method, "pref_loss")


def convert(values: dict[str, Any], source: Path) -> Conversion:
    """The dpolab config of a LLaMA-Factory config's keys (`source`: the file, for dataset_dir)."""
    stage = values.get("stage", "sft")
    if stage not in ("dpo", "sft"):
        raise DpolabError(f"stage: {stage}: dpolab converts dpo (dpolab train) and sft (dpolab sft) configs")
    out = Conversion(TOOL, command="train" if stage == "dpo" else "sft")
    _model(values, out)
    _data(values, source, out)
    if stage == "dpo":
        _loss(values, out)
    apply_rules(values, RULES, out, SPECIAL)
    if stage == "sft":
        out.values.pop("loss", None)
    keep_used_loss_keys(out)
    drop_dpolab_defaults(out)
    return out
