"""Mixture-of-experts routers: where they are, their logits during a forward, the load-balancing loss.

A MoE model records its router logits through transformers' output recorders
(`_can_record_outputs["router_logits"]`: the router class and which output is the logits). dpolab
reads the same modules with its own forward hooks, because the model's own `aux_loss` takes the
2-D attention mask of plain rows and dpolab's pair rows carry a 4-D one. The loss itself is the
family's own `load_balancing_loss_func` (Mixtral's, which TRL uses for every family, where the
family's module has none), with each token weighted by how many of TRL's rows hold it
(`dpolab.modeling.layout.router_token_weights`), so that it equals TRL's value for the same pairs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "top_k", "moe_topk", "num_selected_experts")


@dataclass(frozen=True)
class RouterSpec:
    """The router modules of a MoE model (`target` instances; output `index` is their logits)."""

    target: type
    index: int
    num_experts: int
    top_k: int
    loss_fn: Callable

    def describe(self) -> str:
        return f"{self.target.__name__} ({self.num_experts} experts, top {self.top_k})"


def _first_int(objects, names) -> int | None:
    for obj in objects:
        for name in names:
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def find_router(causal_lm: nn.Module) -> RouterSpec | None:
    """The routers of a MoE causal LM, or None for a dense model (or one whose expert count and
    top-k dpolab cannot read)."""
    from transformers.utils.output_capturing import OutputRecorder

    spec = None
    for module in causal_lm.modules():
        recorders = getattr(module, "_can_record_outputs", None)
        if isinstance(recorders, dict) and "router_logits" in recorders:
            spec = recorders["router_logits"]
            spec = spec[0] if isinstance(spec, list) else spec
            break
    if spec is None:
        return None
    target, index = (spec.target_class, spec.index) if isinstance(spec, OutputRecorder) else (spec, 0)
    if not isinstance(target, type):
        return None
    config = causal_lm.config
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    experts = _first_int((causal_lm, text), _EXPERTS)
    top_k = _first_int((causal_lm, text), _TOP_K)
    if experts is None or top_k is None:
        return None
    loss_fn = getattr(sys.modules.get(type(causal_lm).__module__), "load_balancing_loss_func", None)
    if loss_fn is None:
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as loss_fn
    return RouterSpec(target=target, index=index, num_experts=experts, top_k=top_k, loss_fn=loss_fn)


def aux_loss_coefficient(parts, requested: float | None) -> float:
    """The weight of the load-balancing loss in a run, as TRL's DPOTrainer takes it: `requested`
    (`model.router_aux_loss_coef`), else the model config's `router_aux_loss_coef`, else 0; a
    weight asked of a model without routers is an error."""
    from dpolab.errors import DpolabError

    if parts.router is None:
        if requested:
            raise DpolabError(
                f"model.router_aux_loss_coef is {requested}, but {parts.name} is not a mixture-of-experts "
                f"model whose routers dpolab reads; remove it"
            )
        return 0.0
    config = parts.causal_lm.config
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    coef = getattr(text, "router_aux_loss_coef", 0.0) if requested is None else requested
    return float(coef or 0.0)


@contextmanager
def capture_router_logits(causal_lm: nn.Module, spec: RouterSpec, store: list[torch.Tensor]):
    """Append each router's logits, `(tokens, num_experts)`, to `store` during the block, in the
    order the routers run (layer by layer)."""

    def hook(_module, _inputs, output):
        value = output[spec.index] if isinstance(output, tuple | list) else output
        store.append(value)

    handles = [m.register_forward_hook(hook) for m in causal_lm.modules() if isinstance(m, spec.target)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def load_balancing_loss(
    spec: RouterSpec, router_logits: list[torch.Tensor], token_weights: torch.Tensor
) -> torch.Tensor:
    """The family's load-balancing loss of one forward, each token weighted by `token_weights`
    `(B, T)` (0 on padding) where the family's function takes the attention mask."""
    if not router_logits:
        raise ValueError("no router logits were recorded: the routers did not run")
    weights = token_weights.to(router_logits[0].device, torch.float32)
    return spec.loss_fn(tuple(router_logits), spec.num_experts, spec.top_k, weights)
