"""The demo on a pretrained model (`dpolab demo --model PATH`): the model itself, and the task's
pairs as conversations that its chat template renders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def natural(text: str) -> str:
    """A task text as English writes it, for a pretrained model's chat (`Tom has 14 pens .` ->
    `Tom has 14 pens.`); the solutions' lines have no such spaces and stay as they are."""
    return re.sub(r" ([.,?])", r"\1", text).strip()


def chat_pair(problem, kind: str) -> dict[str, Any]:
    """A problem's pair as a conversation (the model's chat template renders it): the problem as
    the user's message, a solution as the assistant's."""
    rejected = problem.rejected_low if kind == "low" else problem.rejected_high
    return {
        "prompt": [{"role": "user", "content": natural(problem.prompt)}],
        "chosen": [{"role": "assistant", "content": problem.chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def write_chat_files(folder: Path, splits) -> dict[str, Path]:
    """`{split}.{low,high}.chat.jsonl` (conversational pairs) and `test.chat.jsonl` (the test
    problems as a user message, with their answers) beside the text files."""
    from dpolab.data.io import write_jsonl_atomic

    paths: dict[str, Path] = {}
    for split, problems in splits.items():
        for kind in ("low", "high"):
            paths[f"{split}.{kind}.chat"] = folder / f"{split}.{kind}.chat.jsonl"
            write_jsonl_atomic(paths[f"{split}.{kind}.chat"], [chat_pair(p, kind) for p in problems])
    prompts = [{"prompt": chat_pair(p, "low")["prompt"], "answer": p.answer} for p in splits["test"]]
    paths["test.chat"] = folder / "test.chat.jsonl"
    write_jsonl_atomic(paths["test.chat"], prompts)
    return paths


def pretrained_model(out: Path, model: str) -> dict[str, Any]:
    """A pretrained model for the demo: a folder as it is; a GGUF file dequantised once into
    OUT/base-model (Hugging Face format), which every stage then reads."""
    from dpolab.demo.model import num_parameters
    from dpolab.modeling.anatomy import num_layers_of
    from dpolab.modeling.loading import gguf_path, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model)
    if not getattr(tokenizer, "chat_template", None):  # said before the weights load
        from dpolab.errors import DpolabError

        raise DpolabError(
            f"--model {model}: its tokenizer has no chat template; the demo on a pretrained model "
            f"renders the problems as conversations (give an instruct model)"
        )
    loaded = load_causal_lm(model)
    path = str(model)
    if gguf_path(model) is not None:
        path = str(out / "base-model")
        loaded.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return {
        "path": path,
        "source": str(model),
        "parameters": num_parameters(loaded),
        "vocab": len(tokenizer),
        "num_layers": num_layers_of(loaded.config),
    }
