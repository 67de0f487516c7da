"""Discovering a causal LM's parts: one probe forward with hooks on every module (see
`dpolab.modeling.anatomy` for what is found and how it is used)."""

from __future__ import annotations

import inspect
import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dpolab.errors import DpolabError
from dpolab.modeling.router import RouterSpec, find_router

PROBE_TOKENS = 6
MAX_FINAL_MODULES = 6  # up to this many, every ordered subset is tried (2^6 calls at most)
# Config attributes that may transform the head's output: a softcap (a name with "logit" and "cap",
# not the attention's: Gemma 2/3's final_logit_softcapping, RecurrentGemma's logits_soft_cap) and
# a scale (a name with "logit" and "scale"/"scaling"/"mult", or one of these), each tried both ways
# (×v and ÷v): the probe keeps the one that reproduces the model's logits.
SCALE_NAMES = ("output_multiplier", "lm_head_multiplier")


def transform_attributes(config) -> tuple[list[str], list[str]]:
    """(softcap attributes, scale attributes) a config sets to a number other than 0 and 1."""
    values = text_config(config).to_dict()

    def number(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v not in (0, 1)

    caps, scales = [], []
    for key, value in values.items():
        if not number(value) or "attn" in key or "attention" in key:
            continue
        if "logit" in key and "cap" in key:
            caps.append(key)
        elif key in SCALE_NAMES or ("logit" in key and any(w in key for w in ("scale", "scaling", "mult"))):
            scales.append(key)
    return caps, scales


@dataclass(frozen=True)
class LogitTransform:
    """What the model does to its head's output `z`: `logits = c·tanh(s·z / c)` with a softcap c,
    else `s·z` (Gemma 2/3: c = final_logit_softcapping; Cohere: s = logit_scale; Granite:
    s = 1 / logits_scaling)."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The naive transform of full logits (what the chunked head computes row by row)."""
        out = logits * self.scale if self.scale != 1.0 else logits
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def describe(self) -> str:
        parts = [f"×{self.scale:g}"] if self.scale != 1.0 else []
        if self.softcap is not None:
            parts.append(f"softcap {self.softcap:g}")
        return ", ".join(parts) or "none"


@contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode (no dropout) inside the block; every submodule gets back the mode it
    had (a module the caller kept in eval mode stays so)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@dataclass(frozen=True)
class Found:
    """What discovery found, by module name (no module references: the cache holds no model)."""

    blocks: str
    final: tuple[str, ...]
    logits: LogitTransform
    lens_problem: str | None
    router: RouterSpec | None


def linear_head(causal_lm: nn.Module) -> nn.Linear:
    get = getattr(causal_lm, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Linear):
        what = "no output head" if head is None else f"an output head of type {type(head).__name__}"
        raise DpolabError(
            f"{type(causal_lm).__name__}: dpolab needs a linear output head (get_output_embeddings()) "
            f"to project completion positions through; this model has {what}"
        )
    return head


def _block_lists(causal_lm: nn.Module, head: nn.Module) -> list[str]:
    """Names of the ModuleLists that may hold the decoder blocks: those of the classes the model
    keeps whole when split across devices (`_no_split_modules`), else every one."""
    head_ids = {id(m) for m in head.modules()}
    lists = [
        (name, m)
        for name, m in causal_lm.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and id(m) not in head_ids
    ]
    whole = set(getattr(causal_lm, "_no_split_modules", None) or ())
    named = [n for n, m in lists if whole and all(type(b).__name__ in whole for b in m)]
    return named or [n for n, _ in lists]  # else any: the probe keeps the one that runs last


def probe_inputs(causal_lm: nn.Module) -> dict[str, torch.Tensor | bool]:
    """The probe's inputs: a row of `PROBE_TOKENS` token ids, its attention mask and no cache,
    as far as the forward takes them."""
    head = linear_head(causal_lm)
    # out_features, not the weight's shape: a ZeRO-3 partitioned weight is empty outside its gather
    vocab, device = head.out_features, head.weight.device
    input_ids = (torch.arange(PROBE_TOKENS, device=device)[None] + 3) % vocab
    kwargs: dict[str, torch.Tensor | bool] = {"input_ids": input_ids}
    if _accepts(causal_lm, "attention_mask"):
        kwargs["attention_mask"] = torch.ones_like(input_ids)
    if "use_cache" in inspect.signature(type(causal_lm).forward).parameters:
        kwargs["use_cache"] = False
    return kwargs


def _accepts(module: nn.Module, name: str) -> bool:
    params = inspect.signature(type(module).forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.double(), b.double()
    tol = _tolerance(dtype)
    return bool(((a - b).abs() <= tol * (1 + b.abs().amax())).all())


def discover(causal_lm: nn.Module, runner: nn.Module) -> Found:
    """Probe `causal_lm` through `runner` (itself, or the wrapper it came in: DDP, FSDP, a DeepSpeed
    engine, which gather sharded weights around the forward)."""
    name = type(causal_lm).__name__
    config = getattr(causal_lm, "config", None)
    if config is None:
        raise DpolabError(f"{name} is not a Hugging Face model: it has no config")
    head = linear_head(causal_lm)
    candidates = _block_lists(causal_lm, head)
    if not candidates:
        raise DpolabError(f"{name}: dpolab finds no ModuleList of decoder blocks in it")
    probe = _Probe(causal_lm, head, candidates)
    logits = probe.run(runner)
    if probe.failure is not None:
        raise DpolabError(f"{name}: {probe.failure}")
    dtype = head.weight.dtype
    transform = _find_transform(config, probe.head_out, logits, dtype)
    if transform is None:
        read = [a for names in transform_attributes(config) for a in names]
        diff = (probe.head_out.double() - logits.double()).abs().max().item()
        raise DpolabError(
            f"{name}: its logits are not its output head's output (max difference {diff:.3g}) nor a "
            f"transform of it that dpolab knows (a scale or softcap from "
            f"{', '.join(read) or 'config attributes it does not set'}); dpolab cannot score it exactly"
        )
    return Found(probe.blocks, probe.final, transform, probe.lens_problem, find_router(causal_lm))


class _Probe:
    """One forward on a few tokens, every module's calls recorded as (start, end, module). When the
    head starts, the blocks and the final modules are settled from the calls so far, and the final
    modules are checked on the last block's output there, inside the forward (where a wrapper has
    gathered their weights)."""

    def __init__(self, causal_lm: nn.Module, head: nn.Module, candidates: list[str]):
        self.causal_lm, self.head, self.candidates = causal_lm, head, candidates
        self.counter = 0
        self.starts: dict[int, list[int]] = {}
        self.calls: list[tuple[int, int, nn.Module]] = []
        self.outputs: dict[int, torch.Tensor] = {}  # each module's last tensor output
        self.head_out: torch.Tensor | None = None
        self.blocks, self.final, self.lens_problem = "", (), None
        self.failure: str | None = None

    def _tick(self) -> int:
        self.counter += 1
        return self.counter

    def pre(self, module, args, kwargs):
        self.starts.setdefault(id(module), []).append(self._tick())
        if module is self.head and self.head_out is None and not self.blocks:
            head_in = args[0] if args else next(iter(kwargs.values()))
            try:
                self._settle(self.starts[id(module)][-1], head_in)
            except DpolabError as err:
                self.failure = str(err)

    def post(self, module, args, output):
        self.calls.append((self.starts[id(module)].pop(), self._tick(), module))
        if module is self.head:
            self.head_out = output if self.head_out is None else self.head_out
        elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
            self.outputs[id(module)] = output[0]
        elif isinstance(output, torch.Tensor):
            self.outputs[id(module)] = output

    def _settle(self, head_start: int, head_in: torch.Tensor) -> None:
        """The blocks (the candidate list whose blocks all ran, the last to finish), the final
        modules (the outermost calls between the last block and the head, in order), and whether
        they turn the last block's output into the head's input."""
        ran = []
        for list_name in self.candidates:
            ends = [
                [e for _, e, m in self.calls if m is block]
                for block in self.causal_lm.get_submodule(list_name)
            ]
            if all(ends):
                ran.append((max(max(e) for e in ends), list_name))
        if not ran:
            raise DpolabError(f"none of its block lists ({', '.join(self.candidates)}) runs before its head")
        blocks_end, self.blocks = max(ran)
        between = [(s, e, m) for s, e, m in self.calls if s > blocks_end]
        outer = [c for c in between if not any(o[0] < c[0] and c[1] < o[1] for o in between)]
        names = {id(m): n for n, m in self.causal_lm.named_modules()}
        self.final = tuple(names[id(m)] for _, _, m in sorted(outer, key=lambda c: c[0]))
        blocks = self.causal_lm.get_submodule(self.blocks)
        self.lens_problem = self._check_final(self.outputs.get(id(blocks[-1])), head_in)
        runs = max(sum(m is block for _, _, m in self.calls) for block in blocks)
        if runs > 1 and self.lens_problem is None:  # looped models: Dory, HRM
            self.lens_problem = f"its blocks run {runs} times in a forward: layer k is no single hidden state"

    def _check_final(self, h: torch.Tensor | None, head_in: torch.Tensor) -> str | None:
        """None when the final modules, or the fewest left out of them (a pooler that runs but
        feeds nothing to the head, as BigBird's), turn the last block's output `h` into the
        head's input; `self.final` is then those modules. Else why not."""
        if h is None:
            return "its last block's output is not a tensor"
        ran = self.final
        subsets = [
            subset
            for size in range(len(ran), -1, -1)
            for subset in itertools.combinations(ran, size)
            if len(ran) <= MAX_FINAL_MODULES or size == len(ran)
        ]
        failed = None
        for subset in subsets:
            x = h
            try:
                for name in subset:
                    x = self.causal_lm.get_submodule(name)(x)
                    x = x[0] if isinstance(x, tuple) else x
            except Exception as err:  # a final module that needs more than the hidden state
                failed = failed or type(err).__name__
                continue
            if isinstance(x, torch.Tensor) and _close(x, head_in, head_in.dtype):
                self.final = subset
                return None
        if failed is not None and len(subsets) == 1:
            return f"its final modules ({', '.join(ran)}) cannot be called on a hidden state alone ({failed})"
        return f"between its last block and its head it does more than {', '.join(ran) or 'nothing'}"

    def run(self, runner: nn.Module) -> torch.Tensor:
        name = type(self.causal_lm).__name__
        handles = []
        for module in self.causal_lm.modules():
            handles.append(module.register_forward_pre_hook(self.pre, with_kwargs=True))
            handles.append(module.register_forward_hook(self.post))
        kwargs = probe_inputs(self.causal_lm)
        input_ids = kwargs.pop("input_ids")
        vocab = self.head.out_features  # not the weight's shape: empty under ZeRO-3 outside a gather
        try:
            with torch.no_grad(), eval_mode(runner):
                output = runner(input_ids=input_ids, **kwargs)
        except Exception as err:  # any failure of an arbitrary model's forward is reported as such
            text = str(err).strip().splitlines()
            raise DpolabError(
                f"{name}: a forward pass on input_ids alone fails ({text[0] if text else type(err).__name__})"
            ) from None
        finally:
            for h in handles:
                h.remove()
        if self.head_out is None:
            raise DpolabError(f"{name}: its forward does not call its output head (get_output_embeddings())")
        logits = _logits(output)
        # causal: a later token changes nothing before it (BERT without is_decoder is not)
        changed = input_ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % vocab
        with torch.no_grad(), eval_mode(runner):
            again = _logits(runner(input_ids=changed, **kwargs))
        if not _close(again[:, :-1], logits[:, :-1], self.head.weight.dtype):
            raise DpolabError(
                f"{name}: its logits at a position change with a later token: it is not a causal LM "
                f"(for a decoder that can be one, set is_decoder=True in its config)"
            )
        return logits


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


def text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _candidates(config) -> list[LogitTransform]:
    """The transforms the config suggests, the conventional reading of each attribute first."""
    text = text_config(config)
    cap_names, scale_names = transform_attributes(config)
    caps = [float(getattr(text, k)) for k in cap_names if getattr(text, k) > 0]
    scales: list[float] = []
    for attr in scale_names:
        v = float(getattr(text, attr))
        # Granite divides by logits_scaling, the others multiply; both are tried
        scales += [1 / v, v] if "scaling" in attr else [v, 1 / v]
    return [LogitTransform(s, c) for s in [*scales, 1.0] for c in [*caps, None]]


def _find_transform(config, head_out, logits, dtype) -> LogitTransform | None:
    """The first candidate that turns the head's output into the model's logits."""
    z = head_out.double()
    for t in _candidates(config):
        if _close(t(z), logits, dtype):
            return t
    return None


def own_logprobs(causal_lm: nn.Module, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """`(len(completion),)` log-probs of the completion's tokens from the causal LM's own forward
    on `prompt + completion` alone, its logits taken at the completion positions only (where the
    model takes `logits_to_keep`)."""
    device = linear_head(causal_lm).weight.device
    ids = torch.tensor([prompt + completion], device=device)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[0, len(prompt) - 1 : len(prompt) + len(completion) - 1] = True
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids), "use_cache": False}
    if "logits_to_keep" in inspect.signature(type(causal_lm).forward).parameters:
        kwargs["logits_to_keep"] = keep
    logits = causal_lm(input_ids=ids, **kwargs).logits
    logits = logits.reshape(-1, logits.shape[-1])
    if logits.shape[0] != len(completion):  # the model ignored logits_to_keep, or took no such argument
        logits = logits[keep.reshape(-1)]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, torch.tensor(completion, device=device)[:, None]).squeeze(1)
