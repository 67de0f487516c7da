"""The demo's tokenizer: one token per word, symbol and digit, built locally with `tokenizers`.

Digits are single tokens so that the model sees numbers digit by digit (arithmetic it can learn).
Like GPT-2's byte-level tokenizers, a token keeps the space before it (`Ġ7` vs `7`), so decoding
gives back the exact text: `decode(encode(t)) == t` for every text the task writes.

The vocabulary is fixed by the task's alphabet and its texts (no training statistics), plus the
special tokens `<s>` (prepended to every encoded text), `</s>` (end of a completion), `<pad>`
and `<unk>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dpolab.demo.task import ITEMS, NAMES, OPERATIONS, TOKEN_PATTERN, task_tokens

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# Pieces every task text may use, besides the words of its templates.
_BASE_PIECES = [*"0123456789", *OPERATIONS, "=", ".", ",", "?", ":", "####", "\n"]


def _byte_level(piece: str) -> str:
    """A piece as the byte-level pre-tokenizer writes it (space -> `Ġ`, newline -> `Ċ`)."""
    from tokenizers import pre_tokenizers

    ((mapped, _),) = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(piece)
    return mapped


def task_vocabulary(texts: Iterable[str] = ()) -> list[str]:
    """Every piece the task writes, each with and without its leading space, in a fixed order.

    The template words come from `dpolab.demo.task`; `texts` may add pieces (their tokens by
    `task_tokens`)."""
    from dpolab.demo import task

    words: list[str] = []
    for name, pronoun, possessive in NAMES:
        words += [name, pronoun, possessive]
    words += list(ITEMS)
    for phrases in task._PHRASES.values():
        for phrase in phrases:
            words += task_tokens(phrase.format(P="", n=""))
    words += task_tokens("has . How many does have now ?")
    pieces = [p.strip(" ") or p for p in [*_BASE_PIECES, *words]]
    for text in texts:
        pieces += [t.lstrip(" ") for t in task_tokens(text)]
    vocab: list[str] = []
    for piece in pieces:
        for form in (piece, " " + piece) if piece != "\n" else (piece,):
            if form not in vocab:
                vocab.append(form)
    return vocab


def build_demo_tokenizer(texts: Iterable[str] = ()):
    """A `PreTrainedTokenizerFast` for the task: WordLevel over `task_vocabulary(texts)`, byte-level
    spaces, `<s>` prepended to every encoded text, `</s>` as EOS, `<pad>` for padding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {token: i for i, token in enumerate(specials)}
    for piece in task_vocabulary(texts):
        vocab.setdefault(_byte_level(piece), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    bos_id = vocab["<s>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def save_tokenizer(out_dir: str | Path, texts: Iterable[str] = ()):
    """Build the tokenizer and save it in Hugging Face format under `out_dir`; returns it."""
    tokenizer = build_demo_tokenizer(texts)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
