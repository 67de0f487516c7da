"""The benchmark's model, tokenizer and data, built locally from a seed (nothing is downloaded).

- Model: a Llama-architecture causal LM with real proportions (vocabulary 32,000, untied output
  head, head dimension 64, MLP width ≈ 8/3 of the hidden size), random weights.
- Tokenizer: a word-level tokenizer whose 32,000 tokens are `<s> </s> <pad> <unk>` and the words
  `w4` … `w31999`; text is the words joined by spaces, so a text of n words is n tokens and both
  trainers see exactly the token ids the generator drew (plus BOS, and EOS after each completion).
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
    hidden: int = 256
    layers: int = 4
    vocab: int = VOCAB

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 64)

    @property
    def intermediate(self) -> int:
        return 32 * round(self.hidden * 8 / 3 / 32)  # 256 -> 672 (Llama-2 7B: 4096 -> 11008)


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
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


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
    """Write the model folder (with its tokenizer) and one JSONL per regime under `root`, once."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"shape": asdict(shape), "pairs": pairs, "seed": seed}
    model_dir = root / "model"
    stamp_file = root / "workload.json"
    if not (stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp):
        tokenizer = build_tokenizer()
        build_model(shape, seed=seed).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        for regime in REGIMES:
            rows = build_pairs(regime, pairs, seed=seed)
            (root / f"{regime}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
            )
        stamp_file.write_text(json.dumps(stamp))
    return {"model": str(model_dir), **{regime: str(root / f"{regime}.jsonl") for regime in REGIMES}}
