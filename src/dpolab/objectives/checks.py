"""The loss section's rules, checked at start-up from the specs of the chosen methods: each ends
with one `DpolabError` line that names the key and says what to write instead."""

from __future__ import annotations

from dpolab.config.schema import LossSection
from dpolab.errors import DpolabError
from dpolab.objectives.registry import (
    KEY_RULES,
    LOSS_KEYS,
    LOSSES,
    LossSpec,
    get_loss_specs,
    method_list,
)


def _shown(loss: LossSection) -> str:
    names = method_list(loss.method)
    return names[0] if len(names) == 1 else f"[{', '.join(names)}]"


def _check_keys(loss: LossSection, specs: tuple[LossSpec, ...], explicit: set[str]) -> None:
    """No key that none of the methods uses; each used key in its range."""
    used = {key for spec in specs for key in spec.keys}
    for key in LOSS_KEYS:
        if f"loss.{key}" in explicit and key not in used:
            users = [s.name for s in dict.fromkeys(LOSSES.values()) if key in s.keys]
            raise DpolabError(
                f"loss.{key} is only used by loss.method {', '.join(users)} (this config says {_shown(loss)}); "
                f"remove it, or set loss.method={users[0]}"
            )
    for key in LOSS_KEYS:
        rule = KEY_RULES.get(key)
        if key in used and rule is not None and not rule[0](getattr(loss, key)):
            raise DpolabError(f"loss.{key}: {getattr(loss, key)} {rule[1]}")


def _check_combinations(loss: LossSection, specs: tuple[LossSpec, ...], explicit: set[str]) -> None:
    names = [spec.name for spec in specs]
    if loss.weights is not None:
        if len(loss.weights) != len(specs):
            raise DpolabError(
                f"loss.weights: {len(loss.weights)} weights for {len(specs)} methods ({_shown(loss)}); "
                f"give one per method, in the same order"
            )
        if any(not w >= 0 for w in loss.weights) or not any(w > 0 for w in loss.weights):
            raise DpolabError(f"loss.weights: {loss.weights} must be ≥ 0, and not all 0")
    if "exo_pair" in names and loss.label_smoothing == 0:
        raise DpolabError("loss.method exo_pair needs loss.label_smoothing > 0 (the EXO paper uses 1e-3)")
    if loss.f_divergence != "reverse_kl":
        # f-DPO's reparameterisation leaves β·log Z(x), which cancels only in Δ_w − Δ_l
        others = [s.name for s in specs if s.needs_reference and "f_divergence" not in s.keys]
        if others:
            users = [s.name for s in dict.fromkeys(LOSSES.values()) if "f_divergence" in s.keys]
            raise DpolabError(
                f"loss.f_divergence {loss.f_divergence} is defined only for the losses of the margin "
                f"Δ_w − Δ_l ({', '.join(users)}), not {', '.join(others)}; remove it, or change loss.method"
            )
    if "loss.f_alpha" in explicit and loss.f_divergence != "alpha_divergence":
        raise DpolabError(
            f"loss.f_alpha only matters with loss.f_divergence=alpha_divergence (this config says "
            f"{loss.f_divergence}); remove it, or set loss.f_divergence=alpha_divergence"
        )
    if loss.ld_alpha is not None and not 0 <= loss.ld_alpha <= 1:
        raise DpolabError(
            f"loss.ld_alpha: {loss.ld_alpha} must be in [0, 1] (1: no desensitisation, 0: the tokens past "
            f"the shared length dropped), or null"
        )
    if loss.use_weighting:
        sorting = [s.name for s in specs if s.sorts_batch]
        if sorting:
            raise DpolabError(
                f"loss.use_weighting with loss.method {', '.join(sorting)}: those losses sort the batch, so "
                f"their losses are not per pair and WPO's pair weights would be misaligned (TRL refuses it too)"
            )


def _check_reference(specs: tuple[LossSpec, ...], explicit: set[str]) -> None:
    if any(spec.needs_reference for spec in specs):
        return
    keys = sorted(k for k in explicit if k.startswith("reference.") or k == "model.ref_name_or_path")
    if keys:
        raise DpolabError(
            f"{', '.join(keys)}: loss.method {', '.join(s.name for s in specs)} uses no reference model "
            f"(none is loaded, computed or cached); remove {'them' if len(keys) > 1 else 'it'}"
        )


def _check_intermediate(loss: LossSection, explicit: set[str]) -> None:
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


def check_loss_section(loss: LossSection, explicit: set[str]) -> tuple[LossSpec, ...]:
    """The loss section's rules: known methods (each once), no key the methods do not use, each
    key in its range, the weights, the combinations TRL refuses, no reference settings for a
    reference-free loss, the intermediate layers' settings. Returns the methods' specs."""
    specs = get_loss_specs(loss.method)
    _check_keys(loss, specs, explicit)
    _check_combinations(loss, specs, explicit)
    _check_reference(specs, explicit)
    _check_intermediate(loss, explicit)
    return specs
