"""The loss registry: each method's `LossSpec` says what its function takes and what it needs.

Config validation, the objective and the reference setup read the spec, and nothing else lists
methods: a new loss is one pure function (`dpolab.objectives.losses`) and one `register_loss`
call. A spec names

- `keys`: the `loss.` config keys the function takes, passed as keywords of the same name;
- `needs_reference`: whether it compares with a reference (no reference is loaded otherwise);
- `length_averaged`: whether it takes per-token mean log-probs instead of sums;
- `needs_lengths`: whether it takes `chosen_lengths` / `rejected_lengths` (token counts);
- `metrics`: the names of the further per-pair metrics its `LossOutput` carries.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dpolab.config.schema import LossSection
from dpolab.errors import DpolabError
from dpolab.objectives import losses
from dpolab.objectives.losses import LossOutput


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., LossOutput]
    keys: tuple[str, ...] = ("beta",)
    needs_reference: bool = True
    length_averaged: bool = False
    needs_lengths: bool = False
    metrics: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    summary: str = ""  # the formula and its paper, for the docs and messages

    def params(self, loss: LossSection) -> dict[str, Any]:
        """The keyword arguments of `fn` from the config's loss section."""
        return {key: getattr(loss, key) for key in self.keys}

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
    ) -> LossOutput:
        """`fn` on summed log-probs `(batch,)` and token counts, given the way the spec says."""
        logps = [policy_chosen, policy_rejected]
        if self.needs_reference:
            logps += [reference_chosen, reference_rejected]
        if self.length_averaged:
            counts = [chosen_lengths, rejected_lengths] * (len(logps) // 2)
            logps = [lp / n.clamp(min=1).to(lp.dtype) for lp, n in zip(logps, counts)]
        kwargs = dict(params)
        if self.needs_lengths:
            kwargs.update(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        return self.fn(*logps, **kwargs)


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """Add a loss under its name and aliases (an existing name is refused)."""
    for name in (spec.name, *spec.aliases):
        if name in LOSSES:
            raise ValueError(f"a loss named {name!r} is registered already")
    unknown = [key for key in spec.keys if key not in LOSS_KEYS]
    if unknown:
        raise ValueError(f"{spec.name}: {unknown} are not keys of the loss section ({', '.join(LOSS_KEYS)})")
    for name in (spec.name, *spec.aliases):
        LOSSES[name] = spec
    return spec


def method_names() -> list[str]:
    return list(dict.fromkeys(spec.name for spec in LOSSES.values()))


def get_loss_spec(method: str) -> LossSpec:
    """The spec registered under `method` (a name or an alias)."""
    try:
        return LOSSES[method]
    except KeyError:
        close = difflib.get_close_matches(str(method), list(LOSSES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DpolabError(
            f"loss.method: {method!r} is not one of {', '.join(method_names())}{hint}"
        ) from None


# The hyper-parameters of the loss section (the rest: which method, and the intermediate layers).
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossSection) if f.name not in ("method", "intermediate"))

# Range rules of the hyper-parameters, checked when the method uses the key.
KEY_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta": (lambda v: v > 0, "must be positive (the papers use 0.1 to 0.5)"),
    "dpop_lambda": (lambda v: v >= 0, "must be ≥ 0"),
}


def check_loss_section(loss: LossSection, explicit: set[str]) -> LossSpec:
    """The loss section's rules: a known method, no key the method does not use, each key in its
    range, the intermediate layers' settings. Returns the method's spec."""
    spec = get_loss_spec(loss.method)
    for key in LOSS_KEYS:
        if f"loss.{key}" in explicit and key not in spec.keys:
            users = [s.name for s in dict.fromkeys(LOSSES.values()) if key in s.keys]
            raise DpolabError(
                f"loss.{key} is only used by loss.method {', '.join(users)} (this config says {loss.method}); "
                f"remove it, or set loss.method={users[0]}"
            )
    for key in spec.keys:
        rule = KEY_RULES.get(key)
        if rule is not None and not rule[0](getattr(loss, key)):
            raise DpolabError(f"loss.{key}: {getattr(loss, key)} {rule[1]}")
    inter = loss.intermediate
    if not inter.layers:
        for key in ("gamma", "final_norm"):
            if f"loss.intermediate.{key}" in explicit:
                raise DpolabError(
                    f"loss.intermediate.{key} only matters with loss.intermediate.layers; remove it, or list "
                    f"the layers, e.g. loss.intermediate.layers=[8,16]"
                )
    if not 0.0 <= inter.gamma <= 1.0:
        raise DpolabError(f"loss.intermediate.gamma: {inter.gamma} must be in [0, 1] (the paper uses 0.9)")
    if len(set(inter.layers)) != len(inter.layers):
        raise DpolabError(f"loss.intermediate.layers: {inter.layers} lists a layer twice")
    return spec


register_loss(
    LossSpec(
        "dpo",
        losses.dpo_loss,
        summary="−log σ(β·(Δ_w − Δ_l)); Rafailov et al. 2023, Eq. 7",
    )
)
register_loss(
    LossSpec(
        "ipo",
        losses.ipo_loss,
        needs_lengths=True,
        summary="(Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))²; Azar et al. 2023, Eq. 17",
    )
)
register_loss(
    LossSpec(
        "dpop",
        losses.dpop_loss,
        keys=("beta", "dpop_lambda"),
        metrics=("dpop/penalty",),
        summary="−log σ(β·(Δ_w − Δ_l − λ·max(0, −Δ_w))); Pal et al. 2024 (Smaug), Eq. 3",
    )
)
