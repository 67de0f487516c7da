"""Completion log-probabilities from any layer, without the full `(batch, seq, vocab)` logits.

One forward pass of the model serves the final layer and every intermediate layer asked for:
hooks keep the outputs of the requested blocks, and the output head's own forward is replaced,
for that call only, by a function that

  1. gathers the hidden states at the positions that predict a completion token (no others),
  2. passes intermediate ones through the model's final modules (the logit lens; switchable off),
  3. projects them through the shared head in chunks of tokens (`token_logprobs`), with the
     model's own logit transform (Gemma 2's softcap, Cohere's scale: `dpolab.modeling.anatomy`),
  4. sums the log-probs of each sequence (the per-token ones are kept too, for the objectives
     that weigh tokens: LD-DPO, WPO).

The forward's inputs (masks, positions) come from the model's row layout
(`dpolab.modeling.layout`); a mixture-of-experts model's router logits can be read in the same
forward for its load-balancing loss (`dpolab.modeling.router`).

Running inside the head's forward keeps it inside the model's forward, so the wrappers that
gather sharded parameters around a module's forward (FSDP, DeepSpeed ZeRO-3) and DDP's gradient
hooks see an ordinary call. The log-probs are taken as the head returns them, not from the
forward's logits: the model applies its logit transform to whatever its head returns, and dpolab
has applied it already, inside the chunked projection.

Which hidden state scores which token is given by `TokenTargets`; `targets_from_completion_mask`
builds it for the usual layout (token t of a row predicted by position t − 1). The packed pair
layout of `dpolab.modeling.collate` (prompt once, then the chosen and the rejected completion, each seeing
the prompt but not each other) builds its own.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from dpolab.modeling.anatomy import Anatomy, anatomy
from dpolab.modeling.head import token_logprobs
from dpolab.modeling.layout import router_token_weights, row_layout
from dpolab.modeling.router import capture_router_logits, load_balancing_loss

# ----------------------------------------------------------------------------------------------
# Which hidden states score which tokens
# ----------------------------------------------------------------------------------------------


@dataclass
class TokenTargets:
    """The tokens to score: token `tokens[i]` is predicted by the hidden state at flat position
    `positions[i]` (an index into the `(batch·seq)` positions) and summed into sequence
    `segments[i]`, one of `num_segments`."""

    positions: torch.Tensor  # (N,) long
    tokens: torch.Tensor  # (N,) long
    segments: torch.Tensor  # (N,) long
    num_segments: int

    def num_tokens(self) -> torch.Tensor:
        """`(num_segments,)` number of scored tokens of each sequence (a scatter, not `bincount`,
        which reads the largest id back to the host on a GPU)."""
        ones = torch.ones_like(self.segments)
        return torch.zeros(self.num_segments, dtype=torch.long, device=self.segments.device).index_add_(
            0, self.segments, ones
        )


def targets_from_completion_mask(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> TokenTargets:
    """Targets for the usual layout: each row one sequence; token t (a completion token) is
    predicted by position t − 1. The first token of a row is never scored (nothing predicts it).

    Args:
        input_ids, completion_mask: `(B, T)`; completion_mask is 1 on completion tokens.
    """
    batch, seq = input_ids.shape
    mask = completion_mask.bool().clone()
    mask[:, 0] = False
    rows, cols = mask.nonzero(as_tuple=True)
    return TokenTargets(
        positions=rows * seq + cols - 1,
        tokens=input_ids[rows, cols],
        segments=rows,
        num_segments=batch,
    )


# ----------------------------------------------------------------------------------------------
# Layer-wise sequence log-probs
# ----------------------------------------------------------------------------------------------


@dataclass
class LayerLogprobs:
    """Summed completion log-probs of each sequence for each requested layer, and what they are
    sums of: each scored token's log-prob and sequence (None where made by hand from sums)."""

    layers: tuple[int, ...]  # layer numbers, the final layer being L
    logps: torch.Tensor  # (len(layers), num_segments) fp32 sums
    num_tokens: torch.Tensor  # (num_segments,) scored tokens per sequence
    token_logps: torch.Tensor | None = None  # (len(layers), N) each target token's log-prob
    segments: torch.Tensor | None = None  # (N,) the sequence of each target token
    log_sum_sq: torch.Tensor | None = None  # (len(layers), N) log Σ_v p_v² (detached), when asked
    # the prompts' own tokens (from each prompt's second), when asked: ORPO's NLL counts them
    prompt_logps: torch.Tensor | None = None  # (len(layers), num_prompts) sums
    prompt_num_tokens: torch.Tensor | None = None  # (num_prompts,)
    aux_loss: torch.Tensor | None = None  # () a MoE router's load-balancing loss, when asked

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.logps[self.layers.index(layer)]

    def averaged(self, layer: int) -> torch.Tensor:
        """Per-token mean log-prob of each sequence (IPO's length-averaged log-probs)."""
        return self[layer] / self.num_tokens.clamp(min=1).to(self.logps.dtype)


def _block_output(output):
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def _capture_blocks(parts: Anatomy, layers: Sequence[int], store: dict[int, torch.Tensor]):
    handles = []
    for k in layers:
        if k < parts.num_layers:

            def hook(_module, _inputs, output, k=k):
                store[k] = _block_output(output)

            handles.append(parts.blocks[k - 1].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _head_forward(head: nn.Module, forward):
    """Replace `head.forward` for the duration of one call, restoring whatever was there."""
    previous = head.__dict__.get("forward")
    head.forward = types.MethodType(forward, head)
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Layer numbers as given, with `None` meaning the final layer only; validated against L."""
    layers = (num_layers,) if layers is None else tuple(int(k) for k in layers)
    for k in layers:
        if not 1 <= k <= num_layers:
            raise ValueError(f"layer {k} is outside 1..{num_layers} for this model")
    return layers


def layer_logprobs(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int] | None = None,
    *,
    final_norm: bool = True,
    chunk_tokens: int | None = None,
    targets: TokenTargets | None = None,
    prompt_targets: TokenTargets | None = None,
    log_sum_sq: bool = False,
    router_aux: bool = False,
) -> LayerLogprobs:
    """Summed completion log-probs per sequence, for each layer in `layers`, from ONE forward pass.

    Args:
        model: a Hugging Face causal LM, possibly wrapped (peft, DDP, FSDP).
        batch: `input_ids` `(B, T)`; either `attention_mask` `(B, T)` (1 on real tokens, padding on
            either side) or `segment_ids` `(B, T)` with `position_ids` for packed rows (see
            `segment_attention_mask`; only for a model whose `row_layout` is packed); and
            `completion_mask` `(B, T)` unless `targets` is given.
        layers: layer numbers k ∈ 1..L (L = the final layer, the model's ordinary output); None
            means `[L]`. Layer k < L is `hidden_states[k]`, the output of the k-th block.
        final_norm: pass intermediate layers through the model's final norm before the head.
        chunk_tokens: tokens per chunk of the head projection.
        targets: which positions score which tokens; default from `completion_mask`.
        prompt_targets: further tokens to score in the same projection, summed apart into
            `prompt_logps` (the prompts' own tokens, for ORPO's NLL).
        log_sum_sq: also keep each target's `log Σ_v p_v²` (WPO), from inside the chunked head.
        router_aux: also compute a MoE model's load-balancing loss (`LayerLogprobs.aux_loss`).
    Returns:
        `LayerLogprobs` with `logps` `(len(layers), num_segments)`, and per-token `token_logps`.
    """
    parts = anatomy(model)
    layers = resolve_layers(layers, parts.num_layers)
    if any(k != parts.num_layers for k in layers):
        parts.check_lens()
    if router_aux and parts.router is None:
        raise ValueError(f"{parts.name} has no mixture-of-experts router to take a load-balancing loss of")
    input_ids = batch["input_ids"]
    if targets is None:
        targets = targets_from_completion_mask(input_ids, batch["completion_mask"])
    dtype = parts.head.weight.dtype if parts.head.weight.is_floating_point() else torch.float32
    inputs = row_layout(model).model_inputs(batch, dtype)
    transform = parts.logits

    captured: dict[int, torch.Tensor] = {}
    final_layer = parts.num_layers
    norm = parts.final_norm
    positions, tokens = targets.positions, targets.tokens
    if prompt_targets is not None:  # one projection for both, split after
        positions = torch.cat([positions, prompt_targets.positions])
        tokens = torch.cat([tokens, prompt_targets.tokens])
    sum_sq: list[torch.Tensor] = []  # per layer, detached: beside the forward's output

    def head_forward(head_self, hidden_states):
        per_layer = []
        for k in layers:
            h = hidden_states if k == final_layer else captured[k]
            h = h.reshape(-1, h.shape[-1]).index_select(0, positions)
            if k != final_layer and final_norm:
                h = norm(h)
            out = token_logprobs(
                h,
                head_self.weight,
                head_self.bias,
                tokens,
                chunk_tokens=chunk_tokens,
                log_sum_sq=log_sum_sq,
                scale=transform.scale,
                softcap=transform.softcap,
            )
            if log_sum_sq:
                out, layer_sum_sq = out
                sum_sq.append(layer_sum_sq)
            per_layer.append(out)
        # (len(layers), N [+ prompt tokens]) per-token log-probs, kept here as the head returns
        # them: the model may transform what its head returns (Gemma 2 softcaps it, Granite divides
        # it) into its `logits`, which are dropped. Returned all the same, so that they are the
        # head's output: FSDP and ZeRO-3 gather the head's weight again for the backward through
        # it by hooks on that output, and DDP finds the used parameters from the forward's outputs
        result = torch.stack(per_layer)
        head_results.append(result)
        return result

    head_results: list[torch.Tensor] = []
    router_logits: list[torch.Tensor] = []
    routers = (
        capture_router_logits(parts.causal_lm, parts.router, router_logits) if router_aux else nullcontext()
    )
    with _capture_blocks(parts, layers, captured), _head_forward(parts.head, head_forward), routers:
        output = model(**inputs, use_cache=False)
    if not head_results:
        raise RuntimeError(f"{parts.name}'s forward did not call its output head")
    del output  # its logits: what the model made of the head's log-probs
    n = targets.tokens.shape[0]
    token_lp = head_results[0]
    result = LayerLogprobs(
        layers=layers,
        logps=segment_sums(token_lp[:, :n], targets.segments, targets.num_segments),
        num_tokens=targets.num_tokens(),
        token_logps=token_lp[:, :n],
        segments=targets.segments,
        log_sum_sq=torch.stack(sum_sq)[:, :n] if log_sum_sq else None,
        aux_loss=(
            load_balancing_loss(parts.router, router_logits, router_token_weights(batch))
            if router_aux
            else None
        ),
    )
    if prompt_targets is not None:
        result.prompt_logps = segment_sums(
            token_lp[:, n:], prompt_targets.segments, prompt_targets.num_segments
        )
        result.prompt_num_tokens = prompt_targets.num_tokens()
    return result


def segment_sums(values: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """`(..., num_segments)` sums of `values` `(..., N)` by the sequence `segments[i]` of each."""
    out = values.new_zeros((*values.shape[:-1], num_segments))
    return out.index_add(-1, segments, values)
