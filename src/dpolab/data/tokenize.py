"""Tokenising preference pairs the way TRL's DPOTrainer does, so that numbers compare.

Standard text: the EOS token is appended to each completion's text; the prompt and
prompt+completion are tokenised with the tokenizer's special tokens (BOS where it adds one), and
the completion starts where the two token sequences diverge. Conversational: the chat template
renders the prompt with the generation prompt and prompt+completion as a conversation; the
template's own end-of-turn tokens end the completion.

Then truncation: the prompt keeps its last `max_prompt_length` tokens (the context nearest the
answer); each completion keeps its first `max_length − len(prompt)` tokens.
"""

from __future__ import annotations

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


def _ids(tokenizer, text: Text, *, generation_prompt: bool = False) -> list[int]:
    if isinstance(text, list):
        if not getattr(tokenizer, "chat_template", None):
            raise DpolabError(
                f"the data is conversational but the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no "
                f"chat template; use a tokenizer with one, or give the data as standard text"
            )
        out = tokenizer.apply_chat_template(
            text, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )
        return list(out["input_ids"])
    return list(tokenizer(text)["input_ids"])


def tokenize_prompt_completions(
    tokenizer, prompt: Text, completions: list[Text]
) -> tuple[list[int], list[list[int]]]:
    """(prompt_ids, [completion_ids, ...]) sharing one prompt, before truncation."""
    eos = tokenizer.eos_token or ""
    prompt_ids = _ids(tokenizer, prompt, generation_prompt=True)
    full = []
    for completion in completions:
        if isinstance(completion, list):
            full.append(_ids(tokenizer, prompt + completion))
        else:
            text = completion if completion.endswith(eos) else completion + eos
            full.append(_ids(tokenizer, prompt + text))
    # the completion starts where prompt and prompt+completion diverge (not always after the prompt:
    # tokens can merge across the boundary, and some templates render the prompt alone differently)
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full)
    return full[0][:prompt_len], [ids[prompt_len:] for ids in full]


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


def tokenize_pair(
    example: PreferenceExample, tokenizer, *, max_length: int | None, max_prompt_length: int | None
) -> TokenizedPair:
    """Token ids of one pair, truncated; raises `BadRow` if it cannot be trained on."""
    prompt_ids, (chosen_ids, rejected_ids) = tokenize_prompt_completions(
        tokenizer, example.prompt, [example.chosen, example.rejected]
    )
    if not prompt_ids:
        raise BadRow("prompt", "no prompt tokens (the prompt must tokenise to at least one token)")
    if not chosen_ids:
        raise BadRow("chosen", "no tokens after the prompt")
    if not rejected_ids:
        raise BadRow("rejected", "no tokens after the prompt")
    prompt_ids, (chosen_ids, rejected_ids), p_trunc, c_trunc = truncate(
        prompt_ids, [chosen_ids, rejected_ids], max_length=max_length, max_prompt_length=max_prompt_length
    )
    if chosen_ids == rejected_ids:
        raise BadRow("rejected", f"identical to chosen within max_length={max_length} tokens")
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, example.row, p_trunc, c_trunc)


def tokenize_sft(
    example: PreferenceExample, tokenizer, *, max_length: int | None, max_prompt_length: int | None
) -> TokenizedPair:
    """Prompt and chosen completion only (SFT on the chosen responses); `rejected_ids` is empty."""
    prompt_ids, (chosen_ids,) = tokenize_prompt_completions(tokenizer, example.prompt, [example.chosen])
    if not prompt_ids:
        raise BadRow("prompt", "no prompt tokens (the prompt must tokenise to at least one token)")
    if not chosen_ids:
        raise BadRow("chosen", "no tokens after the prompt")
    prompt_ids, (chosen_ids,), p_trunc, c_trunc = truncate(
        prompt_ids, [chosen_ids], max_length=max_length, max_prompt_length=max_prompt_length
    )
    return TokenizedPair(prompt_ids, chosen_ids, [], example.row, p_trunc, c_trunc)
