"""The models of a run: the policy (full weights, or with fresh LoRA adapters) and a frozen
reference copy, loaded with `dpolab.modeling.loading` as the config's model section says, or
given as objects by the caller (`GivenModels`: a notebook's `dpolab.PreferenceTrainer`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dpolab.config.schema import ModelSection
from dpolab.errors import DpolabError
from dpolab.modeling.anatomy import anatomy, check_supported
from dpolab.modeling.layout import choose_attention
from dpolab.modeling.loading import adapter_base, first_line, load_causal_lm

log = logging.getLogger("dpolab")


def load_model(name_or_path: str, section: ModelSection) -> nn.Module:
    """A model of the run, with the section's dtype, attention and remote-code settings; its parts
    found (`anatomy`: a model dpolab cannot score exactly stops here, with one line) and, with
    attention `auto`, the implementation chosen under which its pairs fit one row each."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    requested = section.attn_implementation
    model = load_causal_lm(
        name_or_path,
        dtype=section.dtype,
        attn_implementation=None if requested == "auto" else requested,
        trust_remote_code=section.trust_remote_code,
    )
    if not is_deepspeed_zero3_enabled():  # partitioned weights: found inside DeepSpeed's engine
        anatomy(model)
        choose_attention(model, requested)
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
        raise DpolabError(f"model.lora.target_modules: {first_line(err)}") from None


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
    model = load_model(section.name_or_path, section)
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
    return freeze(load_model(section.ref_name_or_path or section.name_or_path, section))


@dataclass
class GivenModels:
    """Models and a tokenizer the caller passes in (`dpolab.PreferenceTrainer`) instead of the
    config's model section naming them; None where the config's choice holds. The given policy
    trains in place (with `model.lora`, the adapters are added to it)."""

    policy: nn.Module | None = None
    reference: nn.Module | None = None
    tokenizer: Any = None


def given_policy(model: nn.Module, section: ModelSection, *, seed: int = 42) -> nn.Module:
    """A policy passed in as an object: checked, and given fresh LoRA adapters if `lora` is set."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise DpolabError(
            "model: a peft model; pass the base model with peft_config (dpolab adds the adapters, "
            "and its reference is the base with them disabled)"
        )
    check_supported(model.config)
    return apply_lora(model, section, seed=seed) if section.lora is not None else model


def freeze(model: nn.Module) -> nn.Module:
    """The model in eval mode with no gradients: a reference."""
    model.eval()
    model.requires_grad_(False)
    return model
