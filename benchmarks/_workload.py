"""The benchmark's model, tokenizer and data, built locally from a seed (nothing is downloaded).

- Model: a causal LM built from a config with random weights, in one of the named `SHAPES`: the
  toy Llama of the first benchmark (vocabulary 32,000, untied output head, head dimension 64, MLP
  width ≈ 8/3 of the hidden size), a SmolLM2-135M-shaped Llama and a Qwen2.5-0.5B-shaped Qwen2
  (their real layer counts, widths, grouped KV heads, vocabularies and tied heads).
- Tokenizer: a word-level tokenizer whose 32,000 tokens are `<s> </s> <pad> <unk>` and the words
  `w4` … `w31999`; text is the words joined by spaces, so a text of n words is n tokens and both
  trainers see exactly the token ids the generator drew (plus BOS, and EOS after each completion).
  The same for every shape, so that every shape trains on the same token ids; a larger model
  vocabulary has rows no text uses, and the output head still projects onto all of them.
- Data: pairs with lengths drawn uniformly per pair, in two regimes (`REGIMES`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

VOCAB = 32_000
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]

# (prompt tokens, completion tokens) ranges, inclusive; chosen and rejected drawn independently
REGIMES = {
    "dialogue": ((200, 400), (50, 160)),  # Anthropic HH-like: long context, short answers
    "answer": ((50, 150), (200, 400)),  # UltraFeedback-like: short question, long answers
}


@dataclass(frozen=True)
class ModelShape:
    """A model's proportions. Heads default to a head dimension of 64, KV heads to the heads
    (no grouping), the MLP to ≈ 8/3 of the hidden size (Llama-2: 4096 -> 11008)."""

    hidden: int = 256
    layers: int = 4
    vocab: int = VOCAB
    heads: int = 0
    kv_heads: int = 0
    intermediate: int = 0
    tied: bool = False
    family: str = "llama"  # llama | qwen2 (Qwen2 adds biases to the q, k and v projections)

    def __post_init__(self):
        heads = self.heads or max(1, self.hidden // 64)
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "kv_heads", self.kv_heads or heads)
        object.__setattr__(self, "intermediate", self.intermediate or 32 * round(self.hidden * 8 / 3 / 32))

    @property
    def head_params(self) -> int:
        """Parameters of the output head (vocabulary × hidden; shared with the input embedding when tied)."""
        return self.vocab * self.hidden

    def describe(self) -> str:
        kv = f" / {self.kv_heads} KV heads" if self.kv_heads != self.heads else ""
        return (
            f"{self.family.capitalize()}, vocabulary {self.vocab}, hidden {self.hidden}, {self.layers} layers, "
            f"{self.heads} heads{kv}, MLP {self.intermediate}, {'tied' if self.tied else 'untied'} head"
        )


# The benchmark's named shapes: `--shape NAME`.
SHAPES = {
    "toy": ModelShape(),
    # HuggingFaceTB/SmolLM2-135M's config.json
    "smollm2-135m": ModelShape(
        hidden=576, layers=30, vocab=49_152, heads=9, kv_heads=3, intermediate=1536, tied=True
    ),
    # Qwen/Qwen2.5-0.5B's config.json
    "qwen2.5-0.5b": ModelShape(
        hidden=896,
        layers=24,
        vocab=151_936,
        heads=14,
        kv_heads=2,
        intermediate=4864,
        tied=True,
        family="qwen2",
    ),
}


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_model(shape: ModelShape, *, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[shape.family]
    config = config_class(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=2048,
        tie_word_embeddings=shape.tied,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return model_class(config)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(len(SPECIALS), VOCAB)}" for _ in range(n))


def build_pairs(regime: str, n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """`n` standard-format pairs; the prompt and each completion have lengths drawn uniformly
    from the regime's ranges. Completions start with a space so that prompt + completion splits
    into the prompt's words and the completion's."""
    (p_lo, p_hi), (c_lo, c_hi) = REGIMES[regime]
    rng = random.Random(f"{regime}-{seed}")
    pairs = []
    for _ in range(n):
        prompt = _words(rng, rng.randint(p_lo, p_hi))
        chosen = " " + _words(rng, rng.randint(c_lo, c_hi))
        rejected = " " + _words(rng, rng.randint(c_lo, c_hi))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def pair_token_counts(pair: dict[str, str]) -> tuple[int, int, int]:
    """(prompt tokens with BOS, chosen tokens with EOS, rejected tokens with EOS)."""
    return (
        len(pair["prompt"].split()) + 1,
        len(pair["chosen"].split()) + 1,
        len(pair["rejected"].split()) + 1,
    )


def prepare(root: Path, shape: ModelShape, *, pairs: int, seed: int = 0) -> dict[str, str]:
    """Write the model folder (with its tokenizer), the tokenizer alone and one JSONL per regime
    under `root`, once. Load the tokenizer from `tokenizer`: from the model folder, transformers 5
    gives a Qwen2 model's folder its own Qwen2Tokenizer, which reads this word-level vocabulary as
    byte-level BPE (every word unknown)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"shape": asdict(shape), "pairs": pairs, "seed": seed}
    model_dir, tokenizer_dir = root / "model", root / "tokenizer"
    stamp_file = root / "workload.json"
    fresh = stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp and tokenizer_dir.is_dir()
    if not fresh:
        tokenizer = build_tokenizer()
        build_model(shape, seed=seed).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        tokenizer.save_pretrained(tokenizer_dir)
        for regime in REGIMES:
            rows = build_pairs(regime, pairs, seed=seed)
            (root / f"{regime}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
            )
        stamp_file.write_text(json.dumps(stamp))
    return {
        "model": str(model_dir),
        "tokenizer": str(tokenizer_dir),
        **{regime: str(root / f"{regime}.jsonl") for regime in REGIMES},
    }
