"""Turning another tool's training config into a dpolab config: the rules each key follows, and
what a conversion gives back (the sections, and a line for every key that could not be mapped).

Each tool lists its keys as `Rule`s (`dpolab.config.from_trl`, `dpolab.config.from_llamafactory`);
docs/coming-from-trl-llamafactory.md shows the same rules as tables, and a test holds the two equal.
A key of neither list that is a `transformers.TrainingArguments` field goes to `training` as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from dpolab.config.schema import LossSection

_UNSET = object()


@dataclass(frozen=True)
class Rule:
    """One key of the other tool: the dpolab key it becomes (None: none), and what differs.

    A key without a target whose value is `same_as` (the other tool's default, at which it
    behaves as dpolab does) needs no line; any other value is reported as not mapped, with `note`.
    """

    key: str
    target: str | None
    note: str = ""
    same_as: Any = _UNSET

    def table_row(self) -> str:
        """The rule as a row of the docs' table: | key | dpolab key | notes |."""
        note = self.note
        if self.target is None and self.same_as is not _UNSET:
            note += f" (at `{_show(self.same_as)}`, its default, nothing differs)"
        target = f"`{self.target}`" if self.target else "—"
        return f"| `{self.key}` | {target} | {note} |"


@dataclass
class Conversion:
    """The dpolab config of another tool's file, and what could not be carried over."""

    tool: str
    command: str = "train"  # `dpolab train` or `dpolab sft`
    values: dict[str, Any] = field(default_factory=dict)
    unmapped: list[tuple[str, Any, str]] = field(default_factory=list)  # (key, value, why)
    notes: list[str] = field(default_factory=list)  # differences a user should know about
    origin: dict[str, str] = field(default_factory=dict)  # dpolab key -> the other tool's key

    def set(self, dotted: str, value: Any, key: str | None = None) -> None:
        if key is not None:
            self.origin[dotted] = key
        node = self.values
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def drop(self, key: str, value: Any, why: str) -> None:
        self.unmapped.append((key, value, why))

    def text(self, source: str) -> str:
        """The config as YAML, headed by a comment line for each note and each key not mapped."""
        lines = [f"# dpolab config converted from {self.tool} ({source}); run: dpolab {self.command} FILE"]
        lines += [f"# note: {note}" for note in self.notes]
        lines += [f"# not mapped: {key}: {_show(value)} ({why})" for key, value, why in self.unmapped]
        body = yaml.safe_dump(ordered(self.values), sort_keys=False, allow_unicode=True)
        return "\n".join(lines) + "\n" + body


def ordered(values: dict[str, Any]) -> dict[str, Any]:
    """The sections in dpolab's order, each typed section's keys in its fields' order."""
    import typing

    from dpolab.config.schema import SECTIONS, RunConfig

    hints = typing.get_type_hints(RunConfig)

    def keys_of(section: str) -> list[str]:
        tp = hints.get(section)
        return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []

    out = {}
    for section in [*SECTIONS, *values]:
        if section in values and section not in out:
            value = values[section]
            if isinstance(value, dict):
                order = keys_of(section)
                value = {
                    k: value[k]
                    for k in sorted(value, key=lambda k: order.index(k) if k in order else len(order))
                }
            out[section] = value
    return out


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def training_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


# TrainingArguments fields of earlier transformers versions, which configs still carry (the
# installed transformers, 5.x, reads a warmup_steps below 1 as a fraction of the steps).
TRAINING_RENAMES = (
    Rule("warmup_ratio", "training.warmup_steps", "a fraction below 1, as transformers 5 reads it"),
    Rule("evaluation_strategy", "training.eval_strategy"),
)

# TrainingArguments fields dpolab sets itself: a converted config leaves them out.
DPOLAB_SETS = {"remove_unused_columns", "label_names"}


def apply_rules(values: dict[str, Any], rules: dict[str, Rule], out: Conversion, handled: set[str]) -> None:
    """Carry each key of `values` over by its rule (keys in `handled` were carried over by the
    tool's own code); a TrainingArguments field without a rule goes to `training` as it is."""
    fields = training_fields()
    for key, value in values.items():
        if key in handled:
            continue
        rule = rules.get(key)
        if rule is None:
            if key in DPOLAB_SETS:
                out.notes.append(f"{key}: dpolab sets it itself; left out")
            elif key in fields:
                if value is not None or key == "save_total_limit":
                    out.set(f"training.{key}", value, key)
            else:
                out.drop(key, value, f"not a {out.tool} key this converter knows")
        elif rule.target is None:
            if rule.same_as is _UNSET or value != rule.same_as:
                out.drop(key, value, rule.note)
        else:
            out.set(rule.target, value, key)


# Kept at dpolab's default value too: they say what the run is.
SHOWN = {"loss.method", "loss.beta", "data.max_length"}


def drop_dpolab_defaults(out: Conversion) -> None:
    """Leave out the keys whose value is dpolab's default anyway (but those in SHOWN): a default
    is not a choice, and written out it would take part in the checks of conflicting options."""
    from dpolab.config.schema import RunConfig

    defaults = RunConfig().to_dict()
    for section, values in out.values.items():
        if section == "training" or not isinstance(values, dict):
            continue
        for key in [k for k, v in values.items() if k in defaults[section] and v == defaults[section][k]]:
            if f"{section}.{key}" not in SHOWN:
                values.pop(key)
    for section in [s for s, v in out.values.items() if v == {}]:
        out.values.pop(section)


def keep_used_loss_keys(out: Conversion) -> None:
    """Leave out the loss keys the chosen methods do not take (dpolab refuses them): silently at
    their default value (the other tool ignores them too), reported otherwise."""
    from dpolab.objectives.registry import NOT_METHOD_KEYS, get_loss_spec

    loss = out.values.get("loss") or {}
    methods = loss.get("method", "dpo")
    methods = methods if isinstance(methods, list) else [methods]
    used = set(NOT_METHOD_KEYS)
    for method in methods:
        used |= set(get_loss_spec(method).keys)
    defaults = dataclasses.asdict(LossSection())
    for key in [k for k in loss if k not in used]:
        value = loss.pop(key)
        if value != defaults.get(key):
            what = " + ".join(map(str, methods))
            out.drop(
                out.origin.get(f"loss.{key}", f"loss.{key}"), value, f"loss.method {what} does not take it"
            )
