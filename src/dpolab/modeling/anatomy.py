"""A causal LM's parts, found from the model itself: no table of families.

dpolab scores completions by projecting hidden states through the output head itself, in chunks,
at the completion positions only, so it must know exactly what the model does between its decoder
blocks and its logits. That is discovered once per model by a probe forward on a few tokens:

    anatomy(model)
    ├── unwrap()             the Hugging Face model inside peft / DDP / FSDP / DeepSpeed wrappers
    └── probe.discover()     once per model (cached): a probe forward with hooks on every module
        ├── _block_lists()       the ModuleLists that may be the decoder blocks (`_no_split_modules`)
        ├── causality            a later token changes no earlier logit (BERT without is_decoder does)
        ├── the blocks           the candidate list whose blocks ran, last, before the head
        ├── the final modules    what ran between the last block and the head (final norm, OPT's
        │                        project_out, BERT's prediction transform), checked to turn the last
        │                        block's output into the head's input exactly (the logit lens;
        │                        not defined where blocks run more than once, as in looped models)
        ├── the logit transform  what turns the head's output into the logits (Gemma 2's softcap,
        │                        Cohere's logit_scale, Granite's logits_scaling: config attributes,
        │                        the candidate that reproduces the logits)
        └── find_router()        a mixture-of-experts model's routers (dpolab.modeling.router)

Under DeepSpeed ZeRO-3 the probe runs on its first use, through the engine (which gathers the
weights); everywhere else when dpolab loads the model (`dpolab.training.policy.load_model`).

What cannot be reproduced stops with one line naming the class and what is missing. A model whose
final modules cannot be isolated still trains at its final layer; only intermediate layers (the
logit lens) are refused for it, with the reason (`Anatomy.lens_problem`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from dpolab.errors import DpolabError
from dpolab.modeling.probe import Found, LogitTransform, discover, eval_mode, linear_head, text_config
from dpolab.modeling.router import RouterSpec

__all__ = ["Anatomy", "LogitTransform", "anatomy", "eval_mode", "unwrap"]


@dataclass(frozen=True)
class Anatomy:
    """The parts of a causal LM that the layer-wise log-probs need.

    `blocks[k - 1]` outputs layer k (numbered from 1, as `hidden_states[k]` in Hugging Face terms);
    `num_layers` is L, the final layer. `final_norm` is everything the model runs between its last
    block and its head (one module, an `nn.Sequential` of several, or `nn.Identity`), and `logits`
    what it does after the head: the logit lens of layer k is `logits(head(final_norm(h_k)))`.
    """

    causal_lm: nn.Module
    blocks: nn.ModuleList
    final_norm: nn.Module
    head: nn.Linear
    num_layers: int
    logits: LogitTransform = field(default_factory=LogitTransform)
    lens_problem: str | None = None  # why intermediate layers cannot be read (None: they can)
    router: RouterSpec | None = None  # a mixture-of-experts model's routers

    @property
    def name(self) -> str:
        return type(self.causal_lm).__name__

    def check_lens(self) -> None:
        """Fail with the reason when the logit lens is not defined for this model."""
        if self.lens_problem is not None:
            raise DpolabError(
                f"{self.name}: intermediate layers (the logit lens: final norm + shared head) are not "
                f"defined for it: {self.lens_problem}; train the final layer only"
            )

    def describe(self) -> str:
        """One line for the log: where the parts are and what the logits get."""
        names = {id(m): n for n, m in self.causal_lm.named_modules()}
        final = self.final_norm
        modules = (
            list(final)
            if isinstance(final, nn.Sequential)
            else []
            if isinstance(final, nn.Identity)
            else [final]
        )
        final_names = " → ".join(names.get(id(m), type(m).__name__) for m in modules) or "none"
        lens = "logit lens defined" if self.lens_problem is None else "no logit lens"
        moe = f", router {self.router.describe()}" if self.router is not None else ""
        return (
            f"{self.name}: {self.num_layers} blocks ({names.get(id(self.blocks), '?')}), final modules "
            f"{final_names}, logit transform {self.logits.describe()}, {lens}{moe}"
        )


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


_FOUND: weakref.WeakKeyDictionary[nn.Module, Found] = weakref.WeakKeyDictionary()


def anatomy(model: nn.Module) -> Anatomy:
    """The decoder blocks, final modules, output head and logit transform of a (possibly wrapped)
    causal LM; discovered by a probe forward the first time a model is seen."""
    causal_lm = unwrap(model)
    found = _FOUND.get(causal_lm)
    if found is None:
        found = discover(causal_lm, model)
        _FOUND[causal_lm] = found
    modules = [causal_lm.get_submodule(name) for name in found.final]
    final = modules[0] if len(modules) == 1 else nn.Sequential(*modules) if modules else nn.Identity()
    blocks = causal_lm.get_submodule(found.blocks)
    return Anatomy(
        causal_lm=causal_lm,
        blocks=blocks,
        final_norm=final,
        head=linear_head(causal_lm),
        num_layers=len(blocks),
        logits=found.logits,
        lens_problem=found.lens_problem,
        router=found.router,
    )


def logprobs_agree(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether two computations of the same tokens' log-probs agree, for a model run in `dtype`:
    to 1e-4 per token in fp32 (the same maths in another order); in half precision, where two
    kernels round differently, to 0.05 on average and 1 at most (a wrong position, mask or logit
    transform moves them by far more, in a trained model; in a tiny random one, whose predictions
    are near uniform, by 1e-3 and up)."""
    if ours.numel() == 0:
        return True
    diff = (ours.double() - theirs.double()).abs()
    if dtype in (torch.float32, torch.float64):
        return bool(diff.max() <= 1e-4)
    return bool(diff.mean() <= 0.05 and diff.max() <= 1.0)


def check_supported(config) -> None:
    """Fail before any weight loads when a config cannot be a decoder-only causal LM; everything
    else is found from the model itself once loaded (`anatomy`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    archs = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
    if getattr(config, "is_encoder_decoder", False):
        raise DpolabError(
            f"model {archs} (model_type {model_type!r}) is an encoder-decoder model; dpolab trains "
            f"decoder-only causal LMs"
        )
    auto_map = getattr(config, "auto_map", None) or {}
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise DpolabError(
            f"model {archs} (model_type {model_type!r}) has no causal-LM class in transformers "
            f"(AutoModelForCausalLM); dpolab trains causal LMs"
        )


def num_layers_of(config) -> int:
    """L, the number of transformer blocks, read from a config (no weights needed)."""
    config = text_config(config)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise DpolabError(f"cannot tell the number of layers of {type(config).__name__}")


def first_param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32
