"""Per-token log-probs through the output head, chunked: the full `(tokens, vocab)` logits never exist.

`token_logprobs(hidden, weight, bias, tokens)` projects `chunk_tokens` rows at a time; its
backward recomputes one chunk at a time (or, with a frozen head, keeps `softmax·W` per row). It
serves the final layer and every intermediate layer alike (`dpolab.modeling.logprobs`). Asked
for it, the same chunk loop also gives each row's `log Σ_v p_v²` (WPO's weights), detached.

    token_logprobs()
    ├── _gather_dtensor()            FSDP2: the full head weight, differentiably
    └── _ChunkedTokenLogprobs.apply()
        ├── forward: per chunk, logits → the model's transform (scale, softcap) → lse, target
        │            log-prob (Σ p·T'·W for a frozen head, log Σ p² when asked)
        └── backward: per chunk, logits again → (onehot − softmax)·T'·g → grads of hidden, W, b
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

# Logit elements per chunk: 2**24 floats are 64 MiB in fp32, i.e. 512 tokens at a 32k vocabulary.
DEFAULT_CHUNK_ELEMENTS = 2**24


def default_chunk_tokens(vocab_size: int, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(8, elements // max(1, vocab_size))


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


def _transform_(logits: torch.Tensor, scale: float, softcap: float | None):
    """The model's logit transform applied in place: `(y, t)` with y = c·tanh(s·z/c) and t the
    tanh (kept for the derivative) under a softcap c, else y = s·z and t None."""
    if softcap is None:
        return (logits.mul_(scale) if scale != 1.0 else logits), None
    t = logits.mul_(scale / softcap).tanh_()
    return t * softcap, t


def _transform_slope_(t: torch.Tensor | None, scale: float) -> torch.Tensor | float:
    """dy/dz of `_transform_`: s·(1 − t²) under a softcap (computed in place in t), else s."""
    return scale if t is None else t.square_().neg_().add_(1.0).mul_(scale)


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log softmax(T(h W^T + b))[target] for each row, `chunk` rows at a time, where T is the
    model's logit transform (a scale s, a softcap c: `dpolab.modeling.anatomy.LogitTransform`).

    Forward keeps, per row, only the log-partition `lse`. Backward recomputes each chunk's logits
    (one chunk alive at a time; two under a softcap, whose slope needs the tanh) to form
    d logp / d z = (onehot(target) − softmax)·T'(z). When the head is frozen (LoRA), forward instead
    keeps Σ_v p_v·T'(z_v)·W_v of each row, `(N, d)`, and T'(z_target), so that backward needs no
    recomputation: d logp / d h = T'(z_target)·W[target] − Σ_v p_v·T'(z_v)·W_v.

    The softmax is taken in place in each chunk's logits: one `(chunk, V)` tensor alive at a time.
    With `sum_sq`, the second output is `log Σ_v p_v²` of each row (no gradient), from the same
    chunk: `p = e/Σe` with `e = exp(logits − max)`, so `log Σ p² = 2·(log ‖e‖₂ − log Σe)`; the norm
    is one reduction over the chunk, with no second `(chunk, V)` tensor. Without it, the second
    output is empty.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, chunk, sum_sq, scale, softcap):
        n_rows = hidden.shape[0]
        acc = _accumulation_dtype(hidden.dtype)
        out = torch.empty(n_rows, dtype=acc, device=hidden.device)
        lse = torch.empty(n_rows, dtype=acc, device=hidden.device)
        log_sum_sq = torch.empty(n_rows if sum_sq else 0, dtype=acc, device=hidden.device)
        keep_expected = (
            ctx.needs_input_grad[0]
            and not ctx.needs_input_grad[1]
            and not (bias is not None and ctx.needs_input_grad[2])
        )
        expected = torch.empty_like(hidden) if keep_expected else None
        target_slope = torch.full((n_rows,), scale, dtype=acc, device=hidden.device)
        rows = torch.arange(min(chunk, n_rows), device=hidden.device)
        with _full_head(weight, bias) as (full_weight, full_bias):
            for start in range(0, n_rows, chunk):
                end = min(start + chunk, n_rows)
                logits, tanh = _transform_(
                    _chunk_logits(hidden[start:end], full_weight, full_bias), scale, softcap
                )
                target = logits.gather(1, tokens[start:end, None]).squeeze(1)
                top = logits.amax(dim=1, keepdim=True)
                sums = logits.sub_(top).exp_().sum(dim=1)  # the chunk now holds exp(logits − max)
                chunk_lse = top.squeeze(1) + sums.log()
                out[start:end] = target - chunk_lse
                lse[start:end] = chunk_lse
                if sum_sq:  # log Σ p² = log Σ e² − 2·log Σ e, with Σ e² = ‖e‖₂² (e ≤ 1, its max is 1)
                    norm = torch.linalg.vector_norm(logits, dim=1)
                    log_sum_sq[start:end] = 2.0 * (norm.log() - sums.log())
                if keep_expected:  # Σ p·T'·W = (exp(logits − max)·T'·W) / sum
                    if tanh is not None:
                        slope = _transform_slope_(tanh, scale)
                        target_slope[start:end] = slope[rows[: end - start], tokens[start:end]]
                        logits.mul_(slope)
                    elif scale != 1.0:
                        logits.mul_(scale)
                    mixed = logits.to(full_weight.dtype) @ full_weight
                    expected[start:end] = (mixed / sums[:, None].to(mixed.dtype)).to(hidden.dtype)
                del logits, tanh  # before the next chunk's product, or two chunks would be alive at once
        ctx.chunk = chunk
        ctx.has_bias = bias is not None
        ctx.scale, ctx.softcap = scale, softcap
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
            target_slope if keep_expected else hidden.new_empty(0),
        )
        ctx.keep_expected = keep_expected
        ctx.mark_non_differentiable(log_sum_sq)
        return out, log_sum_sq

    @staticmethod
    def backward(ctx, grad_out, _grad_log_sum_sq):
        hidden, weight, bias, tokens, lse, expected, target_slope = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = _accumulation_dtype(hidden.dtype)
        grad_out = grad_out.to(acc)
        none = (None,) * 5
        autocast = (
            torch.autocast(hidden.device.type, dtype=ctx.autocast_dtype)
            if ctx.autocast_dtype is not None
            else nullcontext()
        )
        with _full_head(weight, bias) as (weight, bias), autocast:
            if ctx.keep_expected:
                target_rows = weight[tokens].to(hidden.dtype) * target_slope[:, None].to(hidden.dtype)
                grad_hidden = grad_out[:, None].to(hidden.dtype) * (target_rows - expected)
                return grad_hidden, None, None, *none

            n_rows, vocab = hidden.shape[0], weight.shape[0]
            grad_hidden = torch.empty_like(hidden) if need_h else None
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_bias = torch.zeros(vocab, dtype=acc, device=weight.device) if need_b else None
            rows = torch.arange(ctx.chunk, device=hidden.device)
            for start in range(0, n_rows, ctx.chunk):
                end = min(start + ctx.chunk, n_rows)
                g = grad_out[start:end]
                h = hidden[start:end]
                # d logp/d y = onehot(target) − softmax; times the incoming gradient g, row by row,
                # then times the transform's slope dy/dz
                grad_logits, tanh = _transform_(_chunk_logits(h, weight, bias), ctx.scale, ctx.softcap)
                grad_logits.sub_(lse[start:end, None]).exp_().mul_(-g[:, None])
                grad_logits[rows[: end - start], tokens[start:end]] += g
                if tanh is not None:
                    grad_logits.mul_(_transform_slope_(tanh, ctx.scale))
                elif ctx.scale != 1.0:
                    grad_logits.mul_(ctx.scale)
                del tanh
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
            *none,
        )


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    tokens: torch.Tensor,
    *,
    chunk_tokens: int | None = None,
    log_sum_sq: bool = False,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(token | hidden) for each row, never holding more than `chunk_tokens` rows of logits.

    Args:
        hidden: `(N, d)` hidden states (already through the final norm, if any).
        weight: `(V, d)` output head weight; bias: `(V,)` or None.
        tokens: `(N,)` target token ids.
        chunk_tokens: rows per chunk (default: 64 MiB of fp32 logits).
        log_sum_sq: also return `log Σ_v p_v²` of each row's distribution (WPO's weights), detached.
        scale, softcap: the model's logit transform, logits = c·tanh(s·z/c) (softcap c), else s·z,
            z = h W^T + b (`dpolab.modeling.anatomy.LogitTransform`).
    Returns:
        `(N,)` fp32 log-probs (fp64 for fp64 inputs), differentiable w.r.t. hidden, weight and bias;
        with `log_sum_sq`, the pair (log-probs, `(N,)` log Σ p², no gradient).

    Naive equivalent (what the tests compare against), for fp32 and the half types:
        logp = torch.log_softmax(T((hidden @ weight.T + bias).float()), -1)   # T: scale, softcap
        logp.gather(1, tokens[:, None]).squeeze(1), torch.logsumexp(2 * logp, -1)
    """
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive number of rows, got {chunk_tokens}")
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0])
    weight, bias = _gather_dtensor(weight), _gather_dtensor(bias)  # FSDP2: the full head, differentiably
    if hidden.shape[0] == 0:
        # keep the result connected to the graph, so that an empty batch still back-propagates zeros
        empty = hidden.sum(dim=-1).to(_accumulation_dtype(hidden.dtype)) + weight.sum() * 0
        return (empty, empty.detach()) if log_sum_sq else empty
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be positive, got {softcap}")
    out, sum_sq = _ChunkedTokenLogprobs.apply(
        hidden,
        weight,
        bias,
        tokens,
        chunk,
        log_sum_sq,
        float(scale),
        None if softcap is None else float(softcap),
    )
    return (out, sum_sq) if log_sum_sq else out
