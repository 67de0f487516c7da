"""Sampling answers to prompts with `transformers`' `generate`: batched, seeded and resumable.

Defaults are the papers' (Intermediate DPO, Table 1 and §4): temperature 0.3, repetition penalty
1.1. The chat template (`chat_template`):
- `auto` (default): prompts given as messages go through the tokenizer's chat template with the
  generation prompt; text prompts are tokenised as training tokenises them (special tokens
  included), so a model trained on standard-format (text) pairs is asked as it was trained.
- `always`: a text prompt is taken as one user message and goes through the chat template too
  (an error if the tokenizer has none): for a chat model asked with plain-text prompts.
- `never`: no chat template; messages are written as plain text the way the judges see them
  (`prompt_text`: a single user message is its content, a conversation `role: content` turns)
  and tokenised as text: for a base model asked with conversational prompt files.

Resuming: every batch is appended to the output as soon as it is done (flushed to the disk), so
an interrupted run leaves whole batches behind (a half-written last line is cut off on the next
start); on a full disk the batch is cut back off and the run stops with one line. A new run
on the same output skips the prompts already answered, after checking that they are the same
prompts with the same settings. Batch b (prompts b·n .. b·n + n − 1) is always sampled with the
seed `seed + b·n`, so a resumed run writes what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpolab.data.formats import Text
from dpolab.data.io import write_jsonl_atomic
from dpolab.data.tokenize import _ids as text_or_chat_ids
from dpolab.errors import DpolabError, where
from dpolab.evaluation.answer_files import PromptRow, prompt_key, prompt_text
from dpolab.storage import append_text

CHAT_TEMPLATE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.3
    repetition_penalty: float = 1.1
    top_p: float | None = None
    top_k: int | None = None
    batch_size: int = 8
    seed: int = 0
    max_prompt_length: int | None = None
    chat_template: str = "auto"  # one of CHAT_TEMPLATE_MODES

    def check(self) -> None:
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise DpolabError(
                f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, not {self.chat_template!r}"
            )
        if self.max_new_tokens < 1:
            raise DpolabError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise DpolabError(f"temperature must be ≥ 0, not {self.temperature}")
        if self.repetition_penalty <= 0:
            raise DpolabError(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if self.batch_size < 1:
            raise DpolabError(f"batch_size must be at least 1, not {self.batch_size}")

    def recorded(self) -> dict[str, Any]:
        """The settings that change what is sampled (batch size does, through the seeds)."""
        return asdict(self)


@dataclass
class GenerationReport:
    output: str
    generated: int  # answers written by this call
    resumed: int  # answers already in the output


def check_chat_template(tokenizer, mode: str) -> None:
    """`always` needs a tokenizer with a chat template; say so before anything is generated."""
    if mode == "always" and not getattr(tokenizer, "chat_template", None):
        raise DpolabError(
            f"--chat-template always: the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
            f"template; use --chat-template auto (text prompts as text) or a tokenizer with one"
        )


def prompt_ids(
    tokenizer, prompt: Text, *, max_prompt_length: int | None = None, chat_template: str = "auto"
) -> list[int]:
    """Token ids of a prompt, rendered as `chat_template` says (module docstring; `auto` is as
    training renders it: messages through the chat template with the generation prompt, text with
    the tokenizer's special tokens); the last `max_prompt_length` kept."""
    if chat_template == "always" and isinstance(prompt, str):
        check_chat_template(tokenizer, chat_template)
        prompt = [{"role": "user", "content": prompt}]
    elif chat_template == "never" and isinstance(prompt, list):
        prompt = prompt_text(prompt)
    ids = text_or_chat_ids(tokenizer, prompt, generation_prompt=True)
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]
    return ids


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """`(input_ids, attention_mask)`, each `(B, T)`, rows right-aligned (generation needs the
    prompts' last tokens in the last column)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def generate_from_ids(
    model, tokenizer, rows: Sequence[Sequence[int]], settings: GenerationSettings, *, seed: int
) -> list[str]:
    """Completions of prompts given as token ids (decoded text of the new tokens, special tokens
    dropped, surrounding whitespace stripped)."""
    import torch

    from dpolab.modeling.loading import model_device

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, attention_mask = left_pad(rows, pad_id)
    device = model_device(model)
    sampling: dict[str, Any] = {"do_sample": settings.temperature > 0}
    if settings.temperature > 0:
        sampling["temperature"] = settings.temperature
        if settings.top_p is not None:
            sampling["top_p"] = settings.top_p
        if settings.top_k is not None:
            sampling["top_k"] = settings.top_k
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            pad_token_id=pad_id,
            **sampling,
        )
    new_tokens = out[:, input_ids.shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_batch(
    model, tokenizer, prompts: Sequence[Text], settings: GenerationSettings, *, seed: int
) -> list[str]:
    """One batch of completions of prompts (text or messages)."""
    rows = [
        prompt_ids(
            tokenizer, p, max_prompt_length=settings.max_prompt_length, chat_template=settings.chat_template
        )
        for p in prompts
    ]
    return generate_from_ids(model, tokenizer, rows, settings, seed=seed)


def _read_existing(path: Path) -> list[dict[str, Any]]:
    """Rows already in an output file. Rows are written whole, newline last, so text after the
    last newline is a half-written row of an interrupted append: it is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with path.open("r+b") as handle:
            handle.truncate(cut)
    records = []
    for number, line in enumerate(data[:cut].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise DpolabError(f"{where(path, number)}: not an answer row; remove the file or use --overwrite")
        records.append(record)
    return records


def _check_resumable(
    path: Path, existing: list[dict[str, Any]], prompts: list[PromptRow], settings
) -> set[int]:
    done = set()
    for number, record in enumerate(existing, start=1):
        index = record.get("index")
        if not isinstance(index, int) or not 0 <= index < len(prompts):
            raise DpolabError(
                f"{where(path, number, 'index')}: {index!r} is not a prompt of this prompt file; it was written for "
                f"other prompts (use another --output, or --overwrite)"
            )
        if prompt_key(record.get("prompt", "")) != prompt_key(prompts[index].prompt):
            raise DpolabError(
                f"{where(path, number, 'prompt')}: differs from prompt {index} of the prompt file; the output was "
                f"written for other prompts (use another --output, or --overwrite)"
            )
        recorded = record.get("generation")
        if isinstance(recorded, dict) and "chat_template" not in recorded:
            recorded = {**recorded, "chat_template": "auto"}  # written before the option existed
        if recorded != settings.recorded():
            raise DpolabError(
                f"{where(path, number, 'generation')}: was sampled with other settings ({record.get('generation')}); "
                f"resume with the same settings, or use another --output, or --overwrite"
            )
        done.add(index)
    return done


def complete_batches(done: set[int], num_prompts: int, batch_size: int) -> set[int]:
    """The indices in `done` whose whole batch (`batch_size` consecutive prompts of the
    `num_prompts`, the last one shorter) is done. A batch is sampled together (left padding, one
    seed), so a partly written one must be sampled again whole to give what one run would give."""
    out: set[int] = set()
    for start in range(0, num_prompts, batch_size):
        batch = range(start, min(start + batch_size, num_prompts))
        if all(i in done for i in batch):
            out.update(batch)
    return out


def generate_answers(
    model,
    tokenizer,
    prompts: list[PromptRow],
    output: str | os.PathLike,
    *,
    settings: GenerationSettings = GenerationSettings(),
    model_name: str | None = None,
    overwrite: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> GenerationReport:
    """Answer every prompt, appending each batch to `output` (JSONL) and skipping prompts that an
    earlier, interrupted call already answered.

    Output rows: `{"index", "row", "prompt", "completion", "model", "generation", ...the prompt row's
    other fields}`, in prompt order.
    """
    settings.check()
    check_chat_template(tokenizer, settings.chat_template)
    path = Path(output)
    if overwrite and path.exists():
        path.unlink()
    existing = _read_existing(path)
    done = _check_resumable(path, existing, prompts, settings)
    whole = complete_batches(done, len(prompts), settings.batch_size)
    if whole != done:  # an interrupted batch, or one that was the last before more prompts came
        existing = [r for r in existing if r["index"] in whole]
        write_jsonl_atomic(path, existing)
        done = whole
    n, generated = settings.batch_size, 0
    for start in range(0, len(prompts), n):
        todo = [p for p in prompts[start : start + n] if p.index not in done]
        if not todo:
            continue
        completions = generate_batch(
            model, tokenizer, [p.prompt for p in todo], settings, seed=settings.seed + start
        )
        records = [
            {
                **p.extra,
                "index": p.index,
                "row": p.row,
                "prompt": p.prompt,
                "completion": completion,
                "model": model_name,
                "generation": settings.recorded(),
            }
            for p, completion in zip(todo, completions)
        ]
        append_text(  # the batch whole or not at all, on the disk before the next one starts
            path,
            "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
            sync=True,
            what="the next batch of answers",
            then="the answers before it are kept: free some space and run the same command again to continue",
        )
        existing.extend(records)
        generated += len(todo)
        if on_batch is not None:
            on_batch(len(done) + generated, len(prompts))
    indices = [r["index"] for r in existing]
    if indices != sorted(indices):
        write_jsonl_atomic(path, sorted(existing, key=lambda r: r["index"]))
    return GenerationReport(str(path), generated, len(done))
