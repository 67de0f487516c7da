"""Loading models and tokenizers: the one loader that training, evaluation, analysis and
`dpolab data stats` use.

Every error a user can cause (a missing folder, an unreachable hub id, a checkpoint that does not
load) becomes one `DpolabError` line naming the path. A model path may be a LoRA adapter folder
(peft's `adapter_config.json`, as `dpolab sft` with `model.lora` saves): its base model
(`base_model_name_or_path`) is loaded and the adapter merged into it; that is the model, for its
config (layer count) as for its weights.

A model path may also be a GGUF file (`*.gguf`, llama.cpp's format, quantised or not): transformers
dequantises it (`from_pretrained(folder, gguf_file=NAME)`, which needs the `gguf` package,
`pip install 'dpolab[gguf]'`) and the model is rebuilt from its config without GGUF's quantisation
marker, so that it trains and saves as any Hugging Face model (outputs are in Hugging Face format).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpolab.errors import DpolabError
from dpolab.paths import missing_local_path

if TYPE_CHECKING:  # torch is imported where a model is loaded, so the command line starts fast
    import torch
    from torch import nn

log = logging.getLogger("dpolab")

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
ADAPTER_CONFIG = "adapter_config.json"
GGUF_SUFFIX = ".gguf"
GGUF_INSTALL = "pip install 'dpolab[gguf]'"
# what a loader raises for a folder or hub id that holds no loadable model (a bug raises others)
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_device(device: str = "auto") -> str:
    """`auto` -> `cuda` when a GPU is present, else `cpu`; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str = "cpu") -> torch.dtype:
    """A dtype name as a torch dtype; `auto` is bf16 on a GPU that has it, fp32 elsewhere (half
    precision on a CPU is slow and imprecise)."""
    import torch

    if dtype not in DTYPE_CHOICES:
        raise DpolabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def gguf_path(name_or_path: str | os.PathLike) -> Path | None:
    """The file a model path names when it is a GGUF file (it ends in `.gguf`), else None."""
    name = str(name_or_path)
    return Path(os.path.expanduser(name)) if name.lower().endswith(GGUF_SUFFIX) else None


def _require_gguf(name: str) -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise DpolabError(
            f"{name!r} is a GGUF file; reading it needs the gguf package: {GGUF_INSTALL}"
        ) from None


def _load(what: str, name: str, loader, **kwargs):
    """`loader(name, **kwargs)`, with a user's mistake as one line naming `what` and `name`; a GGUF
    file is read as `loader(its folder, gguf_file=its name, **kwargs)`."""
    missing = missing_local_path(name)
    if missing:
        raise DpolabError(f"{what} {name!r}: {missing}")
    gguf = gguf_path(name)
    if gguf is not None:
        if not gguf.is_file():
            why = "not a file (a GGUF model is one .gguf file)" if gguf.exists() else "no such file"
            raise DpolabError(f"{what} {name!r}: {why}")
        _require_gguf(name)
        target, kwargs = str(gguf.parent), {**kwargs, "gguf_file": gguf.name}
    else:
        target = os.path.expanduser(name)
    try:
        return loader(target, **kwargs)
    except _LOAD_ERRORS as err:
        raise DpolabError(
            f"{what} {name!r} cannot be loaded: {first_line(err)} (give a local folder saved with "
            f"save_pretrained, a .gguf file, or a hub id reachable from this machine)"
        ) from None


def adapter_base(name_or_path: str) -> str | None:
    """The base model of a local LoRA adapter folder (`base_model_name_or_path` of its
    adapter_config.json); None when `name_or_path` is not one."""
    path = Path(os.path.expanduser(str(name_or_path))) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as err:
        raise DpolabError(f"{path}: not a readable adapter config ({first_line(err)})") from None
    if not isinstance(base, str) or not base:
        raise DpolabError(
            f"{path}: no base_model_name_or_path; write the base model's folder or hub id there"
        )
    return base


def _in_base(adapter: str, base: str, load):
    """`load(base)`, with an error that says the path came from the adapter's config."""
    try:
        return load(base)
    except DpolabError as err:
        raise DpolabError(f"adapter {adapter!r}: its base model (adapter_config.json): {err}") from None


def load_model_config(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's config (no weights); for an adapter folder, its base model's (a LoRA adapter
    changes no shape)."""
    from transformers import AutoConfig

    base = adapter_base(name_or_path)
    if base is not None:
        return _in_base(
            name_or_path, base, lambda b: load_model_config(b, trust_remote_code=trust_remote_code)
        )
    config = _load("model", name_or_path, AutoConfig.from_pretrained, trust_remote_code=trust_remote_code)
    if gguf_path(name_or_path) is not None:
        _drop_gguf_marker(config)
    return config


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The tokenizer, with the EOS token standing in for a missing pad token (as TRL does); an
    adapter folder saved without a tokenizer gives its base model's."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    base = adapter_base(name)
    if base is not None and not (Path(os.path.expanduser(name)) / "tokenizer_config.json").is_file():
        name = base
    tokenizer = _load("tokenizer", name, AutoTokenizer.from_pretrained, trust_remote_code=trust_remote_code)
    return with_pad_token(tokenizer, name)


def with_pad_token(tokenizer, name: str):
    """The tokenizer, its EOS token standing in for a missing pad token (as TRL does)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DpolabError(
                f"tokenizer {name!r} has neither a pad nor an EOS token; dpolab needs one to pad"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """The causal LM at `name_or_path` (a folder or hub id); an adapter folder's base model with the
    adapter merged in, trainable as loaded (peft freezes the base for inference)."""
    from transformers import AutoModelForCausalLM

    name_or_path = str(name_or_path)
    base = adapter_base(name_or_path)
    if base is not None:
        from peft import PeftModel

        model = _in_base(
            name_or_path,
            base,
            lambda b: load_causal_lm(
                b, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
            ),
        )
        merged = _load(
            "adapter", name_or_path, lambda path: PeftModel.from_pretrained(model, path).merge_and_unload()
        )
        log.info("model: %s is a LoRA adapter of %s; merged into it", name_or_path, base)
        return merged.requires_grad_(True)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype) if isinstance(dtype, str) else dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = _load(
        "model",
        name_or_path,
        AutoModelForCausalLM.from_pretrained,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    if gguf_path(name_or_path) is not None:
        model = _without_gguf_marker(model, name_or_path, **kwargs)
    return model


# GGUF files announced in this process's log (a run loads its model more than once: policy, reference)
_ANNOUNCED: set[str] = set()


def _drop_gguf_marker(config) -> None:
    """Remove the quantisation marker transformers leaves on a dequantised GGUF model's config
    (`quantization_config`, quant_method gguf): with it, the model neither trains nor saves as a
    Hugging Face model."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def _without_gguf_marker(model: nn.Module, name: str, **kwargs) -> nn.Module:
    """The dequantised model rebuilt from its config without the GGUF marker, its weights loaded
    into it (all of them: a missing or extra tensor is an error); said once per file in the log."""
    from transformers import AutoModelForCausalLM

    config = model.config
    _drop_gguf_marker(config)
    rebuilt = AutoModelForCausalLM.from_config(config, **kwargs)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.name_or_path = str(name)  # what a LoRA adapter trained on it names as its base
    rebuilt.config.name_or_path = str(name)
    rebuilt.generation_config = model.generation_config
    key = str(Path(os.path.expanduser(name)).resolve())
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        log.info(
            "model: %s is a GGUF file, dequantised to %s by transformers; what dpolab saves from it "
            "is in Hugging Face format",
            name,
            str(rebuilt.dtype).removeprefix("torch."),
        )
    return rebuilt.requires_grad_(True)


def load_for_inference(path: str, *, dtype: str = "auto", device: str = "auto") -> tuple[nn.Module, Any]:
    """(model in eval mode on `device`, tokenizer): what generation, judging and analysis use."""
    device = resolve_device(device)
    model = load_causal_lm(path, dtype=resolve_dtype(dtype, device))
    return model.to(device).eval(), load_tokenizer(path)


def load_sequence_classifier(
    path: str, *, dtype: str = "auto", device: str = "auto"
) -> tuple[nn.Module, Any]:
    """(reward model in eval mode, tokenizer): an `AutoModelForSequenceClassification` with one output."""
    from transformers import AutoModelForSequenceClassification

    device = resolve_device(device)
    model, info = _load(
        "reward model",
        str(path),
        AutoModelForSequenceClassification.from_pretrained,
        dtype=resolve_dtype(dtype, device),
        output_loading_info=True,
    )
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
    tokenizer = load_tokenizer(str(path))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
