"""Loading models and tokenizers for evaluation, with clear messages instead of tracebacks.

A path may hold a full model or a peft adapter (adapter_config.json); an adapter is loaded onto
its base model and merged, since evaluation never trains it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dpolab.errors import DpolabError
from dpolab.paths import missing_local_path

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is present, else `cpu`; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise DpolabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # bf16 on GPUs that have it, fp32 elsewhere (CPU half precision is slow and imprecise)
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def _check_exists(path: str | os.PathLike) -> None:
    text = str(path)
    missing = missing_local_path(text)
    if missing:
        raise DpolabError(f"{text}: {missing.replace('no such folder', 'no such model directory', 1)}")


def _load_error(what: str, path: str | os.PathLike, err: Exception) -> DpolabError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return DpolabError(f"{path}: cannot load the {what} ({type(err).__name__}: {first})")


def load_tokenizer(path: str | os.PathLike, *, fallback: str | os.PathLike | None = None):
    """The tokenizer saved at `path` (or at `fallback`, e.g. an adapter's base model), with a pad
    token (EOS when it has none)."""
    from transformers import AutoTokenizer

    errors = []
    for source in [path, fallback] if fallback is not None else [path]:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            break
        except Exception as err:
            errors.append(_load_error("tokenizer", source, err))
    else:
        raise errors[0]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | os.PathLike, *, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory or hub id, in eval mode on `device`.

    An adapter directory (peft) is loaded onto its base model and merged.
    """
    from transformers import AutoModelForCausalLM

    _check_exists(path)
    device = resolve_device(device)
    torch_dtype = _torch_dtype(dtype, device)
    adapter = Path(str(path)).expanduser() / "adapter_config.json"
    base = None
    try:
        if adapter.exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype).merge_and_unload()
            base = model.config.name_or_path or None
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except Exception as err:
        raise _load_error("model", path, err) from None
    tokenizer = load_tokenizer(path, fallback=base)
    return model.to(device).eval(), tokenizer


def load_sequence_classifier(
    path: str | os.PathLike, *, dtype: str = "auto", device: str = "auto"
) -> tuple[Any, Any]:
    """(reward model, tokenizer): an `AutoModelForSequenceClassification` with one output."""
    from transformers import AutoModelForSequenceClassification

    _check_exists(path)
    device = resolve_device(device)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=_torch_dtype(dtype, device), output_loading_info=True
        )
    except Exception as err:
        raise _load_error("reward model", path, err) from None
    if info["missing_keys"]:  # a causal LM (or any model without a trained head) would score at random
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise DpolabError(
            f"{path} is not a reward model: its checkpoint has no sequence-classification head "
            f"({missing} would be random); give a model trained as a reward model "
            f"(AutoModelForSequenceClassification), or judge with hf:{path} or openai:MODEL"
        )
    if model.config.num_labels != 1:
        raise DpolabError(
            f"{path}: a reward model has one output, this one has {model.config.num_labels} labels"
        )
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def model_device(model) -> Any:
    """The device of the model's first parameter."""
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")
