"""The loss registry: each method's `LossSpec` says what its function takes and what it needs.

Config validation (`dpolab.objectives.checks`), the objective and the reference setup read the
spec, and nothing else lists methods: a new loss is one pure function
(`dpolab.objectives.losses`) and one `register_loss` call (`dpolab.objectives.methods` holds
dpolab's own). A spec names

- `keys`: the `loss.` config keys the function takes, passed as keywords of the same name;
- `needs_reference`: whether it compares with a reference (none is loaded when no method does);
- `length_averaged`: whether it takes per-token mean log-probs instead of sums;
- `needs_lengths`: whether it takes `chosen_lengths` / `rejected_lengths` (token counts);
- `nll`: whether it takes `chosen_nll`, the batch's mean NLL per token of the chosen completions
  ("completion"), or of the chosen sequences, prompt included ("sequence": ORPO);
- `sorts_batch`: whether its per-pair losses are those of the batch sorted (no per-pair weights);
- `metrics`: the names of the further per-pair metrics its `LossOutput` carries.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dpolab.config.schema import LossSection
from dpolab.errors import DpolabError
from dpolab.objectives.losses import F_DIVERGENCES, LossOutput


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., LossOutput]
    keys: tuple[str, ...] = ("beta",)
    needs_reference: bool = True
    length_averaged: bool = False
    needs_lengths: bool = False
    nll: str | None = None  # None | "completion" | "sequence"
    sorts_batch: bool = False
    metrics: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    summary: str = ""  # the formula and its paper, for the docs and messages

    def params(self, loss: LossSection) -> dict[str, Any]:
        """The keyword arguments of `fn` from the config's loss section."""
        return {key: getattr(loss, key) for key in self.keys}

    def given(self, logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Summed log-probs `(batch,)` as `fn` takes them: per-token means if `length_averaged`."""
        return logps / lengths.clamp(min=1).to(logps.dtype) if self.length_averaged else logps

    def compute(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        reference_chosen: torch.Tensor | None,
        reference_rejected: torch.Tensor | None,
        *,
        chosen_lengths: torch.Tensor,
        rejected_lengths: torch.Tensor,
        params: Mapping[str, Any],
        chosen_nll: torch.Tensor | None = None,
    ) -> LossOutput:
        """`fn` on summed log-probs `(batch,)` and token counts, given the way the spec says."""
        logps = [policy_chosen, policy_rejected]
        if self.needs_reference:
            logps += [reference_chosen, reference_rejected]
        counts = [chosen_lengths, rejected_lengths] * (len(logps) // 2)
        logps = [self.given(lp, n) for lp, n in zip(logps, counts)]
        kwargs = dict(params)
        if self.needs_lengths:
            kwargs.update(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        if self.nll is not None:
            if chosen_nll is None:
                raise ValueError(f"{self.name} takes the chosen completions' NLL (chosen_nll)")
            kwargs["chosen_nll"] = chosen_nll
        return self.fn(*logps, **kwargs)


LOSSES: dict[str, LossSpec] = {}

# Keys of the loss section that are not a method's hyper-parameters: which methods, their
# weights, the intermediate layers, and the modifiers the objective applies to every method
# (LD-DPO's token weights in the sums, WPO's pair weights).
NOT_METHOD_KEYS = ("method", "weights", "intermediate", "ld_alpha", "use_weighting")
# The hyper-parameters of the loss section, each taken by the methods whose spec names it.
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossSection) if f.name not in NOT_METHOD_KEYS)

# Range rules of the hyper-parameters, checked when a chosen method uses the key.
KEY_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta": (lambda v: v > 0, "must be positive (the papers use 0.1 to 0.5; SimPO 2 to 2.5)"),
    "dpop_lambda": (lambda v: v >= 0, "must be ≥ 0"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5) (the probability of a flipped label)"),
    "discopop_tau": (lambda v: v > 0, "must be positive (the DiscoPOP paper uses 0.05)"),
    "f_divergence": (lambda v: v in F_DIVERGENCES, f"must be one of {', '.join(F_DIVERGENCES)}"),
    "f_alpha": (lambda v: 0 < v <= 1, "must be in (0, 1] (1 is the reverse KL; TRL's default 0.5)"),
    "simpo_gamma": (lambda v: v >= 0, "must be ≥ 0 (the SimPO paper uses γ/β ≈ 0.5)"),
    "cpo_alpha": (lambda v: v >= 0, "must be ≥ 0 (TRL's default 1)"),
}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add a loss under its name and aliases (an existing name is refused)."""
    for name in (spec.name, *spec.aliases):
        if name in LOSSES:
            raise ValueError(f"a loss named {name!r} is registered already")
    unknown = [key for key in spec.keys if key not in LOSS_KEYS]
    if unknown:
        raise ValueError(f"{spec.name}: {unknown} are not keys of the loss section ({', '.join(LOSS_KEYS)})")
    if spec.nll not in (None, "completion", "sequence"):
        raise ValueError(f"{spec.name}: nll is None, 'completion' or 'sequence', not {spec.nll!r}")
    for name in (spec.name, *spec.aliases):
        LOSSES[name] = spec
    return spec


def method_names() -> list[str]:
    return list(dict.fromkeys(spec.name for spec in LOSSES.values()))


def get_loss_spec(method: str) -> LossSpec:
    """The spec registered under `method` (a name or an alias)."""
    try:
        return LOSSES[method]
    except (KeyError, TypeError):
        # a name the text begins (bco: bco_pair), else the closest spelling
        close = [name for name in LOSSES if name.startswith(str(method))] if method else []
        close = close or difflib.get_close_matches(str(method), list(LOSSES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DpolabError(
            f"loss.method: {method!r} is not one of {', '.join(method_names())}{hint}"
        ) from None


def method_list(method: str | Sequence[str]) -> list[str]:
    """`loss.method` as a list of names (a single name is a list of one)."""
    return [method] if isinstance(method, str) else list(method)


def get_loss_specs(method: str | Sequence[str]) -> tuple[LossSpec, ...]:
    """The specs of `loss.method`, a name or a list of names (each once, aliases included)."""
    names = method_list(method)
    if not names:
        raise DpolabError("loss.method: an empty list; name a method, e.g. loss.method=dpo")
    specs = tuple(get_loss_spec(name) for name in names)
    for i, spec in enumerate(specs):
        if spec in specs[:i]:
            raise DpolabError(
                f"loss.method: {names} lists {spec.name} twice (give it one weight in loss.weights)"
            )
    return specs


def method_weights(loss: LossSection) -> tuple[float, ...]:
    """The weight of each method of `loss.method` (1 each unless `loss.weights` says)."""
    return tuple(loss.weights) if loss.weights is not None else (1.0,) * len(method_list(loss.method))


def needs_reference(loss: LossSection) -> bool:
    """Whether any method of the loss section compares with a reference."""
    return any(spec.needs_reference for spec in get_loss_specs(loss.method))


from dpolab.objectives import methods as _methods  # noqa: E402, F401  (registers dpolab's losses)
