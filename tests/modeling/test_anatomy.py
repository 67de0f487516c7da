"""Finding a model's blocks, final modules, head, logit transform and routers from the model itself,
and refusing, in one line naming the class, what cannot be scored exactly."""

from __future__ import annotations

import operator
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from dpolab.errors import DpolabError
from dpolab.modeling import probe
from dpolab.modeling.anatomy import (
    LogitTransform,
    anatomy,
    check_supported,
    first_param_dtype,
    num_layers_of,
    unwrap,
)
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.testing import TINY_MODEL_TYPES, tiny_config, tiny_model

# Hugging Face attribute names of each family's decoder blocks and final norm
EXPECTED = {
    "llama": ("model.layers", "model.norm"),
    "mistral": ("model.layers", "model.norm"),
    "qwen2": ("model.layers", "model.norm"),
    "qwen3": ("model.layers", "model.norm"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "gpt2": ("transformer.h", "transformer.ln_f"),
}


def _tiny(family, **kwargs):
    return tiny_model(family, vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, **kwargs)


class Wrapper(nn.Module):
    """Stands in for DDP / a DeepSpeed engine: the model under `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class FSDP1Like(nn.Module):
    def __init__(self, module):
        super().__init__()
        self._fsdp_wrapped_module = module

    def forward(self, *args, **kwargs):
        return self._fsdp_wrapped_module(*args, **kwargs)


@pytest.mark.parametrize("family", TINY_MODEL_TYPES)
def test_anatomy_finds_the_parts(family):
    model = _tiny(family)
    parts = anatomy(model)
    blocks_path, norm_path = EXPECTED[family]
    assert parts.causal_lm is model
    assert parts.blocks is operator.attrgetter(blocks_path)(model)
    assert parts.final_norm is operator.attrgetter(norm_path)(model)
    assert parts.head is model.get_output_embeddings()
    assert isinstance(parts.head, nn.Linear) and parts.head.weight.shape == (50, 16)
    assert parts.num_layers == 3 == len(parts.blocks)
    assert parts.logits == LogitTransform() and parts.lens_problem is None and parts.router is None


def test_several_final_modules_are_found_in_the_order_they_run():
    """OPT with word_embed_proj_dim < hidden: the final norm, then project_out, before the head
    (project_in, which runs before the blocks, is not among them)."""
    model = _tiny("opt", word_embed_proj_dim=8)
    parts = anatomy(model)
    decoder = model.model.decoder
    assert isinstance(parts.final_norm, nn.Sequential)
    assert list(parts.final_norm) == [decoder.final_layer_norm, decoder.project_out]
    assert parts.blocks is decoder.layers and parts.head.weight.shape == (50, 8)


@pytest.mark.parametrize(
    "family, settings, expected",
    [
        ("gemma2", {"final_logit_softcapping": 0.5}, LogitTransform(1.0, 0.5)),
        ("cohere", {"logit_scale": 0.5}, LogitTransform(0.5, None)),
        ("granite", {"logits_scaling": 4.0}, LogitTransform(0.25, None)),  # Granite divides
        ("llama", {}, LogitTransform()),
    ],
)
def test_the_logit_transform_is_the_one_that_reproduces_the_logits(family, settings, expected):
    model = _tiny(family, initializer_range=0.5, **settings)
    parts = anatomy(model)
    assert parts.logits == expected
    ids = torch.tensor([[5, 9, 3, 7]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        logits = model(input_ids=ids).logits
        torch.testing.assert_close(parts.logits(parts.head(hidden)), logits, rtol=1e-5, atol=1e-5)
        if expected != LogitTransform():  # the transform matters here: without it, other logits
            assert (parts.head(hidden) - logits).abs().max() > 1e-2


def test_candidate_transforms_come_from_the_config():
    config = tiny_config("gemma2", final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    caps, scales = probe.transform_attributes(config)
    assert caps == ["final_logit_softcapping"] and scales == []  # the attention's softcap is not one
    caps, scales = probe.transform_attributes(tiny_config("granite", logits_scaling=8.0))
    assert caps == [] and scales == ["logits_scaling"]
    # a scale of 1 transforms nothing and is no candidate
    assert probe.transform_attributes(tiny_config("cohere", logit_scale=1.0)) == ([], [])


class TripledLogits(LlamaForCausalLM):
    """Multiplies its logits by 3, with nothing in its config that says so."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3
        return out


class DoubledBeforeTheHead(LlamaForCausalLM):
    """Doubles the final hidden state outside any module, between its final norm and its head."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        logits = self.lm_head(hidden.last_hidden_state * 2)
        return SimpleNamespace(logits=logits)


def _custom(cls):
    torch.manual_seed(0)
    return cls(tiny_config("llama", vocab_size=50, hidden_size=16, num_layers=3, num_heads=2)).eval()


def test_an_unknown_logit_transform_is_refused_in_one_line():
    with pytest.raises(DpolabError, match=r"^TripledLogits: its logits are not its output head's output"):
        anatomy(_custom(TripledLogits))


def test_a_step_outside_any_module_refuses_the_logit_lens_only():
    """The final layer is the head's own input, so it stays exact; the logit lens is not defined."""
    model = _custom(DoubledBeforeTheHead)
    parts = anatomy(model)
    assert parts.lens_problem == "between its last block and its head it does more than model.norm"
    ids = torch.tensor([[5, 9, 3, 7, 11, 2]])
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": torch.ones_like(ids),
    }
    out = layer_logprobs(model, batch)
    logp = torch.log_softmax(model(input_ids=ids).logits, -1)[0, :-1].gather(1, ids[0, 1:, None]).sum()
    torch.testing.assert_close(out.logps[0, 0], logp, rtol=1e-5, atol=1e-5)
    with pytest.raises(DpolabError, match=r"DoubledBeforeTheHead: intermediate layers .* not defined for it"):
        layer_logprobs(model, batch, [1, 3])


@pytest.mark.parametrize("wrap", [Wrapper, FSDP1Like, lambda m: Wrapper(FSDP1Like(m))])
def test_anatomy_sees_through_wrappers(wrap):
    model = _tiny("llama")
    assert unwrap(wrap(model)) is model
    parts = anatomy(wrap(model))
    assert parts.causal_lm is model and parts.head is model.lm_head


def test_anatomy_sees_through_peft():
    from peft import LoraConfig, get_peft_model

    base = _tiny("qwen2")
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert unwrap(peft_model) is base
    assert unwrap(Wrapper(peft_model)) is base  # DDP around peft
    parts = anatomy(Wrapper(peft_model))
    assert parts.causal_lm is base and parts.final_norm is base.model.norm and parts.num_layers == 3


def test_the_probe_runs_once_per_model(monkeypatch):
    calls = []
    original = probe.discover
    monkeypatch.setattr("dpolab.modeling.anatomy.discover", lambda *a: calls.append(1) or original(*a))
    model = _tiny("gpt2")
    assert anatomy(model).num_layers == anatomy(Wrapper(model)).num_layers == 3
    assert len(calls) == 1
    anatomy(_tiny("gpt2"))  # another model: probed anew
    assert len(calls) == 2


def test_unwrap_leaves_a_plain_model_alone():
    model = _tiny("gpt2")
    assert unwrap(model) is model


class FooForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="foo")
        self.lm_head = nn.Linear(4, 5)


def test_what_cannot_be_scored_is_refused_naming_the_class():
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(  # an encoder: its logits at a position see the tokens after it
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(DpolabError, match=r"^BertLMHeadModel: .* not a causal LM .*is_decoder=True"):
        anatomy(bert)
    with pytest.raises(DpolabError, match=r"^FooForCausalLM: dpolab needs a linear output head"):
        anatomy(Wrapper(FooForCausalLM()))
    with pytest.raises(DpolabError, match="Linear is not a Hugging Face model"):
        anatomy(nn.Linear(2, 2))  # no config at all


def test_a_head_that_is_not_linear_is_refused():
    model = _tiny("mistral")
    model.lm_head = nn.Identity()
    with pytest.raises(
        DpolabError, match=r"MistralForCausalLM: dpolab needs a linear output head .* Identity"
    ):
        anatomy(model)


def test_check_supported_before_any_weight_loads():
    check_supported(tiny_config("llama"))  # no error
    check_supported(tiny_config("bloom"))
    foo = SimpleNamespace(model_type="foo", architectures=["FooForCausalLM"])
    with pytest.raises(
        DpolabError, match=r"model FooForCausalLM \(model_type 'foo'\) has no causal-LM class"
    ):
        check_supported(foo)
    from transformers import T5Config

    with pytest.raises(DpolabError, match=r"T5Config \(model_type 't5'\) is an encoder-decoder model"):
        check_supported(T5Config())
    # a remote-code model names its causal-LM class in auto_map
    check_supported(SimpleNamespace(model_type="foo", auto_map={"AutoModelForCausalLM": "foo.Foo"}))


def test_num_layers_of():
    assert num_layers_of(tiny_config("llama", num_layers=5)) == 5
    assert num_layers_of(tiny_config("gpt2", num_layers=7)) == 7
    assert num_layers_of(SimpleNamespace(n_layer=2)) == 2
    assert num_layers_of(SimpleNamespace(num_layers=6)) == 6
    with pytest.raises(DpolabError, match="SimpleNamespace"):
        num_layers_of(SimpleNamespace(depth=3))


def test_first_param_dtype():
    assert first_param_dtype(_tiny("llama", dtype=torch.bfloat16)) == torch.bfloat16
    assert first_param_dtype(nn.ReLU()) == torch.float32
