"""The chunked head projection `token_logprobs` against the naive full-logits computation, on
odd shapes, values and gradients, every dtype and both backward paths."""

from __future__ import annotations

import math

import pytest
import torch

import dpolab.modeling.head as head_module
from dpolab.modeling.head import default_chunk_tokens, token_logprobs

N, V, D = 37 * 3, 101, 19  # rows, vocabulary, hidden size: odd on purpose
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def naive_token_logprobs(hidden, weight, bias, tokens):
    """The full `(N, V)` logits, log_softmax, gather: what `token_logprobs` must equal."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    return torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)


def _head_inputs(dtype, *, bias: bool, seed: int = 0, n: int = N):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, D, generator=g)
    weight = 0.3 * torch.randn(V, D, generator=g)
    b = 0.1 * torch.randn(V, generator=g) if bias else None
    tokens = torch.randint(0, V, (n,), generator=g)
    upstream = torch.randn(n, generator=g)  # a non-uniform incoming gradient
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(hidden), cast(weight), cast(b), tokens, upstream


# which inputs want gradients: everything; a frozen head (LoRA: hidden only, the backward that
# keeps softmax·W instead of recomputing); the head only (hidden frozen); a frozen weight with a
# trainable bias (must take the recomputing backward)
GRAD_MODES = {
    "all": (True, True, True),
    "frozen_head": (True, False, False),
    "head_only": (False, True, True),
    "frozen_weight_trainable_bias": (True, False, True),
}


def _run(fn, hidden, weight, bias, tokens, upstream, mode, **kwargs):
    wants = GRAD_MODES[mode]
    leaves = [
        t.detach().clone().requires_grad_(w) if t is not None else None
        for t, w in zip((hidden, weight, bias), wants)
    ]
    out = fn(*leaves, tokens, **kwargs)
    grad_of = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), grad_of)
    return out, grads


@pytest.mark.parametrize(
    "bias,mode",
    [(b, m) for b in (True, False) for m in GRAD_MODES if b or m != "frozen_weight_trainable_bias"],
)
@pytest.mark.parametrize("chunk", [1, 7, 37, N, 500])  # 37 and N divide N = 111; 1, 7 and 500 do not
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_token_logprobs_match_naive(dtype, bias, chunk, mode):
    inputs = _head_inputs(dtype, bias=bias, seed=chunk)
    out, grads = _run(token_logprobs, *inputs, mode, chunk_tokens=chunk)
    ref, ref_grads = _run(naive_token_logprobs, *inputs, mode)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == (N,)
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    assert len(grads) == len(ref_grads) > 0
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["all", "frozen_head"])
@pytest.mark.parametrize("chunk", [7, 37])
def test_token_logprobs_bf16(chunk, mode):
    """bf16 inputs: as close to the exact (float64) values as the naive bf16 computation is."""
    h, w, b, tokens, upstream = _head_inputs(torch.bfloat16, bias=True, seed=3)
    out, grads = _run(token_logprobs, h, w, b, tokens, upstream, mode, chunk_tokens=chunk)
    exact, exact_grads = _run(
        naive_token_logprobs, h.double(), w.double(), b.double(), tokens, upstream, mode
    )
    naive, naive_grads = _run(naive_token_logprobs, h, w, b, tokens, upstream, mode)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=2e-2, atol=5e-2)
    err = (out.double() - exact).abs().max()
    assert err <= 2 * (naive.double() - exact).abs().max() + 1e-3
    for g, e, n in zip(grads, exact_grads, naive_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.double(), e, rtol=2e-2, atol=5e-2)
        assert (g.double() - e).abs().max() <= 2 * (n.double() - e).abs().max() + 1e-3


def naive_transformed(scale, softcap):
    """`naive_token_logprobs` of the model's transformed logits: c·tanh(s·z/c), else s·z."""

    def naive(hidden, weight, bias, tokens):
        logits = hidden @ weight.t()
        if bias is not None:
            logits = logits + bias
        logits = (logits.double() if logits.dtype == torch.float64 else logits.float()) * scale
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)

    return naive


TRANSFORMS = [(0.25, None), (3.0, None), (1.0, 0.7), (2.0, 1.5)]  # Granite-, Cohere- and Gemma-like


@pytest.mark.parametrize("scale,softcap", TRANSFORMS)
@pytest.mark.parametrize("mode", list(GRAD_MODES))
@pytest.mark.parametrize("chunk", [7, N])
def test_token_logprobs_with_the_models_logit_transform(chunk, mode, scale, softcap):
    """The transform applied inside the chunk loop: values and every backward path (the frozen
    head's keeps Σ p·T'·W) as the naive full logits give them."""
    inputs = _head_inputs(torch.float64, bias=True, seed=chunk)
    out, grads = _run(token_logprobs, *inputs, mode, chunk_tokens=chunk, scale=scale, softcap=softcap)
    ref, ref_grads = _run(naive_transformed(scale, softcap), *inputs, mode)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    # the transform changes the values (a test of it that passes without it proves nothing)
    plain = token_logprobs(*inputs[:4], chunk_tokens=chunk)
    assert (plain - out).abs().max() > 1e-2


def test_logit_transform_hand_worked():
    # one row, V = 2, z = [0, 2]; softcap c = 1: y = [0, tanh 2] = [0, 0.9640275800758169]
    # log p_1 = y_1 − log(1 + e^{y_1}) = −0.32511...
    hidden = torch.tensor([[1.0]], dtype=torch.float64)
    weight = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    y1 = math.tanh(2.0)
    expected = y1 - math.log(1 + math.exp(y1))
    assert abs(token_logprobs(hidden, weight, None, torch.tensor([1]), softcap=1.0).item() - expected) < 1e-12
    # scale s = 0.5: y = [0, 1], log p_1 = 1 − log(1 + e)
    scaled = token_logprobs(hidden, weight, None, torch.tensor([1]), scale=0.5).item()
    assert abs(scaled - (1 - math.log(1 + math.e))) < 1e-12
    with pytest.raises(ValueError, match="softcap must be positive"):
        token_logprobs(hidden, weight, None, torch.tensor([1]), softcap=0.0)


@pytest.mark.parametrize("mode", ["all", "frozen_head"])
def test_token_logprobs_gradcheck(mode):
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=mode == "all")
    bias = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=mode == "all")
    tokens = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(
        lambda h, w, b: token_logprobs(h, w, b, tokens, chunk_tokens=2), (hidden, weight, bias)
    )


@pytest.mark.parametrize("mode,backward_calls", [("all", 16), ("frozen_head", 0)])
def test_chunks_bound_the_logits_and_frozen_head_does_not_recompute(monkeypatch, mode, backward_calls):
    """Never more than `chunk` rows of logits at once; the trainable-head backward recomputes each
    chunk once (⌈111/7⌉ = 16 chunks), the frozen-head backward recomputes none."""
    calls: list[int] = []
    original = head_module._chunk_logits

    def counting(hidden, weight, bias):
        calls.append(hidden.shape[0])
        return original(hidden, weight, bias)

    monkeypatch.setattr(head_module, "_chunk_logits", counting)
    h, w, b, tokens, upstream = _head_inputs(torch.float32, bias=True)
    wants = GRAD_MODES[mode]
    leaves = [t.clone().requires_grad_(x) for t, x in zip((h, w, b), wants)]
    out = token_logprobs(*leaves, tokens, chunk_tokens=7)
    assert len(calls) == 16 and max(calls) == 7 and sum(calls) == N
    (out * upstream).sum().backward()
    assert len(calls) == 16 + backward_calls
    assert max(calls) == 7


def test_token_logprobs_empty_backpropagates_zeros():
    hidden = torch.randn(0, D, requires_grad=True)
    weight = torch.randn(V, D, requires_grad=True)
    out = token_logprobs(hidden, weight, None, torch.zeros(0, dtype=torch.long), chunk_tokens=4)
    assert out.shape == (0,) and out.dtype == torch.float32
    out.sum().backward()
    assert hidden.grad.shape == (0, D)
    assert torch.equal(weight.grad, torch.zeros(V, D))


def test_default_chunk_tokens():
    # 2**24 elements of logits per chunk: 512 tokens at a 32768 vocabulary, never fewer than 8
    assert default_chunk_tokens(32768) == 512
    assert default_chunk_tokens(128 * 1024) == 128
    assert default_chunk_tokens(2**30) == 8
    assert default_chunk_tokens(1000, elements=7000) == 8
    assert default_chunk_tokens(100, elements=7000) == 70


def test_chunk_tokens_must_be_positive():
    hidden, weight, bias, tokens, _ = _head_inputs(torch.float32, bias=False)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_tokens must be a positive"):
            token_logprobs(hidden, weight, bias, tokens, chunk_tokens=bad)


def naive_log_sum_sq(hidden, weight, bias, tokens):
    """log Σ_v p_v² from the full `(N, V)` logits: logsumexp(2·log_softmax)."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.double() if logits.dtype == torch.float64 else logits.float()
    return torch.logsumexp(2 * torch.log_softmax(logits, dim=-1), dim=-1)


@pytest.mark.parametrize("chunk", [1, 7, N, 500])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_sum_sq_matches_the_full_logits(dtype, chunk):
    """WPO's log Σ_v p_v², from inside the chunk loop, equals the naive full-logits value; the
    log-probs and their gradients stay what they are without it, and it carries no gradient."""
    hidden, weight, bias, tokens, upstream = _head_inputs(dtype, bias=True, seed=11 + chunk)
    leaves = [t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias)]
    logps, sum_sq = token_logprobs(*leaves, tokens, chunk_tokens=chunk, log_sum_sq=True)
    grads = torch.autograd.grad((logps * upstream.to(logps.dtype)).sum(), leaves)
    plain, plain_grads = _run(
        token_logprobs, hidden, weight, bias, tokens, upstream, "all", chunk_tokens=chunk
    )
    tol = TOL[dtype]
    torch.testing.assert_close(sum_sq, naive_log_sum_sq(hidden, weight, bias, tokens), rtol=tol, atol=tol)
    torch.testing.assert_close(logps.detach(), plain.detach(), rtol=0, atol=0)
    for g, r in zip(grads, plain_grads):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)
    assert not sum_sq.requires_grad and sum_sq.dtype == logps.dtype and sum_sq.shape == (N,)
    # log(1/V) ≤ log Σ p² ≤ 0: between the uniform distribution's and a one-hot's
    assert (sum_sq <= 1e-6).all() and (sum_sq >= -math.log(V) - 1e-6).all()


def test_log_sum_sq_hand_worked():
    # one row, V = 2, logits [0, log 3]: p = [1/4, 3/4], Σ p² = 1/16 + 9/16 = 10/16 → log 0.625
    hidden = torch.tensor([[1.0]], dtype=torch.float64)
    weight = torch.tensor([[0.0], [1.0986122886681098]], dtype=torch.float64)
    logp, sum_sq = token_logprobs(hidden, weight, None, torch.tensor([1]), log_sum_sq=True)
    assert abs(logp.item() - (-0.2876820724517809)) < 1e-12  # log 3/4
    assert abs(sum_sq.item() - (-0.4700036292457356)) < 1e-12  # log 0.625


def test_log_sum_sq_keeps_the_chunk_bound(monkeypatch):
    """Asking for log Σ p² adds no logits and no chunk larger than `chunk`: the same 16 chunks of ≤ 7 rows."""
    calls: list[int] = []
    original = head_module._chunk_logits

    def counting(hidden, weight, bias):
        calls.append(hidden.shape[0])
        return original(hidden, weight, bias)

    monkeypatch.setattr(head_module, "_chunk_logits", counting)
    h, w, b, tokens, _ = _head_inputs(torch.float32, bias=True)
    token_logprobs(h, w, b, tokens, chunk_tokens=7, log_sum_sq=True)
    assert len(calls) == 16 and max(calls) == 7 and sum(calls) == N
    empty, empty_sq = token_logprobs(h[:0], w, b, tokens[:0], chunk_tokens=7, log_sum_sq=True)
    assert empty.shape == empty_sq.shape == (0,)
