"""Loading tokenizers, policies (optionally with LoRA) and frozen reference models.

Every loader turns the errors a user can cause (a missing folder, an unreachable hub id, an
unsupported architecture) into one `DpolabError` line.

A model path may be a LoRA adapter folder (peft's `adapter_config.json`, as `dpolab sft` with
`model.lora` saves): its base model (`base_model_name_or_path`) is loaded, the adapter merged into
it, and that is the model, for its config (layer count) as for its weights, as
`dpolab.evaluation.loading` reads adapters for evaluation.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from dpolab.architectures import check_supported, num_layers_of
from dpolab.config import ModelSection
from dpolab.errors import DpolabError
from dpolab.paths import missing_local_path

log = logging.getLogger("dpolab")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load(what: str, name: str, loader, **kwargs):
    missing = missing_local_path(name)
    if missing:
        raise DpolabError(f"{what} {name!r}: {missing}")
    name = os.path.expanduser(name)
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        raise DpolabError(
            f"{what} {name!r} cannot be loaded: {_first_line(err)} (give a local folder saved with "
            f"save_pretrained, or a hub id reachable from this machine)"
        ) from None


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(name_or_path: str) -> str | None:
    """The base model of a local LoRA adapter folder (`base_model_name_or_path` of its
    adapter_config.json); None when `name_or_path` is not one."""
    path = Path(os.path.expanduser(name_or_path)) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as err:
        raise DpolabError(f"{path}: not a readable adapter config ({_first_line(err)})") from None
    if not isinstance(base, str) or not base:
        raise DpolabError(
            f"{path}: no base_model_name_or_path; write the base model's folder or hub id there"
        )
    return base


def _in_base(adapter: str, base: str, load):
    """`load(base)`, with an error that says the path came from the adapter's config."""
    try:
        return load(base)
    except DpolabError as err:
        raise DpolabError(f"adapter {adapter!r}: its base model (adapter_config.json): {err}") from None


def load_model_config(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's config (no weights), checked to be a family dpolab supports; for an adapter
    folder, its base model's config (a LoRA adapter changes no shape)."""
    from transformers import AutoConfig

    base = adapter_base(name_or_path)
    if base is not None:
        return _in_base(
            name_or_path, base, lambda b: load_model_config(b, trust_remote_code=trust_remote_code)
        )
    config = _load("model", name_or_path, AutoConfig.from_pretrained, trust_remote_code=trust_remote_code)
    check_supported(config)
    return config


def model_num_layers(name_or_path: str, *, trust_remote_code: bool = False) -> int:
    return num_layers_of(load_model_config(name_or_path, trust_remote_code=trust_remote_code))


def load_tokenizer(section: ModelSection):
    """The tokenizer, with the EOS token standing in for a missing pad token (as TRL does)."""
    from transformers import AutoTokenizer

    name = section.tokenizer_name_or_path or section.name_or_path
    base = adapter_base(name)
    if base is not None and not (Path(os.path.expanduser(name)) / "tokenizer_config.json").is_file():
        name = base  # an adapter saved without its tokenizer: the base model's
    tokenizer = _load(
        "tokenizer", name, AutoTokenizer.from_pretrained, trust_remote_code=section.trust_remote_code
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DpolabError(
                f"tokenizer {name!r} has neither a pad nor an EOS token; dpolab needs one to pad"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, section: ModelSection) -> nn.Module:
    """The model at `name_or_path`; an adapter folder's base model with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    base = adapter_base(name_or_path)
    if base is not None:
        from peft import PeftModel

        model = _in_base(name_or_path, base, lambda b: load_causal_lm(b, section))
        merged = _load(
            "adapter", name_or_path, lambda path: PeftModel.from_pretrained(model, path).merge_and_unload()
        )
        log.info("model: %s is a LoRA adapter of %s; merged into it", name_or_path, base)
        return merged.requires_grad_(True)  # peft froze the base for inference; trainable as loaded
    model = _load(
        "model",
        name_or_path,
        AutoModelForCausalLM.from_pretrained,
        dtype=DTYPES[section.dtype],
        attn_implementation=section.attn_implementation,
        trust_remote_code=section.trust_remote_code,
    )
    check_supported(model.config)
    return model


def apply_lora(model: nn.Module, section: ModelSection, *, seed: int = 42) -> nn.Module:
    """Wrap the model with fresh LoRA adapters (peft); only the adapters train.

    The adapters' random initialisation is drawn right after seeding with `seed` (the run's
    `training.seed`): they exist before the Trainer seeds, and the same seed must give the same
    adapters whatever ran before in the process."""
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    lora = section.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    set_seed(seed)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise DpolabError(f"model.lora.target_modules: {_first_line(err)}") from None


def load_policy(
    section: ModelSection, *, merged_start: Path | None = None, write: bool = True, seed: int = 42
) -> nn.Module:
    """The model to train: full weights, or the model with LoRA adapters when `lora` is set, their
    initialisation seeded with `seed` (the run's `training.seed`, 42 by default as in
    TrainingArguments).

    Starting from an adapter folder under LoRA, the new adapter trains on the merged start, which
    exists nowhere on disk: it is saved to `merged_start` (when `write`: the first process) and
    the new adapter names that folder as its base, so that its checkpoints and the final adapter
    load on their own (with `dpolab eval`, peft, TRL); naming the first adapter's base model, as
    peft would, would silently drop the first adapter."""
    model = load_causal_lm(section.name_or_path, section)
    if section.lora is not None:
        if adapter_base(section.name_or_path) is not None:
            if merged_start is None:
                raise ValueError(f"{section.name_or_path} is an adapter: pass merged_start")
            if write:
                model.save_pretrained(merged_start)
            model.name_or_path = str(merged_start)  # what peft records as the adapter's base
            model.config.name_or_path = str(merged_start)
            log.info("model: the merged start is saved in %s, the new adapter's base", merged_start)
        model = apply_lora(model, section, seed=seed)
    return model


def load_frozen_reference(section: ModelSection) -> nn.Module:
    """A frozen copy of the reference weights (`ref_name_or_path`, else the policy's start)."""
    model = load_causal_lm(section.ref_name_or_path or section.name_or_path, section)
    model.eval()
    model.requires_grad_(False)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
