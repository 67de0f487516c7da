"""Loading tokenizers, policies (optionally with LoRA) and frozen reference models.

Every loader turns the errors a user can cause (a missing folder, an unreachable hub id, an
unsupported architecture) into one `DpolabError` line.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from dpolab.architectures import check_supported, num_layers_of
from dpolab.config import ModelSection
from dpolab.errors import DpolabError

log = logging.getLogger("dpolab")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_missing_path(name: str) -> bool:
    """`name` can only be a local path (absolute, ./ ../ ~, or more than one `/`: a hub id has one)
    and nothing is there."""
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")
    return looks_local and not os.path.exists(os.path.expanduser(name))


def _load(what: str, name: str, loader, **kwargs):
    if _is_missing_path(name):
        raise DpolabError(
            f"{what} {name!r}: no such folder (a relative path is read from the current directory, "
            f"{os.getcwd()})"
        )
    name = os.path.expanduser(name)
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as err:
        raise DpolabError(
            f"{what} {name!r} cannot be loaded: {_first_line(err)} (give a local folder saved with "
            f"save_pretrained, or a hub id reachable from this machine)"
        ) from None


def load_model_config(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's config (no weights), checked to be a family dpolab supports."""
    from transformers import AutoConfig

    config = _load("model", name_or_path, AutoConfig.from_pretrained, trust_remote_code=trust_remote_code)
    check_supported(config)
    return config


def model_num_layers(name_or_path: str, *, trust_remote_code: bool = False) -> int:
    return num_layers_of(load_model_config(name_or_path, trust_remote_code=trust_remote_code))


def load_tokenizer(section: ModelSection):
    """The tokenizer, with the EOS token standing in for a missing pad token (as TRL does)."""
    from transformers import AutoTokenizer

    name = section.tokenizer_name_or_path or section.name_or_path
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
    from transformers import AutoModelForCausalLM

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


def apply_lora(model: nn.Module, section: ModelSection) -> nn.Module:
    """Wrap the model with fresh LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    lora = section.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise DpolabError(f"model.lora.target_modules: {_first_line(err)}") from None


def load_policy(section: ModelSection) -> nn.Module:
    """The model to train: full weights, or the model with LoRA adapters when `lora` is set."""
    model = load_causal_lm(section.name_or_path, section)
    if section.lora is not None:
        model = apply_lora(model, section)
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
