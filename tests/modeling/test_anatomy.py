"""Finding the blocks, final norm and output head of each supported family; refusing the rest."""

from __future__ import annotations

import operator
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dpolab.errors import DpolabError
from dpolab.modeling.anatomy import (
    SUPPORTED_MODEL_TYPES,
    anatomy,
    check_supported,
    first_param_dtype,
    num_layers_of,
    unwrap,
)
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


class FSDP1Like(nn.Module):
    def __init__(self, module):
        super().__init__()
        self._fsdp_wrapped_module = module


def test_every_tiny_family_is_supported():
    assert set(TINY_MODEL_TYPES) == set(EXPECTED) == set(SUPPORTED_MODEL_TYPES)
    assert list(SUPPORTED_MODEL_TYPES) == sorted(SUPPORTED_MODEL_TYPES)


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


def test_unwrap_leaves_a_plain_model_alone():
    model = _tiny("gpt2")
    assert unwrap(model) is model


class FooForCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="foo")
        self.lm_head = nn.Linear(4, 5)


def test_unknown_architectures_fail_naming_the_class():
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            is_decoder=True,
        )
    )
    with pytest.raises(DpolabError, match=r"BertLMHeadModel is not a model class dpolab knows.*llama"):
        anatomy(bert)
    with pytest.raises(DpolabError, match="FooForCausalLM is not a model class"):
        anatomy(Wrapper(FooForCausalLM()))
    with pytest.raises(DpolabError, match="Linear is not a model class"):
        anatomy(nn.Linear(2, 2))  # no config at all


def test_check_supported():
    check_supported(tiny_config("llama"))  # no error
    check_supported(tiny_config("gpt2"))
    foo = SimpleNamespace(model_type="foo", architectures=["FooForCausalLM"])
    with pytest.raises(DpolabError, match=r"model FooForCausalLM \(model_type 'foo'\) is not a family"):
        check_supported(foo)
    # a config that transforms the logits after the head is refused rather than mis-scored
    capped = tiny_config("llama", final_logit_softcapping=30.0)
    with pytest.raises(DpolabError, match=r"final_logit_softcapping=30\.0"):
        check_supported(capped)
    with pytest.raises(DpolabError, match="logit_scale"):
        anatomy(_tiny("llama", logit_scale=0.5))
    # neutral values are fine
    check_supported(tiny_config("llama", logit_scale=1.0, final_logit_softcapping=None))


def test_a_head_that_is_not_linear_is_refused():
    model = _tiny("mistral")
    model.lm_head = nn.Identity()
    with pytest.raises(DpolabError, match="MistralForCausalLM: its output head is not a linear layer"):
        anatomy(model)


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
