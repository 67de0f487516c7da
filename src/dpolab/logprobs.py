"""Completion log-probabilities from any layer, without the full `(batch, seq, vocab)` logits.

One forward pass of the model serves the final layer and every intermediate layer asked for:
hooks keep the outputs of the requested blocks, and the output head's own forward is replaced,
for that call only, by a function that

  1. gathers the hidden states at the positions that predict a completion token (no others),
  2. passes intermediate ones through the model's final norm (the logit lens; switchable off),
  3. projects them through the shared head in chunks of tokens (`token_logprobs`), and
  4. sums the log-probs of each sequence.

Running inside the head's forward keeps it inside the model's forward, so the wrappers that
gather sharded parameters around a module's forward (FSDP, DeepSpeed ZeRO-3) and DDP's gradient
hooks see an ordinary call.

Which hidden state scores which token is given by `TokenTargets`; `targets_from_completion_mask`
builds it for the usual layout (token t of a row predicted by position t − 1). The packed pair
layout of `dpolab.collate` (prompt once, then the chosen and the rejected completion, each seeing
the prompt but not each other) builds its own.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from dpolab.architectures import Anatomy, anatomy

# Logit elements per chunk: 2**24 floats are 64 MiB in fp32, i.e. 512 tokens at a 32k vocabulary.
DEFAULT_CHUNK_ELEMENTS = 2**24


def default_chunk_tokens(vocab_size: int, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(8, elements // max(1, vocab_size))


# ----------------------------------------------------------------------------------------------
# Per-token log-probs through the output head, chunked
# ----------------------------------------------------------------------------------------------


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32 and the half types; fp64 stays fp64 (never a downcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`(n, V)` fp32 (fp64 for fp64 inputs) logits of one chunk (matmul in the model's dtype, as the
    model's own head)."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    return logits.to(_accumulation_dtype(logits.dtype))


def _gather_dtensor(param: torch.Tensor | None) -> torch.Tensor | None:
    """An FSDP2 (`DTensor`) parameter as a full tensor, differentiably; anything else as it is."""
    if param is None or not torch.distributed.is_available():
        return param
    from torch.distributed.tensor import DTensor

    return param.full_tensor() if isinstance(param, DTensor) else param


@contextmanager
def _full_head(weight: torch.Tensor, bias: torch.Tensor | None):
    """The head's weight and bias gathered where DeepSpeed ZeRO-3 has partitioned them.

    Inside the head module's forward (where dpolab computes log-probs) ZeRO-3 has gathered them
    already, and its pre-backward hook gathers them again for the backward; this covers a call
    from anywhere else, as TRL's `maybe_gather_lm_head_ctx` does."""
    partitioned = [p for p in (weight, bias) if p is not None and _zero3_partitioned(p)]
    if not partitioned:
        yield weight, bias
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned):
        yield weight, bias


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes products in on this device type, or None where it is off."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:  # a device type autocast does not know
        return None


def _zero3_partitioned(param: torch.Tensor) -> bool:
    status = getattr(param, "ds_status", None)
    return status is not None and status.name != "AVAILABLE"


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log softmax(h W^T + b)[target] for each row, `chunk` rows at a time.

    Forward keeps, per row, only the log-partition `lse`. Backward recomputes each chunk's logits
    (one chunk alive at a time) to form d logp / d logits = onehot(target) − softmax. When the head
    is frozen (LoRA), forward instead keeps the expected output embedding softmax·W of each row,
    `(N, d)`, so that backward needs no recomputation: d logp / d h = W[target] − softmax·W.

    The softmax is taken in place in each chunk's logits: one `(chunk, V)` tensor alive at a time.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, chunk):
        n_rows = hidden.shape[0]
        acc = _accumulation_dtype(hidden.dtype)
        out = torch.empty(n_rows, dtype=acc, device=hidden.device)
        lse = torch.empty(n_rows, dtype=acc, device=hidden.device)
        keep_expected = (
            ctx.needs_input_grad[0]
            and not ctx.needs_input_grad[1]
            and not (bias is not None and ctx.needs_input_grad[2])
        )
        expected = torch.empty_like(hidden) if keep_expected else None
        with _full_head(weight, bias) as (full_weight, full_bias):
            for start in range(0, n_rows, chunk):
                end = min(start + chunk, n_rows)
                logits = _chunk_logits(hidden[start:end], full_weight, full_bias)
                target = logits.gather(1, tokens[start:end, None]).squeeze(1)
                top = logits.amax(dim=1, keepdim=True)
                sums = logits.sub_(top).exp_().sum(dim=1)  # the chunk now holds exp(logits − max)
                chunk_lse = top.squeeze(1) + sums.log()
                out[start:end] = target - chunk_lse
                lse[start:end] = chunk_lse
                if keep_expected:  # softmax·W = (exp(logits − max)·W) / sum
                    mixed = logits.to(full_weight.dtype) @ full_weight
                    expected[start:end] = (mixed / sums[:, None].to(mixed.dtype)).to(hidden.dtype)
                del logits  # before the next chunk's product, or two chunks would be alive at once
        ctx.chunk = chunk
        ctx.has_bias = bias is not None
        # the backward's recomputation must round the logits as this forward did (under autocast, the
        # product is taken in the autocast dtype; backward would otherwise run outside autocast)
        ctx.autocast_dtype = _autocast_dtype(hidden.device.type)
        ctx.save_for_backward(
            hidden,
            weight,
            bias if bias is not None else hidden.new_empty(0),
            tokens,
            lse,
            expected if keep_expected else hidden.new_empty(0),
        )
        ctx.keep_expected = keep_expected
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, tokens, lse, expected = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = _accumulation_dtype(hidden.dtype)
        grad_out = grad_out.to(acc)
        autocast = (
            torch.autocast(hidden.device.type, dtype=ctx.autocast_dtype)
            if ctx.autocast_dtype is not None
            else nullcontext()
        )
        with _full_head(weight, bias) as (weight, bias), autocast:
            if ctx.keep_expected:
                grad_hidden = grad_out[:, None].to(hidden.dtype) * (
                    weight[tokens].to(hidden.dtype) - expected
                )
                return grad_hidden, None, None, None, None

            n_rows, vocab = hidden.shape[0], weight.shape[0]
            grad_hidden = torch.empty_like(hidden) if need_h else None
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_bias = torch.zeros(vocab, dtype=acc, device=weight.device) if need_b else None
            rows = torch.arange(ctx.chunk, device=hidden.device)
            for start in range(0, n_rows, ctx.chunk):
                end = min(start + ctx.chunk, n_rows)
                g = grad_out[start:end]
                h = hidden[start:end]
                # d logp/d logits = onehot(target) − softmax; times the incoming gradient g, row by row
                grad_logits = _chunk_logits(h, weight, bias)
                grad_logits.sub_(lse[start:end, None]).exp_().mul_(-g[:, None])
                grad_logits[rows[: end - start], tokens[start:end]] += g
                if need_h:
                    if grad_hidden.dtype == acc and weight.dtype == acc:
                        torch.mm(grad_logits, weight, out=grad_hidden[start:end])
                    else:
                        grad_hidden[start:end] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:
                    grad_weight.addmm_(grad_logits.t(), h.to(acc))
                if need_b:
                    grad_bias += grad_logits.sum(dim=0)
                del grad_logits
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if need_w else None,
            grad_bias.to(bias.dtype) if need_b else None,
            None,
            None,
        )


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """log p(token | hidden) for each row, never holding more than `chunk_tokens` rows of logits.

    Args:
        hidden: `(N, d)` hidden states (already through the final norm, if any).
        weight: `(V, d)` output head weight; bias: `(V,)` or None.
        tokens: `(N,)` target token ids.
        chunk_tokens: rows per chunk (default: 64 MiB of fp32 logits).
    Returns:
        `(N,)` fp32 log-probs (fp64 for fp64 inputs), differentiable w.r.t. hidden, weight and bias.

    Naive equivalent (what the tests compare against), for fp32 and the half types:
        torch.log_softmax((hidden @ weight.T + bias).float(), -1).gather(1, tokens[:, None]).squeeze(1)
    """
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive number of rows, got {chunk_tokens}")
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0])
    weight, bias = _gather_dtensor(weight), _gather_dtensor(bias)  # FSDP2: the full head, differentiably
    if hidden.shape[0] == 0:
        # keep the result connected to the graph, so that an empty batch still back-propagates zeros
        return hidden.sum(dim=-1).to(_accumulation_dtype(hidden.dtype)) + weight.sum() * 0
    return _ChunkedTokenLogprobs.apply(hidden, weight, bias, tokens, chunk)


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
# Attention for packed rows
# ----------------------------------------------------------------------------------------------


def segment_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive `(B, 1, T, T)` mask for rows that pack a prompt with its completions.

    `segment_ids` is `(B, T)`: 0 on padding; otherwise segment s ≥ 1, grouped in threes per pair,
    3p+1 the prompt, 3p+2 the chosen and 3p+3 the rejected completion of pair p in the row (a
    plain sequence is simply segment 1). Token i sees token j ≤ i of its own segment and of its
    segment's prompt, so each completion sees the prompt and itself, never the other completion.
    Padding sees only itself (a row of −inf would turn into NaN).
    """
    seq = segment_ids.shape[1]
    seg = segment_ids
    prompt_of = seg - (seg - 1).remainder(3)  # 3p+1 for every segment of pair p
    causal = torch.ones(seq, seq, dtype=torch.bool, device=seg.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    sees_prompt = prompt_of[:, :, None] == seg[:, None, :]
    allowed = causal & (same | sees_prompt) & (seg[:, :, None] > 0)
    allowed |= torch.eye(seq, dtype=torch.bool, device=seg.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def positions_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (right or left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------
# Layer-wise sequence log-probs
# ----------------------------------------------------------------------------------------------


@dataclass
class LayerLogprobs:
    """Summed completion log-probs of each sequence for each requested layer."""

    layers: tuple[int, ...]  # layer numbers, the final layer being L
    logps: torch.Tensor  # (len(layers), num_segments) fp32 sums
    num_tokens: torch.Tensor  # (num_segments,) scored tokens per sequence

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
) -> LayerLogprobs:
    """Summed completion log-probs per sequence, for each layer in `layers`, from ONE forward pass.

    Args:
        model: a Hugging Face causal LM of a supported family, possibly wrapped (peft, DDP, FSDP).
        batch: `input_ids` `(B, T)`; either `attention_mask` `(B, T)` (1 on real tokens, padding on
            either side) or `segment_ids` `(B, T)` with `position_ids` for packed rows (see
            `segment_attention_mask`); and `completion_mask` `(B, T)` unless `targets` is given.
        layers: layer numbers k ∈ 1..L (L = the final layer, the model's ordinary output); None
            means `[L]`. Layer k < L is `hidden_states[k]`, the output of the k-th block.
        final_norm: pass intermediate layers through the model's final norm before the head.
        chunk_tokens: tokens per chunk of the head projection.
        targets: which positions score which tokens; default from `completion_mask`.
    Returns:
        `LayerLogprobs` with `logps` `(len(layers), num_segments)`.
    """
    parts = anatomy(model)
    layers = resolve_layers(layers, parts.num_layers)
    input_ids = batch["input_ids"]
    if targets is None:
        targets = targets_from_completion_mask(input_ids, batch["completion_mask"])
    segment_ids = batch.get("segment_ids")
    if segment_ids is not None:
        dtype = parts.head.weight.dtype if parts.head.weight.is_floating_point() else torch.float32
        attention_mask = segment_attention_mask(segment_ids, dtype)
        position_ids = batch["position_ids"]
    else:
        attention_mask = batch["attention_mask"]
        position_ids = batch.get("position_ids")
        if position_ids is None:
            position_ids = positions_from_attention_mask(attention_mask)

    captured: dict[int, torch.Tensor] = {}
    final_layer = parts.num_layers
    norm = parts.final_norm

    def head_forward(head_self, hidden_states):
        per_layer = []
        for k in layers:
            h = hidden_states if k == final_layer else captured[k]
            h = h.reshape(-1, h.shape[-1]).index_select(0, targets.positions)
            if k != final_layer and final_norm:
                h = norm(h)
            token_lp = token_logprobs(
                h, head_self.weight, head_self.bias, targets.tokens, chunk_tokens=chunk_tokens
            )
            sums = token_lp.new_zeros(targets.num_segments).index_add(0, targets.segments, token_lp)
            per_layer.append(sums)
        return torch.stack(per_layer)

    with _capture_blocks(parts, layers, captured), _head_forward(parts.head, head_forward):
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    return LayerLogprobs(layers=layers, logps=output.logits, num_tokens=targets.num_tokens())


def naive_layer_logprobs(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int] | None = None,
    *,
    final_norm: bool = True,
) -> LayerLogprobs:
    """The same as `layer_logprobs` the obvious way: `output_hidden_states=True`, full logits for
    every position, `log_softmax` over the vocabulary. For tests and small analyses only."""
    parts = anatomy(model)
    layers = resolve_layers(layers, parts.num_layers)
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    attention_mask = batch["attention_mask"]
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = positions_from_attention_mask(attention_mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=True,
        use_cache=False,
    )
    shift_mask = completion_mask[:, 1:].float()
    shift_tokens = input_ids[:, 1:]
    result = []
    for k in layers:
        if k == parts.num_layers:
            logits = out.logits.float()
        else:
            h = out.hidden_states[k]
            if final_norm:
                h = parts.final_norm(h)
            logits = parts.head(h).float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, shift_tokens[..., None]).squeeze(-1)
        result.append((logp * shift_mask).sum(-1))
    return LayerLogprobs(layers=layers, logps=torch.stack(result), num_tokens=shift_mask.sum(-1).long())
