"""What the tests (and benchmarks) build on: tiny tokenizers and models built locally, and naive
references of the optimised code paths.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in milliseconds on
the text it is given, and the models are built from a config with random weights.
`naive_layer_logprobs` computes the layer-wise log-probs the obvious way (full logits), for the
tests of `dpolab.modeling.logprobs.layer_logprobs` to compare against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from dpolab.modeling.anatomy import anatomy
from dpolab.modeling.attention import positions_from_attention_mask
from dpolab.modeling.layout import row_layout
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


# The names under which configs keep each size tiny_config sets: the first a family's config has.
_SIZE_NAMES = {
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "heads": ("num_attention_heads", "n_head"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim"),
    "positions": ("max_position_embeddings", "n_positions"),
}

# The families the deep numerical tests of dpolab.modeling run on (every option, padding side, chunk).
TINY_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gpt2")

# The families issue 15 names, each tested for exact log-probs, the logit lens and a training step,
# with the settings under which its specialities matter at tiny sizes (a softcap that bites, a logit
# scale ≠ 1, a sliding window shorter than the test rows, OPT's project_out).
FAMILY_SETTINGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": 5},
    "qwen2": {},
    "qwen3": {},
    "gemma": {},
    "gemma2": {"final_logit_softcapping": 0.5, "sliding_window": 5},
    "gemma3_text": {"final_logit_softcapping": 0.5, "sliding_window": 5},
    "phi": {},
    "phi3": {"sliding_window": 5},
    "mixtral": {"router_aux_loss_coef": 0.02},
    "qwen2_moe": {"router_aux_loss_coef": 0.02},
    "qwen3_moe": {"router_aux_loss_coef": 0.02},
    "olmo2": {},
    "stablelm": {},
    "starcoder2": {"sliding_window": 5},
    "cohere": {"logit_scale": 0.5},
    "granite": {"logits_scaling": 4.0},
    "gpt_neox": {},
    "gpt2": {},
    "gptj": {},
    "falcon": {},
    "opt": {"word_embed_proj_dim": 16},
    "bloom": {},
}
FAMILIES = tuple(FAMILY_SETTINGS)


_SIZE_WORDS = ("dim", "size", "heads", "state", "chunk", "rank", "ssm")
_NOT_SIZES = ("vocab", "position", "n_ctx", "max_length", "window", "token", "layers", "cycles", "loops")


def _is_large_size(key: str, value) -> bool:
    """A family-specific width (an SSM's state size and heads, a linear attention's head dim) that
    would make a "tiny" model slow: an integer of 64 or more named like a size."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= 64
        and any(w in key for w in _SIZE_WORDS)
        and not any(w in key for w in _NOT_SIZES)
    )


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
    """A small config of any family transformers knows (`model_type`), with dropout off (so that two
    forwards agree): the family's defaults with every size attribute it has made small (hidden,
    layers, heads, key-value heads, MLP, experts, ...); `overrides` last."""
    from transformers import AutoConfig

    defaults = AutoConfig.for_model(model_type).to_dict()
    intermediate_size = intermediate_size or 2 * hidden_size
    sizes = {
        "hidden": hidden_size,
        "layers": num_layers,
        "heads": num_heads,
        "intermediate": intermediate_size,
        "positions": max_positions,
    }
    kwargs = {}
    for what, names in _SIZE_NAMES.items():
        name = next((n for n in names if n in defaults), None)
        if name is not None:
            kwargs[name] = sizes[what]
    head_dim = hidden_size // num_heads
    optional = {
        "num_key_value_heads": max(1, num_heads // 2),
        "head_dim": head_dim,
        "rotary_dim": head_dim,  # GPT-J
        "num_local_experts": 4,  # Mixtral
        "num_experts": 4,  # Qwen-MoE
        "num_experts_per_tok": 2,
        "moe_intermediate_size": intermediate_size // 2,
        "shared_expert_intermediate_size": intermediate_size,
        "word_embed_proj_dim": hidden_size,  # OPT
        # multi-head latent attention (DeepSeek V2/V3, MiniCPM3) and grouped expert routing
        "q_lora_rank": hidden_size // 2,
        "kv_lora_rank": hidden_size // 2,
        "qk_rope_head_dim": head_dim // 2,
        "qk_nope_head_dim": head_dim // 2,
        "v_head_dim": head_dim,
        "n_routed_experts": 4,
        "n_group": 1,
        "topk_group": 1,
    }
    kwargs.update({k: v for k, v in optional.items() if k in defaults})
    if (
        "kv_lora_rank" in defaults and "num_key_value_heads" in defaults
    ):  # latent attention: one kv head per head
        kwargs["num_key_value_heads"] = num_heads
    for key, value in defaults.items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
            kwargs[key] = 0.0
    for key, value in defaults.items():  # the family's own sizes tiny_config does not name (SSM states, ...)
        if key not in kwargs and _is_large_size(key, value):
            kwargs[key] = 4 if "heads" in key else 16
    if defaults.get("is_decoder") is False:  # BERT-like: its causal-LM class is meant as a decoder
        kwargs["is_decoder"] = True
    kwargs.update(
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(
    model_type: str = "llama",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    **config_kwargs,
):
    """A tiny randomly initialised causal LM of the given family, in eval mode (attention: the
    family's default unless given)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **config_kwargs)
    torch.manual_seed(seed)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_config(config, **kwargs).to(dtype)
    return model.eval()


def naive_layer_logprobs(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int] | None = None,
    *,
    final_norm: bool = True,
) -> LayerLogprobs:
    """The same as `layer_logprobs` the obvious way: `output_hidden_states=True`, full logits for
    every position, `log_softmax` over the vocabulary; layer k < L as the naive logit lens,
    `transform(head(final_norm(hidden_states[k])))`. For tests and small analyses only."""
    parts = anatomy(model)
    layers = resolve_layers(layers, parts.num_layers)
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    attention_mask = batch["attention_mask"]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if row_layout(model).position_ids:
        position_ids = batch.get("position_ids")
        inputs["position_ids"] = (
            positions_from_attention_mask(attention_mask) if position_ids is None else position_ids
        )
    out = model(**inputs, output_hidden_states=True, use_cache=False)
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
            logits = parts.logits(parts.head(h).float())
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, shift_tokens[..., None]).squeeze(-1)
        result.append((logp * shift_mask).sum(-1))
    return LayerLogprobs(layers=layers, logps=torch.stack(result), num_tokens=shift_mask.sum(-1).long())


@contextmanager
def blocks_bypassed(model: nn.Module, after: int):
    """Inside the block, decoder blocks `after + 1 .. L` of the model hand their input on unchanged:
    the model's own forward then gives the naive logit lens of layer `after` — its own final
    modules, head and logit transform applied to `hidden_states[after]`."""
    blocks = anatomy(model).blocks

    def bypass(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [block.register_forward_hook(bypass, with_kwargs=True) for block in blocks[after:]]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
