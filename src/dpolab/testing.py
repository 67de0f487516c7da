"""What the tests (and benchmarks) build on: tiny tokenizers and models built locally, and naive
references of the optimised code paths.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in milliseconds on
the text it is given, and the models are built from a config with random weights.
`naive_layer_logprobs` computes the layer-wise log-probs the obvious way (full logits), for the
tests of `dpolab.modeling.logprobs.layer_logprobs` to compare against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from dpolab.modeling.anatomy import anatomy
from dpolab.modeling.attention import positions_from_attention_mask
from dpolab.modeling.logprobs import LayerLogprobs, resolve_layers

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# A small chat template in the style of ChatML; generation prompt "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have? Answer: 3 + 5 = 8. #### 8",
    "A preference pair has a prompt, a chosen response and a rejected response.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ( ) ? ! , . : ; ' \"",
]


def build_tokenizer(
    corpus: Iterable[str] | None = None, *, vocab_size: int = 300, chat_template: bool = True
):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `corpus`, with <s> prepended to every
    encoded text, </s> as EOS, <pad> for padding and, optionally, a small chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


_FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}


def tiny_config(
    model_type: str = "llama",
    *,
    vocab_size: int = 300,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    tie_word_embeddings: bool = False,
    **overrides,
):
    """A small config of the given family, with dropout off (so that two forwards agree)."""
    import transformers

    config_cls = getattr(transformers, _FAMILY_CONFIGS[model_type][0])
    intermediate_size = intermediate_size or 2 * hidden_size
    if model_type == "gpt2":
        kwargs = dict(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    else:
        kwargs = dict(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_positions,
        )
        if model_type in ("llama", "mistral", "qwen2", "qwen3"):
            kwargs["num_key_value_heads"] = max(1, num_heads // 2)
        if model_type == "qwen3":
            kwargs["head_dim"] = hidden_size // num_heads
        if model_type == "gpt_neox":
            kwargs.update(hidden_dropout=0.0, attention_dropout=0.0)
    kwargs.update(
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    kwargs.update(overrides)
    return config_cls(**kwargs)


def tiny_model(
    model_type: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs
):
    """A tiny randomly initialised causal LM of the given family, in eval mode."""
    import transformers

    config = tiny_config(model_type, **config_kwargs)
    model_cls = getattr(transformers, _FAMILY_CONFIGS[model_type][1])
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype)
    return model.eval()


TINY_MODEL_TYPES = tuple(_FAMILY_CONFIGS)


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
