"""The reference kinds themselves: the LoRA live reference (adapters disabled) is computed without
dropout, as the frozen copy and the precomputation are, without touching the policy's own step.
(The precomputed cache's key, `model_fingerprint`, is tested in tests/modeling/test_fingerprint.py.)"""

from __future__ import annotations

import pytest
import torch

from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.testing import tiny_model
from dpolab.training.reference import AdapterDisabledReference

# peft says so of every GPT-2 Conv1D it wraps
pytestmark = pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False")


PAIRS = [
    {"prompt_ids": [5, 6, 7, 9, 12], "chosen_ids": [8, 9, 30, 1], "rejected_ids": [11, 1]},
    {"prompt_ids": [13, 14], "chosen_ids": [15, 40, 41, 1], "rejected_ids": [16, 17, 18, 1]},
]


def _lora_gpt2_with_dropout():
    """A tiny GPT-2 with its usual dropout (0.1) and fresh LoRA adapters, in train mode as the
    Trainer has it during training."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("gpt2", vocab_size=64, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    torch.manual_seed(0)
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters change the output
            torch.nn.init.normal_(param, std=0.5)
    return model.train()


def test_lora_live_reference_has_no_dropout():
    model = _lora_gpt2_with_dropout()
    frozen = model.base_model.model.transformer.h[1]
    frozen.eval()  # a submodule the caller keeps in eval mode
    batch = PairCollator(pad_token_id=2)(PAIRS)
    reference = AdapterDisabledReference([2, 4])

    first, second = reference.logps(batch, model), reference.logps(batch, model)
    assert torch.equal(first, second)
    assert model.training and model.base_model.model.transformer.h[0].training  # modes given back
    assert not frozen.training

    model.eval()
    with model.disable_adapter(), torch.no_grad():
        expected = layer_logprobs(model, batch, (2, 4), targets=batch_targets(batch)).logps
    torch.testing.assert_close(first, expected, rtol=0, atol=0)


def _policy_grads(model, batch, *, with_reference: bool):
    torch.manual_seed(1)
    model.zero_grad()
    policy = layer_logprobs(model, batch, (4,), targets=batch_targets(batch))
    if with_reference:
        AdapterDisabledReference([4]).logps(batch, model)
    policy.logps.sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_live_reference_leaves_the_policys_step_alone(checkpointing):
    """The policy's forward of the step (dropout on) and its gradients are the same with the
    reference computed between forward and backward as without; under gradient checkpointing the
    backward recomputes the forward, in the train mode the reference gave back."""
    model = _lora_gpt2_with_dropout()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = PairCollator(pad_token_id=2)(PAIRS)
    alone = _policy_grads(model, batch, with_reference=False)
    beside = _policy_grads(model, batch, with_reference=True)
    assert alone.keys() == beside.keys() and alone
    for name in alone:
        torch.testing.assert_close(beside[name], alone[name], rtol=0, atol=0, msg=name)
    assert any(g.abs().sum() > 0 for g in alone.values())


def test_cache_key_covers_ld_alpha():
    from dpolab.training.reference_cache import cache_key

    pairs = [{"prompt_ids": [5, 6], "chosen_ids": [7, 1], "rejected_ids": [8, 9, 1]}]
    key = dict(model={"path": "m", "hash": "x"}, pairs=pairs, layers=[2, 4], final_norm=True, dtype="float32")
    plain = cache_key(**key)
    assert cache_key(**key, ld_alpha=None) == plain  # the caches written before LD-DPO stay valid
    assert len({plain, cache_key(**key, ld_alpha=0.5), cache_key(**key, ld_alpha=0.25)}) == 3


def test_cache_key_covers_the_mixed_precision():
    from dpolab.training.reference_cache import cache_key

    pairs = [{"prompt_ids": [5, 6], "chosen_ids": [7, 1], "rejected_ids": [8, 9, 1]}]
    key = dict(model={"path": "m", "hash": "x"}, pairs=pairs, layers=[2, 4], final_norm=True, dtype="float32")
    plain = cache_key(**key)
    assert cache_key(**key, autocast=None) == plain  # the caches written before stay valid
    assert len({plain, cache_key(**key, autocast="bf16"), cache_key(**key, autocast="fp16")}) == 3
