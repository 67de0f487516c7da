"""Tokenising preference pairs the way TRL's DPOTrainer does, so that numbers compare.

Standard text: the EOS token is appended to each completion's text; the prompt and
prompt+completion are tokenised with the tokenizer's special tokens (BOS where it adds one), and
the completion starts where the two token sequences diverge. Conversational: the chat template
renders the prompt with the generation prompt and prompt+completion as a conversation; the
template's own end-of-turn tokens end the completion.

Then truncation: the prompt keeps its last `max_prompt_length` tokens (the context nearest the
answer); each completion keeps its first `max_length − len(prompt)` tokens.

Many pairs are tokenised together (`tokenize_examples`: one tokenizer call for all their texts, as
`datasets.map` hands them over in batches); `tokenize_pair` and `tokenize_sft` are a batch of one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from dpolab.data.formats import BadRow, PreferenceExample, Text, common_prefix_length
from dpolab.errors import DpolabError


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    row: int = 0
    prompt_truncated: bool = False
    completion_truncated: bool = False

    def to_dict(self) -> dict:
        return {
            "prompt_ids": self.prompt_ids,
            "chosen_ids": self.chosen_ids,
            "rejected_ids": self.rejected_ids,
            "row": self.row,
        }


def _check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DpolabError(
            f"the data is conversational but the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no "
            f"chat template; use a tokenizer with one, or give the data as standard text"
        )


def encode(tokenizer, items: list[tuple[Text, bool]]) -> list[list[int]]:
    """The token ids of each `(text or messages, generation_prompt)`, in as few tokenizer calls as
    there are kinds: all texts in one call (with the tokenizer's special tokens), the
    conversations through the chat template in one call per `generation_prompt` value (a text
    ignores it). The ids are those of one call per item."""
    out: list[list[int]] = [[] for _ in items]
    texts = [i for i, (item, _) in enumerate(items) if isinstance(item, str)]
    if texts:
        encoded = tokenizer(
            [items[i][0] for i in texts], return_attention_mask=False, return_token_type_ids=False
        )
        for i, ids in zip(texts, encoded["input_ids"]):
            out[i] = list(ids)
    for generation_prompt in (True, False):
        chats = [
            i for i, (item, g) in enumerate(items) if not isinstance(item, str) and g is generation_prompt
        ]
        if not chats:
            continue
        _check_chat_template(tokenizer)
        rendered = tokenizer.apply_chat_template(
            [items[i][0] for i in chats],
            tokenize=True,
            add_generation_prompt=generation_prompt,
            return_dict=True,
        )
        for i, ids in zip(chats, rendered["input_ids"]):
            out[i] = list(ids)
    return out


def _ids(tokenizer, text: Text, *, generation_prompt: bool = False) -> list[int]:
    """The token ids of one text, or of one conversation through the chat template (`encode`)."""
    return encode(tokenizer, [(text, generation_prompt)])[0]


def prompt_completion_ids(
    tokenizer, pairs: list[tuple[Text, list[Text]]]
) -> list[tuple[list[int], list[list[int]]]]:
    """For each `(prompt, [completion, ...])`: (prompt_ids, [completion_ids, ...]) sharing one
    prompt, before truncation; all of them tokenised together (`encode`)."""
    eos = tokenizer.eos_token or ""
    items: list[tuple[Text, bool]] = []
    for prompt, completions in pairs:
        items.append((prompt, True))
        for completion in completions:
            if isinstance(completion, list):
                items.append((prompt + completion, False))
            else:
                text = completion if completion.endswith(eos) else completion + eos
                items.append((prompt + text, False))
    ids = iter(encode(tokenizer, items))
    out = []
    for _, completions in pairs:
        prompt_ids = next(ids)
        full = [next(ids) for _ in completions]
        # the completion starts where prompt and prompt+completion diverge (not always after the prompt:
        # tokens can merge across the boundary, and some templates render the prompt alone differently)
        prompt_len = min(common_prefix_length(prompt_ids, f) for f in full)
        out.append((full[0][:prompt_len], [f[prompt_len:] for f in full]))
    return out


def tokenize_prompt_completions(
    tokenizer, prompt: Text, completions: list[Text]
) -> tuple[list[int], list[list[int]]]:
    """(prompt_ids, [completion_ids, ...]) sharing one prompt, before truncation."""
    return prompt_completion_ids(tokenizer, [(prompt, completions)])[0]


def truncate(
    prompt_ids: list[int],
    completions: list[list[int]],
    *,
    max_length: int | None,
    max_prompt_length: int | None,
) -> tuple[list[int], list[list[int]], bool, bool]:
    """Prompt keeps its end; completions keep their start. Raises `BadRow` if no completion token fits."""
    prompt_truncated = max_prompt_length is not None and len(prompt_ids) > max_prompt_length
    if prompt_truncated:
        prompt_ids = prompt_ids[-max_prompt_length:]
    completion_truncated = False
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room <= 0:
            raise BadRow(
                "prompt",
                f"the prompt alone is {len(prompt_ids)} tokens, so no completion token survives "
                f"max_length={max_length}",
            )
        completion_truncated = any(len(c) > room for c in completions)
        completions = [c[:room] for c in completions]
    return prompt_ids, completions, prompt_truncated, completion_truncated


def _checked(
    example: PreferenceExample,
    prompt_ids: list[int],
    completions: list[list[int]],
    *,
    max_length: int | None,
    max_prompt_length: int | None,
) -> TokenizedPair:
    """The pair (one completion: SFT; two: chosen and rejected) truncated; raises `BadRow` if it
    cannot be trained on."""
    if not prompt_ids:
        raise BadRow("prompt", "no prompt tokens (the prompt must tokenise to at least one token)")
    for name, ids in zip(("chosen", "rejected"), completions):
        if not ids:
            raise BadRow(name, "no tokens after the prompt")
    prompt_ids, completions, p_trunc, c_trunc = truncate(
        prompt_ids, completions, max_length=max_length, max_prompt_length=max_prompt_length
    )
    if len(completions) == 2 and completions[0] == completions[1]:
        raise BadRow("rejected", f"identical to chosen within max_length={max_length} tokens")
    rejected_ids = completions[1] if len(completions) == 2 else []
    return TokenizedPair(prompt_ids, completions[0], rejected_ids, example.row, p_trunc, c_trunc)


def tokenize_examples(
    examples: list[PreferenceExample],
    tokenizer,
    *,
    max_length: int | None,
    max_prompt_length: int | None,
    sft: bool = False,
) -> list[TokenizedPair | BadRow]:
    """The token ids of each example, truncated, or the `BadRow` that says why it cannot be
    trained on; tokenised together (`prompt_completion_ids`). With `sft`, the prompt and the
    chosen completion only (`rejected_ids` empty)."""
    split = prompt_completion_ids(
        tokenizer, [(e.prompt, [e.chosen] if sft else [e.chosen, e.rejected]) for e in examples]
    )
    out: list[TokenizedPair | BadRow] = []
    for example, (prompt_ids, completions) in zip(examples, split):
        try:
            out.append(
                _checked(
                    example,
                    prompt_ids,
                    completions,
                    max_length=max_length,
                    max_prompt_length=max_prompt_length,
                )
            )
        except BadRow as err:
            out.append(err)
    return out


def _one(result: TokenizedPair | BadRow) -> TokenizedPair:
    if isinstance(result, BadRow):
        raise result
    return result


def tokenize_pair(
    example: PreferenceExample, tokenizer, *, max_length: int | None, max_prompt_length: int | None
) -> TokenizedPair:
    """Token ids of one pair, truncated; raises `BadRow` if it cannot be trained on."""
    (result,) = tokenize_examples(
        [example], tokenizer, max_length=max_length, max_prompt_length=max_prompt_length
    )
    return _one(result)


def tokenize_sft(
    example: PreferenceExample, tokenizer, *, max_length: int | None, max_prompt_length: int | None
) -> TokenizedPair:
    """Prompt and chosen completion only (SFT on the chosen responses); `rejected_ids` is empty."""
    (result,) = tokenize_examples(
        [example], tokenizer, max_length=max_length, max_prompt_length=max_prompt_length, sft=True
    )
    return _one(result)


def batched(tokenize):
    """`fn(examples, tokenizer, *, max_length, max_prompt_length) -> [TokenizedPair | BadRow]` for a
    stage's per-pair `tokenize`: `tokenize_examples` for `tokenize_pair` and `tokenize_sft`, and
    `tokenize` called on each example for any other."""
    if tokenize is tokenize_pair or tokenize is tokenize_sft:
        return functools.partial(tokenize_examples, sft=tokenize is tokenize_sft)
    return functools.partial(_each, tokenize)


def _each(tokenize, examples, tokenizer, **kwargs) -> list[TokenizedPair | BadRow]:
    out: list[TokenizedPair | BadRow] = []
    for example in examples:
        try:
            out.append(tokenize(example, tokenizer, **kwargs))
        except BadRow as err:
            out.append(err)
    return out
