"""Where each supported model family keeps its decoder blocks, final norm and output head.

Intermediate-layer log-probs (the logit lens) pass hidden states through the model's own final
normalisation and its shared output head, so dpolab must find both. Families are known by their
`config.model_type`; an unknown one fails with a message that names the model class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dpolab.errors import DpolabError

# model_type -> (attribute path of the decoder blocks, attribute path of the final norm)
_FAMILIES: dict[str, tuple[str, str]] = {
    "llama": ("model.layers", "model.norm"),
    "mistral": ("model.layers", "model.norm"),
    "qwen2": ("model.layers", "model.norm"),
    "qwen3": ("model.layers", "model.norm"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "gpt2": ("transformer.h", "transformer.ln_f"),
}

# Config attributes that change the logits after the output head; a family that sets them needs
# support of its own, so dpolab refuses it rather than computing different log-probs.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")

SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))


@dataclass(frozen=True)
class Anatomy:
    """The parts of a causal LM that the layer-wise log-probs need.

    `blocks[k - 1]` outputs layer k (numbered from 1, as `hidden_states[k]` in Hugging Face terms);
    `num_layers` is L, the final layer.
    """

    causal_lm: nn.Module
    blocks: nn.ModuleList
    final_norm: nn.Module
    head: nn.Linear
    num_layers: int


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside DDP/FSDP/DeepSpeed wrappers and a peft model."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # peft
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP, DeepSpeed engine
            model = model.module
        elif isinstance(getattr(model, "_fsdp_wrapped_module", None), nn.Module):  # FSDP1
            model = model._fsdp_wrapped_module
        else:
            return model
    return model


def _get_path(root: nn.Module, path: str) -> nn.Module:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def check_supported(config) -> None:
    """Fail with a clear message if dpolab cannot compute layer-wise log-probs for this config."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        archs = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise DpolabError(
            f"model {archs} (model_type {model_type!r}) is not a family dpolab knows how to take log-probs "
            f"from; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise DpolabError(
                f"model_type {model_type!r} sets {name}={value}, which dpolab does not apply to its logits"
            )


def anatomy(model: nn.Module) -> Anatomy:
    """Find the decoder blocks, final norm and output head of a (possibly wrapped) causal LM."""
    causal_lm = unwrap(model)
    config = getattr(causal_lm, "config", None)
    if config is None or getattr(config, "model_type", None) not in _FAMILIES:
        name = type(causal_lm).__name__
        raise DpolabError(
            f"{name} is not a model class dpolab knows how to take layer-wise log-probs from; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    check_supported(config)
    blocks_path, norm_path = _FAMILIES[config.model_type]
    blocks = _get_path(causal_lm, blocks_path)
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise DpolabError(
            f"{type(causal_lm).__name__}: its output head is not a linear layer ({type(head).__name__})"
        )
    return Anatomy(
        causal_lm=causal_lm,
        blocks=blocks,
        final_norm=_get_path(causal_lm, norm_path),
        head=head,
        num_layers=len(blocks),
    )


def num_layers_of(config) -> int:
    """L, the number of transformer blocks, read from a config (no weights needed)."""
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise DpolabError(f"cannot tell the number of layers of {type(config).__name__}")


def first_param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32
