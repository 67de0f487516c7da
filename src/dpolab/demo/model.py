"""The demo's model: a tiny Llama built from a config with random weights, saved in HF format."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSize:
    """Shape of the demo model. The default has about 0.8 M parameters."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 352
    max_positions: int = 128
    tie_word_embeddings: bool = True


def demo_config(tokenizer, size: ModelSize = ModelSize()):
    """A `LlamaConfig` for `tokenizer`'s vocabulary, dropout off, special ids from the tokenizer."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=size.tie_word_embeddings,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(tokenizer, size: ModelSize = ModelSize(), *, seed: int = 0):
    """A randomly initialised `LlamaForCausalLM` (fp32) of `size`, seeded."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(demo_config(tokenizer, size))


def save_model(out_dir: str | Path, tokenizer, size: ModelSize = ModelSize(), *, seed: int = 0):
    """Build the model, save it and the tokenizer under `out_dir` (HF format); returns the model."""
    model = build_model(tokenizer, size, seed=seed)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model


def num_parameters(model) -> int:
    """Distinct parameters (a tied head counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def size_dict(size: ModelSize) -> dict:
    return asdict(size)
