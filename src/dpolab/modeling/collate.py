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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dpolab.modeling.logprobs import TokenTargets

PROMPT, CHOSEN, REJECTED = 1, 2, 3


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
    `packed` chooses the layout (`dpolab.modeling.layout.RowLayout.packed`).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    score_prompt: bool = False
    packed: bool = True

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
        batch: dict[str, Any] = {
            "input_ids": _pad(rows, self.pad_token_id, self.pad_to_multiple_of)[:, :width],
            "attention_mask": _pad([[1] * len(r) for r in rows], 0, self.pad_to_multiple_of)[:, :width],
            "target_positions": torch.tensor(t_pos, dtype=torch.long),
            "target_tokens": torch.tensor(t_tok, dtype=torch.long),
            "target_segments": torch.tensor(t_seg, dtype=torch.long),
            "num_sequences": 2 * len(examples),
        }
        if self.score_prompt:
            batch.update(
                prompt_target_positions=torch.tensor(p_pos, dtype=torch.long),
                prompt_target_tokens=torch.tensor(p_tok, dtype=torch.long),
                prompt_target_segments=torch.tensor(p_seg, dtype=torch.long),
                num_prompts=len(examples),
            )
        return batch

    def _packed(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows, segments, positions = [], [], []
        t_pos, t_tok, t_seg = [], [], []
        p_pos, p_tok, p_seg = [], [], []
        width = max(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        for b, e in enumerate(examples):
            p, c, r = list(e["prompt_ids"]), list(e["chosen_ids"]), list(e["rejected_ids"])
            _check_prompt(b, p)
            n_p, n_c = len(p), len(c)
            rows.append(p + c + r)
            segments.append([PROMPT] * n_p + [CHOSEN] * n_c + [REJECTED] * len(r))
            positions.append(list(range(n_p + n_c)) + list(range(n_p, n_p + len(r))))
            base = b * width
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
        batch: dict[str, Any] = {
            "input_ids": _pad(rows, self.pad_token_id, self.pad_to_multiple_of)[:, :width],
            "segment_ids": _pad(segments, 0, self.pad_to_multiple_of)[:, :width],
            "position_ids": _pad(positions, 0, self.pad_to_multiple_of)[:, :width],
            "target_positions": torch.tensor(t_pos, dtype=torch.long),
            "target_tokens": torch.tensor(t_tok, dtype=torch.long),
            "target_segments": torch.tensor(t_seg, dtype=torch.long),
            "num_sequences": 2 * len(examples),
        }
        if self.score_prompt:
            batch.update(
                prompt_target_positions=torch.tensor(p_pos, dtype=torch.long),
                prompt_target_tokens=torch.tensor(p_tok, dtype=torch.long),
                prompt_target_segments=torch.tensor(p_seg, dtype=torch.long),
                num_prompts=len(examples),
            )
        return batch


@dataclass
class SequenceCollator:
    """Collates prompt + one completion per row (SFT, evaluation of single completions).

    Takes `prompt_ids` and `completion_ids` (or `chosen_ids`); sequence b is row b. Rows are
    right-padded with a 2-D attention mask.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows, t_pos, t_tok, t_seg = [], [], [], []
        completions = [e["completion_ids"] if "completion_ids" in e else e["chosen_ids"] for e in examples]
        width = max(len(e["prompt_ids"]) + len(c) for e, c in zip(examples, completions))
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        for b, (e, c) in enumerate(zip(examples, completions)):
            p = list(e["prompt_ids"])
            _check_prompt(b, p)
            rows.append(p + list(c))
            for j, tok in enumerate(c):
                t_pos.append(b * width + len(p) - 1 + j)
                t_tok.append(tok)
                t_seg.append(b)
        input_ids = _pad(rows, self.pad_token_id, self.pad_to_multiple_of)[:, :width]
        attention_mask = _pad([[1] * len(r) for r in rows], 0, self.pad_to_multiple_of)[:, :width]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target_positions": torch.tensor(t_pos, dtype=torch.long),
            "target_tokens": torch.tensor(t_tok, dtype=torch.long),
            "target_segments": torch.tensor(t_seg, dtype=torch.long),
            "num_sequences": len(examples),
        }
