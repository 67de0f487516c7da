"""Batches for training: one row per preference pair, the prompt computed once (or, for the models
that cannot take such a row, two: see `dpolab.modeling.layout`).

A pair row is `prompt + chosen + rejected`, right-padded. The rejected completion takes the
positions the chosen one had (both continue the prompt), and `segment_ids` let
`dpolab.modeling.attention.segment_attention_mask` stop each completion from seeing the other. So the
prompt goes through the model once per pair, not twice as in a chosen/rejected batch.

Sequence (segment) numbering of the targets: pair b's chosen completion is sequence 2b, its
rejected one 2b + 1.

Example, prompt [1 2 3], chosen [4 5], rejected [6]:

    input_ids     1 2 3 4 5 6
    segment_ids   1 1 1 2 2 3
    position_ids  0 1 2 3 4 3
    scored        4 predicted at position 2, 5 at 3 (sequence 0); 6 predicted at position 2 (sequence 1)
    prompt        (with `score_prompt`) 2 predicted at position 0, 3 at 1 (prompt 0)

With `packed=False` (the separate layout), pair b is rows 2b (`prompt + chosen`) and 2b + 1
(`prompt + rejected`), right-padded, with a 2-D `attention_mask`; the targets, their order and the
sequence numbering are the same, so nothing downstream knows which layout it got:

    input_ids       1 2 3 4 5        attention_mask  1 1 1 1 1
                    1 2 3 6 0                        1 1 1 1 0
    scored          4 at position 2, 5 at 3 (sequence 0); 6 at position 5 + 2 (sequence 1)

With `pack_tokens` (`data.pack_tokens`), several pairs share a row, up to that many tokens
(`dpolab.modeling.packing.pack_rows`); pair k of a row takes segments 3k+1 (prompt), 3k+2, 3k+3
and its positions restart at 0, so the mask keeps it to itself. Prompt [1 2 3] chosen [4 5]
rejected [6], then prompt [7] chosen [8] rejected [9], budget 9:

    input_ids     1 2 3 4 5 6 7 8 9
    segment_ids   1 1 1 2 2 3 4 5 6
    position_ids  0 1 2 3 4 3 0 1 1

The targets, their order and the sequence numbering stay those of one pair per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dpolab.modeling.logprobs import TokenTargets
from dpolab.modeling.packing import pack_rows

PROMPT, CHOSEN, REJECTED = 1, 2, 3


def _width(longest: int, multiple: int | None) -> int:
    return -(-longest // multiple) * multiple if multiple else longest


def _pad(rows: Sequence[Sequence[int]], value: int, multiple: int | None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    if multiple:
        width = -(-width // multiple) * multiple
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def _check_prompt(b: int, prompt_ids: Sequence[int]) -> None:
    # with no prompt token, nothing predicts the first completion token: its target position would
    # be b·width − 1, the previous row's last slot, and the log-probs silently wrong
    if len(prompt_ids) == 0:
        raise ValueError(
            f"example {b} has no prompt tokens; the first completion token needs one before it "
            f"(dpolab.data.tokenize rejects such rows)"
        )


def batch_targets(batch: dict[str, Any]) -> TokenTargets:
    """The `TokenTargets` a collated batch carries."""
    return TokenTargets(
        positions=batch["target_positions"],
        tokens=batch["target_tokens"],
        segments=batch["target_segments"],
        num_segments=int(batch["num_sequences"]),
    )


def batch_prompt_targets(batch: dict[str, Any]) -> TokenTargets:
    """The prompts' own tokens a batch collated with `score_prompt` carries (prompt b: segment b)."""
    if "prompt_target_positions" not in batch:
        raise ValueError("this batch was collated without score_prompt: it carries no prompt targets")
    return TokenTargets(
        positions=batch["prompt_target_positions"],
        tokens=batch["prompt_target_tokens"],
        segments=batch["prompt_target_segments"],
        num_segments=int(batch["num_prompts"]),
    )


@dataclass
class PairCollator:
    """Collates tokenised pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`) into packed pair rows.

    Examples may carry `ref_logps`, a `(num_layers, 2)` list of reference log-probs [chosen,
    rejected] per layer (precomputed reference); they are stacked into `(num_layers, 2·batch)`.
    With `score_prompt`, the batch also names the prompts' own tokens (each from its second; the
    first has nothing before it) as `prompt_target_*`, for `batch_prompt_targets` (ORPO's NLL).
    `packed` chooses the layout (`dpolab.modeling.layout.RowLayout.packed`); `pack_tokens` puts
    several pairs in a row, up to that many tokens (a pair longer goes in a row of its own).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    score_prompt: bool = False
    packed: bool = True
    pack_tokens: int | None = None

    def __post_init__(self):
        if self.pack_tokens is not None and not self.packed:
            raise ValueError(
                "separate chosen and rejected rows cannot be packed: pack_tokens needs packed=True"
            )

    def length(self, example: dict[str, Any]) -> int:
        """The tokens an example takes in a row (its longer row in the separate layout)."""
        p, c, r = (len(example[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        return p + c + r if self.packed else p + max(c, r)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._packed(examples) if self.packed else self._separate(examples)
        if "ref_logps" in examples[0]:
            ref = torch.tensor([e["ref_logps"] for e in examples], dtype=torch.float32)  # (B, layers, 2)
            batch["ref_logps"] = ref.permute(1, 0, 2).reshape(
                ref.shape[1], -1
            )  # (layers, 2B): c0 r0 c1 r1 ...
        if "index" in examples[0]:
            batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        return batch

    def _separate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows, t_pos, t_tok, t_seg = [], [], [], []
        p_pos, p_tok, p_seg = [], [], []
        width = max(
            len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples
        )
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        for b, e in enumerate(examples):
            p = list(e["prompt_ids"])
            _check_prompt(b, p)
            n_p = len(p)
            if self.score_prompt:  # from the chosen row: prompt token j ≥ 1 is predicted at j − 1
                p_pos += [2 * b * width + j - 1 for j in range(1, n_p)]
                p_tok += p[1:]
                p_seg += [b] * (n_p - 1)
            for s, completion in ((2 * b, e["chosen_ids"]), (2 * b + 1, e["rejected_ids"])):
                rows.append(p + list(completion))
                for j, tok in enumerate(completion):  # token j is predicted at position n_p − 1 + j
                    t_pos.append(s * width + n_p - 1 + j)
                    t_tok.append(tok)
                    t_seg.append(s)
        batch = {
            "input_ids": _pad(rows, self.pad_token_id, self.pad_to_multiple_of)[:, :width],
            "attention_mask": _pad([[1] * len(r) for r in rows], 0, self.pad_to_multiple_of)[:, :width],
        }
        return self._with_targets(batch, len(examples), (t_pos, t_tok, t_seg), (p_pos, p_tok, p_seg))

    def _with_targets(self, batch: dict[str, Any], pairs: int, targets, prompt_targets) -> dict[str, Any]:
        """`batch` with the completions' targets (positions, tokens, segments) and, when the prompt
        is scored, the prompts'."""
        for prefix, (positions, tokens, segments) in (("", targets), ("prompt_", prompt_targets)):
            if prefix and not self.score_prompt:
                break
            batch[f"{prefix}target_positions"] = torch.tensor(positions, dtype=torch.long)
            batch[f"{prefix}target_tokens"] = torch.tensor(tokens, dtype=torch.long)
            batch[f"{prefix}target_segments"] = torch.tensor(segments, dtype=torch.long)
        batch["num_sequences"] = 2 * pairs
        if self.score_prompt:
            batch["num_prompts"] = pairs
        return batch

    def _packed(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [self.length(e) for e in examples]
        rows = _Rows(lengths, self.pack_tokens, self.pad_to_multiple_of, self.pad_token_id)
        t_pos, t_tok, t_seg = [], [], []
        p_pos, p_tok, p_seg = [], [], []
        for b, e in enumerate(examples):
            p, c, r = list(e["prompt_ids"]), list(e["chosen_ids"]), list(e["rejected_ids"])
            _check_prompt(b, p)
            n_p, n_c = len(p), len(c)
            base = rows.place(
                b,
                p + c + r,
                segments=[PROMPT] * n_p + [CHOSEN] * n_c + [REJECTED] * len(r),
                positions=list(range(n_p + n_c)) + list(range(n_p, n_p + len(r))),
            )
            if self.score_prompt:  # prompt token j ≥ 1 is predicted at position j − 1
                p_pos += [base + j - 1 for j in range(1, n_p)]
                p_tok += p[1:]
                p_seg += [b] * (n_p - 1)
            # chosen token j is predicted at position n_p − 1 + j
            for j, tok in enumerate(c):
                t_pos.append(base + n_p - 1 + j)
                t_tok.append(tok)
                t_seg.append(2 * b)
            # rejected token 0 is predicted by the prompt's last position; token j ≥ 1 by the
            # rejected token before it, which sits at n_p + n_c + j − 1
            for j, tok in enumerate(r):
                t_pos.append(base + (n_p - 1 if j == 0 else n_p + n_c + j - 1))
                t_tok.append(tok)
                t_seg.append(2 * b + 1)
        return self._with_targets(rows.tensors(), len(examples), (t_pos, t_tok, t_seg), (p_pos, p_tok, p_seg))


class _Rows:
    """The rows of a packed batch being filled: which row and column each example takes
    (`pack_rows`), the width (the fullest row), and the tensors written in place."""

    def __init__(self, lengths: list[int], budget: int | None, multiple: int | None, pad_token_id: int):
        self.start: dict[int, tuple[int, int, int]] = {}  # example → (row, column, its number in the row)
        rows = pack_rows(lengths, budget)
        for r, members in enumerate(rows):
            column = 0
            for k, b in enumerate(members):
                self.start[b] = (r, column, k)
                column += lengths[b]
        self.width = _width(max(sum(lengths[b] for b in members) for members in rows), multiple)
        shape = (len(rows), self.width)
        self.input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
        self.segment_ids = torch.zeros(shape, dtype=torch.long)
        self.position_ids = torch.zeros(shape, dtype=torch.long)

    def place(self, b: int, ids: list[int], *, segments: list[int], positions: list[int]) -> int:
        """Write example b, its segments numbered as if it were alone in the row (from 1); returns
        the flat position of its first token (row · width + column)."""
        row, column, k = self.start[b]
        span = slice(column, column + len(ids))
        self.input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        self.segment_ids[row, span] = torch.as_tensor(segments, dtype=torch.long) + 3 * k
        self.position_ids[row, span] = torch.as_tensor(positions, dtype=torch.long)
        return row * self.width + column

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "segment_ids": self.segment_ids,
            "position_ids": self.position_ids,
        }


@dataclass
class SequenceCollator:
    """Collates prompt + one completion per row (SFT, evaluation of single completions).

    Takes `prompt_ids` and `completion_ids` (or `chosen_ids`); sequence b is row b. Rows are
    right-padded with a 2-D attention mask. With `pack_tokens`, several sequences share a row up
    to that many tokens, as pairs do in `PairCollator`: sequence k of a row is segment 3k+2 (a
    completion with no prompt segment: it sees itself only) and its positions restart at 0; the
    batch then carries `segment_ids` and `position_ids` instead of an attention mask.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    pack_tokens: int | None = None

    @staticmethod
    def _completion(example: dict[str, Any]) -> list[int]:
        return list(example["completion_ids"] if "completion_ids" in example else example["chosen_ids"])

    def length(self, example: dict[str, Any]) -> int:
        """The tokens an example takes in a row."""
        return len(example["prompt_ids"]) + len(self._completion(example))

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows, t_pos, t_tok, t_seg = [], [], [], []
        lengths = [self.length(e) for e in examples]
        packed = (
            _Rows(lengths, self.pack_tokens, self.pad_to_multiple_of, self.pad_token_id)
            if self.pack_tokens is not None
            else None
        )
        width = _width(max(lengths), self.pad_to_multiple_of)
        for b, e in enumerate(examples):
            p, c = list(e["prompt_ids"]), self._completion(e)
            _check_prompt(b, p)
            if packed is None:
                base = b * width
                rows.append(p + c)
            else:
                n = len(p) + len(c)
                base = packed.place(b, p + c, segments=[CHOSEN] * n, positions=list(range(n)))
            for j, tok in enumerate(c):  # token j is predicted at position len(p) − 1 + j
                t_pos.append(base + len(p) - 1 + j)
                t_tok.append(tok)
                t_seg.append(b)
        if packed is None:
            inputs = {
                "input_ids": _pad(rows, self.pad_token_id, self.pad_to_multiple_of)[:, :width],
                "attention_mask": _pad([[1] * len(r) for r in rows], 0, self.pad_to_multiple_of)[:, :width],
            }
        else:
            inputs = packed.tensors()
        return {
            **inputs,
            "target_positions": torch.tensor(t_pos, dtype=torch.long),
            "target_tokens": torch.tensor(t_tok, dtype=torch.long),
            "target_segments": torch.tensor(t_seg, dtype=torch.long),
            "num_sequences": len(examples),
        }
