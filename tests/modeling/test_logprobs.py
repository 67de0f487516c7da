"""Layer-wise completion log-probs against the naive full-logits computation.

Part 2 tests the target/mask helpers on literal tensors (part 1, the chunked head, is
test_head.py). Part 3 tests `layer_logprobs` on tiny models of every supported family: against
`naive_layer_logprobs`, against the model's ordinary forward, against `hidden_states[k]`, under
left padding, and in the packed pair layout.
"""

from __future__ import annotations

import functools
import operator
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dpolab.errors import DpolabError
from dpolab.modeling.attention import positions_from_attention_mask, segment_attention_mask
from dpolab.modeling.collate import PairCollator, batch_prompt_targets, batch_targets
from dpolab.modeling.layout import row_layout
from dpolab.modeling.logprobs import layer_logprobs, targets_from_completion_mask
from dpolab.testing import TINY_MODEL_TYPES, naive_layer_logprobs, tiny_model

# ---------------------------------------------------------------------------------------------
# Part 2: targets, positions and the packed-row attention mask, literally
# ---------------------------------------------------------------------------------------------


def test_targets_from_completion_mask_literal():
    input_ids = torch.tensor(
        [
            [5, 6, 7, 8, 0],  # completion 7 8: predicted at positions 1, 2
            [9, 5, 4, 0, 0],  # completion 5 4 (right-padded): positions 5+0, 5+1
            [0, 0, 3, 4, 5],  # left-padded, completion 4 5: positions 10+2, 10+3
        ]
    )
    completion_mask = torch.tensor(
        [
            [0, 0, 1, 1, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1],
        ]
    )
    t = targets_from_completion_mask(input_ids, completion_mask)
    assert t.positions.tolist() == [1, 2, 5, 6, 12, 13]
    assert t.tokens.tolist() == [7, 8, 5, 4, 4, 5]
    assert t.segments.tolist() == [0, 0, 1, 1, 2, 2]
    assert t.num_segments == 3
    assert t.num_tokens().tolist() == [2, 2, 2]
    # a completion token in column 0 has no predictor: it is not scored
    t0 = targets_from_completion_mask(torch.tensor([[4, 5]]), torch.tensor([[1, 1]]))
    assert t0.positions.tolist() == [0] and t0.tokens.tolist() == [5]
    # a row with no completion still counts as a sequence, with 0 tokens
    empty = targets_from_completion_mask(torch.tensor([[4, 5], [6, 7]]), torch.tensor([[0, 0], [0, 1]]))
    assert empty.num_tokens().tolist() == [0, 1]


def test_positions_from_attention_mask_literal():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert positions_from_attention_mask(mask).tolist() == [[0, 1, 2, 2], [0, 0, 0, 1], [0, 1, 2, 3]]


def test_segment_attention_mask_literal():
    # one pair, prompt [a b], chosen [c d], rejected [e], one padding slot
    seg = torch.tensor([[1, 1, 2, 2, 3, 0]])
    allowed = torch.tensor(
        [
            # a  b  c  d  e  pad
            [1, 0, 0, 0, 0, 0],  # a: itself
            [1, 1, 0, 0, 0, 0],  # b: the prompt up to itself
            [1, 1, 1, 0, 0, 0],  # c: prompt + itself
            [1, 1, 1, 1, 0, 0],  # d: prompt + chosen
            [1, 1, 0, 0, 1, 0],  # e: prompt + itself, not the chosen
            [0, 0, 0, 0, 0, 1],  # pad: only itself (no all −inf row)
        ],
        dtype=torch.bool,
    )
    mask = segment_attention_mask(seg, torch.float32)
    assert mask.shape == (1, 1, 6, 6)
    assert torch.equal(mask[0, 0] == 0, allowed)
    assert (mask[0, 0][~allowed] == torch.finfo(torch.float32).min).all()
    # two pairs in one row: pair 2 (segments 4, 5, 6) sees nothing of pair 1
    seg2 = torch.tensor([[1, 2, 3, 4, 5, 6]])
    allowed2 = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(segment_attention_mask(seg2, torch.bfloat16)[0, 0] == 0, allowed2)


# ---------------------------------------------------------------------------------------------
# Part 3: layer_logprobs on tiny models of every family
# ---------------------------------------------------------------------------------------------

VOCAB, BATCH, SEQ, NUM_LAYERS = 101, 3, 37, 4
LAYERS = (1, 2, NUM_LAYERS)  # two intermediate layers and the final one
LENGTHS, PROMPTS = (37, 30, 22), (10, 5, 12)  # tokens per row, of which prompt


FINAL_NORMS = {"gpt_neox": "gpt_neox.final_layer_norm", "gpt2": "transformer.ln_f"}


@functools.cache
def _model(family: str, **kwargs) -> nn.Module:
    """Shared across tests: tests take gradients with `torch.autograd.grad`, never `.backward`.
    Weights drawn with std 0.3 (not 0.02) so that the logits are far from uniform and the layers'
    log-probs differ clearly."""
    return tiny_model(
        family,
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=NUM_LAYERS,
        num_heads=2,
        intermediate_size=24,
        initializer_range=0.3,
        seed=1,
        **kwargs,
    )


def _rows(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def _batch(padding: str, rows=None, prompts=PROMPTS) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `completion_mask` `(3, 37)`, padded on the given side."""
    rows = rows or _rows()
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), 2)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (r, p) in enumerate(zip(rows, prompts)):
        start = 0 if padding == "right" else width - len(r)
        input_ids[i, start : start + len(r)] = torch.tensor(r)
        attention_mask[i, start : start + len(r)] = 1
        completion_mask[i, start + p : start + len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def _grads(model, logps, seed=0):
    """Gradients of a random weighting of `logps` w.r.t. every parameter (None where unused)."""
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad((logps * weights).sum(), params, allow_unused=True)


def _assert_grads_close(grads, ref_grads):
    """Each parameter's gradient to fp32 accuracy: 1e-4 relative, plus 2e-6 of the tensor's largest
    element absolute (elements near zero are sums of cancelling terms)."""
    assert len(grads) == len(ref_grads)
    compared = 0
    for g, r in zip(grads, ref_grads):
        if r is None or g is None:
            # a parameter the naive path does not use may get no gradient or an exact zero
            other = r if g is None else g
            assert other is None or not other.any()
            continue
        scale = r.abs().max().item()
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6 + 2e-6 * scale)
        compared += 1
    assert compared > 0


# 62 completion tokens in `_batch` (27 + 25 + 10): chunks of 7 leave a remainder, 31 divide them
@pytest.mark.parametrize("chunk", [7, 31])
@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("final_norm", [True, False])
@pytest.mark.parametrize("family", TINY_MODEL_TYPES)
def test_layer_logprobs_match_naive(family, final_norm, padding, chunk):
    model = _model(family)
    batch = _batch(padding)
    out = layer_logprobs(model, batch, LAYERS, final_norm=final_norm, chunk_tokens=chunk)
    ref = naive_layer_logprobs(model, batch, LAYERS, final_norm=final_norm)
    assert out.layers == ref.layers == LAYERS
    assert out.logps.shape == (3, BATCH)
    # completion tokens per row: 37 − 10, 30 − 5, 22 − 12
    assert out.num_tokens.tolist() == ref.num_tokens.tolist() == [27, 25, 10]
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-5, atol=1e-5)
    # the layers differ from each other (a wrong layer index could not pass by accident)
    assert (out.logps[0] - out.logps[1]).abs().max() > 1e-2
    _assert_grads_close(_grads(model, out.logps), _grads(model, ref.logps))


class _WidestVocabRows(torch.utils._python_dispatch.TorchDispatchMode):
    """Records, over every operator's outputs, the most rows of any tensor whose last dimension
    is the vocabulary: a full-logits path makes one of `(B, T, V)`, i.e. B·T rows. Views
    (`weight.t()`, the `(d, V)` transpose of the head) allocate nothing and are not counted."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # an alias of an existing tensor
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_no_full_logits_in_forward_or_backward(family):
    """`layer_logprobs` never holds more than one chunk of logits rows, forward or backward, for
    the final and the intermediate layers; the naive path (the check's control) holds B·T."""
    model = _model(family)
    batch = _batch("right")
    # the one-time probe and row-layout check of a model run its own forward on 6 and 12 tokens
    # (full logits of those few): done before counting
    row_layout(model)
    with _WidestVocabRows(VOCAB) as seen:
        out = layer_logprobs(model, batch, LAYERS, chunk_tokens=7)
        _grads(model, out.logps)
    assert 0 < seen.rows <= 7
    with _WidestVocabRows(VOCAB) as control:
        naive_layer_logprobs(model, batch, LAYERS)
    assert control.rows >= BATCH * SEQ


@pytest.mark.parametrize("family", TINY_MODEL_TYPES)
def test_final_layer_equals_the_ordinary_forward(family):
    """Layer L against `model(...).logits` + log_softmax, written out here (no naive helper)."""
    model = _model(family)
    batch = _batch("right")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (BATCH, SEQ, VOCAB)
    logp = torch.log_softmax(logits.float(), dim=-1)
    expected = torch.zeros(BATCH)
    for b in range(BATCH):
        for t in range(1, SEQ):
            if batch["completion_mask"][b, t]:
                expected[b] += logp[b, t - 1, batch["input_ids"][b, t]]
    for layers in (None, [NUM_LAYERS]):
        out = layer_logprobs(model, batch, layers, chunk_tokens=11)
        assert out.layers == (NUM_LAYERS,)
        torch.testing.assert_close(out[NUM_LAYERS], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", TINY_MODEL_TYPES)
def test_intermediate_layer_k_is_hidden_states_k(family):
    """Layer k is `hidden_states[k]` of `output_hidden_states=True` (0 being the embeddings),
    through the final norm when asked, then the shared head."""
    model = _model(family)
    batch = _batch("right")
    hidden_states = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    ).hidden_states
    assert len(hidden_states) == NUM_LAYERS + 1
    # each family's final norm, by its Hugging Face attribute name
    norm = operator.attrgetter(FINAL_NORMS.get(family, "model.norm"))(model)

    def by_hand(h):
        logp = torch.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)
        shifted = logp[:, :-1].gather(2, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (shifted * batch["completion_mask"][:, 1:]).sum(-1)

    for final_norm in (False, True):
        out = layer_logprobs(model, batch, [1, 2, 3], final_norm=final_norm)
        for k in (1, 2, 3):
            expected = by_hand(norm(hidden_states[k]) if final_norm else hidden_states[k])
            torch.testing.assert_close(out[k], expected, rtol=1e-5, atol=1e-5)
            # not its neighbour (an off-by-one in the numbering would be caught)
            neighbour = by_hand(norm(hidden_states[k - 1]) if final_norm else hidden_states[k - 1])
            assert (out[k] - neighbour).abs().max() > 1e-2


@pytest.mark.parametrize("family", TINY_MODEL_TYPES)
def test_left_padding_equals_unpadded(family):
    """Positions come from the attention mask: a left-padded row scores as the row alone."""
    model = _model(family)
    rows = _rows(seed=7)
    padded = layer_logprobs(model, _batch("left", rows), LAYERS, chunk_tokens=7)
    for b, (r, p) in enumerate(zip(rows, PROMPTS)):
        alone = layer_logprobs(model, _batch("left", [r], [p]), LAYERS)
        assert alone.logps.shape == (3, 1)
        torch.testing.assert_close(padded.logps[:, b], alone.logps[:, 0], rtol=1e-5, atol=1e-5)
        assert padded.num_tokens[b] == alone.num_tokens[0] == len(r) - p


def _pair_examples(seed: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randint(3, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    return [
        {"prompt_ids": r(9), "chosen_ids": r(7), "rejected_ids": r(3)},
        {"prompt_ids": r(4), "chosen_ids": r(2), "rejected_ids": r(12)},
        {"prompt_ids": r(1), "chosen_ids": r(5), "rejected_ids": r(5)},  # identical lengths
    ]


def _separately(model, examples, layers):
    """prompt+chosen and prompt+rejected scored as separate one-row batches, naive path."""
    out = []
    for e in examples:
        for completion in (e["chosen_ids"], e["rejected_ids"]):
            ids = torch.tensor([e["prompt_ids"] + completion])
            mask = torch.zeros_like(ids)
            mask[0, len(e["prompt_ids"]) :] = 1
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask}
            out.append(naive_layer_logprobs(model, batch, layers).logps[:, 0])
    return torch.stack(out, dim=1)  # (layers, 2B): c0 r0 c1 r1 ...


@pytest.mark.parametrize("family", TINY_MODEL_TYPES)
def test_packed_pairs_match_separate_sequences(family):
    model = _model(family)
    examples = _pair_examples()
    batch = PairCollator(pad_token_id=2, pad_to_multiple_of=8)(examples)
    out = layer_logprobs(model, batch, LAYERS, targets=batch_targets(batch), chunk_tokens=5)
    ref = _separately(model, examples, LAYERS)
    assert out.logps.shape == ref.shape == (3, 6)
    assert out.num_tokens.tolist() == [7, 3, 2, 12, 5, 5]
    torch.testing.assert_close(out.logps, ref, rtol=1e-5, atol=1e-5)
    _assert_grads_close(_grads(model, out.logps), _grads(model, ref))
    # without the segment mask (plain causal attention over the row) the rejected completions
    # would see the chosen ones: their log-probs change, so the mask is what makes the match
    causal = dict(batch, segment_ids=(batch["segment_ids"] > 0).long())
    leaky = layer_logprobs(model, causal, LAYERS, targets=batch_targets(batch))
    torch.testing.assert_close(leaky.logps[:, 0::2], ref[:, 0::2], rtol=1e-5, atol=1e-5)
    assert (leaky.logps[:, 1::2] - ref[:, 1::2]).abs().max() > 1e-3


def test_frozen_head_under_lora_matches_naive():
    """A peft LoRA model: the head is frozen, so the frozen-head backward runs; LoRA gradients
    must match the naive computation."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=NUM_LAYERS,
        num_heads=2,
        initializer_range=0.3,
        seed=2,
    )
    model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        ),
    )
    assert not base.get_output_embeddings().weight.requires_grad
    batch = _batch("left")
    out = layer_logprobs(model, batch, LAYERS, chunk_tokens=7)
    ref = naive_layer_logprobs(model, batch, LAYERS)
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-5, atol=1e-5)
    grads, ref_grads = _grads(model, out.logps), _grads(model, ref.logps)
    assert len(grads) == 3 * NUM_LAYERS * 2  # lora_A, lora_B of three modules per layer
    _assert_grads_close(grads, ref_grads)


def test_tied_embeddings_gradients_match_naive():
    """Head weight = input embedding: the head's gradient adds to the embedding's."""
    model = _model("llama", tie_word_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    batch = _batch("right")
    out = layer_logprobs(model, batch, LAYERS, chunk_tokens=13)
    ref = naive_layer_logprobs(model, batch, LAYERS)
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-5, atol=1e-5)
    _assert_grads_close(_grads(model, out.logps), _grads(model, ref.logps))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_intermediate_gradients(reentrant):
    """With gradient checkpointing the blocks run inside a checkpoint; the captured intermediate
    hidden states must still carry gradients (reentrant checkpointing needs `.backward()`)."""
    model = tiny_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=NUM_LAYERS,
        num_heads=2,
        initializer_range=0.3,
        seed=4,
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()  # checkpointing is only active in training mode; the tiny configs have no dropout
    assert model.is_gradient_checkpointing
    batch = _batch("left")
    weights = torch.randn(len(LAYERS), BATCH, generator=torch.Generator().manual_seed(0))
    names, params = zip(*model.named_parameters())

    def grads_of(logps):
        (logps * weights).sum().backward()
        out = [p.grad.clone() if p.grad is not None else None for p in params]
        model.zero_grad(set_to_none=True)
        return out

    out = layer_logprobs(model, batch, LAYERS, chunk_tokens=7)
    ref = naive_layer_logprobs(model, batch, LAYERS)
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-5, atol=1e-5)
    grads, ref_grads = grads_of(out.logps), grads_of(ref.logps)
    # the first block gets gradient (from layer 1's log-probs among others)
    assert grads[names.index("model.layers.0.mlp.down_proj.weight")].abs().max() > 0
    _assert_grads_close(grads, ref_grads)


def test_empty_targets_backpropagate_zeros():
    model = _model("llama")
    batch = _batch("right")
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    out = layer_logprobs(model, batch, LAYERS)
    assert torch.equal(out.logps, torch.zeros(3, BATCH))
    assert out.num_tokens.tolist() == [0, 0, 0]
    assert torch.equal(out.averaged(NUM_LAYERS), torch.zeros(BATCH))
    for g in _grads(model, out.logps):
        assert g is None or not g.any()
    # one row without completion among others: its sum is 0, the others are unaffected
    batch = _batch("right")
    batch["completion_mask"][1] = 0
    out = layer_logprobs(model, batch, LAYERS)
    ref = naive_layer_logprobs(model, batch, LAYERS)
    assert out.num_tokens.tolist() == [27, 0, 10]
    assert torch.equal(out.logps[:, 1], torch.zeros(3))
    torch.testing.assert_close(out.logps, ref.logps, rtol=1e-5, atol=1e-5)


def test_averaged_is_per_token_mean():
    model = _model("qwen2")
    batch = _batch("right")
    out = layer_logprobs(model, batch, LAYERS)
    torch.testing.assert_close(out.averaged(2), out[2] / torch.tensor([27.0, 25.0, 10.0]))


def test_layer_numbers_are_validated():
    model = _model("gpt2")
    batch = _batch("right")
    for bad in (0, NUM_LAYERS + 1, -1):
        with pytest.raises(ValueError, match=rf"layer {bad} is outside 1..{NUM_LAYERS}"):
            layer_logprobs(model, batch, [bad])


def test_model_is_left_as_it_was():
    """The head's forward and the block hooks are only replaced/installed for the call, also when
    the call fails. (Transformers installs hooks of its own on the first `output_hidden_states`
    call, so the test compares the hooks before and after, rather than expecting none.)"""
    model = tiny_model("mistral", vocab_size=VOCAB, hidden_size=16, num_layers=NUM_LAYERS, num_heads=2)
    batch = _batch("right")
    head = model.get_output_embeddings()

    def hooks():
        return [list(block._forward_hooks) for block in model.model.layers]

    before = hooks()
    layer_logprobs(model, batch, LAYERS)
    assert "forward" not in head.__dict__
    assert hooks() == before
    with pytest.raises(KeyError):  # no attention_mask: fails inside, after the set-up
        layer_logprobs(model, {"input_ids": batch["input_ids"], "completion_mask": batch["completion_mask"]})
    assert "forward" not in head.__dict__
    assert hooks() == before
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (BATCH, SEQ, VOCAB)


class FooForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="foo")
        self.lm_head = nn.Linear(4, 5)


def test_unknown_architecture_names_the_model_class():
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(  # not a decoder: its logits see later tokens
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            is_decoder=False,
        )
    )
    batch = _batch("right")
    with pytest.raises(DpolabError, match=r"BertLMHeadModel: .* not a causal LM"):
        layer_logprobs(bert, batch)
    with pytest.raises(DpolabError, match="FooForCausalLM"):
        layer_logprobs(FooForCausalLM(), batch)


def test_per_token_outputs_and_the_prompts_from_the_same_forward():
    """Beside the sums: each target's log-prob (whose sums they are), WPO's log Σ p² per target
    (the naive full-logits value), and the prompts' own tokens scored in the same projection."""
    model = _model("llama")
    examples = _pair_examples()
    batch = PairCollator(pad_token_id=2, score_prompt=True)(examples)
    out = layer_logprobs(
        model,
        batch,
        LAYERS,
        targets=batch_targets(batch),
        prompt_targets=batch_prompt_targets(batch),
        log_sum_sq=True,
        chunk_tokens=5,
    )
    n = batch["target_tokens"].shape[0]
    assert out.token_logps.shape == out.log_sum_sq.shape == (3, n)
    sums = torch.zeros(3, 6).index_add(1, batch["target_segments"], out.token_logps)
    torch.testing.assert_close(out.logps, sums, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.logps, _separately(model, examples, LAYERS), rtol=1e-5, atol=1e-5)
    # each prompt scored alone, naive: its tokens from the second, as a "completion" of its first
    for b, e in enumerate(examples):
        ids = torch.tensor([e["prompt_ids"]])
        mask = torch.ones_like(ids)
        mask[0, 0] = 0
        naive = naive_layer_logprobs(
            model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask}, LAYERS
        )
        torch.testing.assert_close(out.prompt_logps[:, b], naive.logps[:, 0], rtol=1e-5, atol=1e-5)
    assert out.prompt_num_tokens.tolist() == [8, 3, 0]
    # log Σ p² of the final layer's targets from the full logits of the ordinary forward
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=segment_attention_mask(batch["segment_ids"], torch.float32),
            position_ids=batch["position_ids"],
        ).logits
    rows = logits.reshape(-1, logits.shape[-1])[batch["target_positions"]].float()
    expected = torch.logsumexp(2 * torch.log_softmax(rows, -1), -1)
    torch.testing.assert_close(out.log_sum_sq[-1], expected, rtol=1e-5, atol=1e-5)
    assert not out.log_sum_sq.requires_grad
    # without the asking, neither is computed
    plain = layer_logprobs(model, batch, LAYERS, targets=batch_targets(batch))
    assert plain.log_sum_sq is None and plain.prompt_logps is None
    torch.testing.assert_close(plain.logps, out.logps, rtol=0, atol=0)
