"""docs/config.md, generated from the config schema so that it cannot drift from it.

Every key of every section, with its type, its default and what it does; the words are the
comments beside (or just above) each field in `dpolab.config.schema`, and the `loss.` keys name
the methods that read them (from the loss registry). Regenerate the page with

    PYTHONPATH=src python -m dpolab.config.reference > docs/config.md

(tests/docs/test_config_reference.py fails while the committed page differs from `render()`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize
import typing
from typing import Any

from dpolab.config import schema

COMMAND = "PYTHONPATH=src python -m dpolab.config.reference > docs/config.md"


def _comments(source: str) -> dict[int, str]:
    """The comment on each line of `source` (1-based line numbers), without its `#`."""
    out = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            out[token.start[0]] = token.string.lstrip("#").strip()
    return out


def _words(lines: list[str], comments: dict[int, str], first: int, last: int, previous_end: int) -> str:
    """The comment lines directly above lines first..last (after `previous_end`), then the comments
    on those lines, as one sentence."""
    above = []
    line = first - 1
    while line > previous_end and lines[line - 1].strip().startswith("#"):
        above.insert(0, comments[line])
        line -= 1
    beside = [comments[n] for n in range(first, last + 1) if n in comments and n not in above]
    return " ".join(above + beside).strip()


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (annotation as written, its comment)} of a dataclass of the schema."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    comments = _comments(source)
    (node,) = ast.parse(source).body
    out: dict[str, tuple[str, str]] = {}
    previous_end = node.lineno
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            words = _words(lines, comments, item.lineno, item.end_lineno, previous_end)
            out[item.target.id] = (ast.unparse(item.annotation), words)
        previous_end = item.end_lineno
    return out


def class_doc(cls: type) -> str:
    """The docstring the class's source gives it (a dataclass without one gets a generated one)."""
    (node,) = ast.parse(inspect.getsource(cls)).body
    return " ".join((ast.get_docstring(node) or "").split())


def dict_docs(name: str) -> dict[str, str]:
    """{key: comment} of a module-level dict literal of the schema (TRAINING_DEFAULTS, say)."""
    source = inspect.getsource(schema)
    lines = source.splitlines()
    comments = _comments(source)
    for node in ast.parse(source).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id == name and isinstance(node.value, ast.Dict):
            previous_end = node.lineno
            out = {}
            for key, value in zip(node.value.keys, node.value.values):
                out[ast.literal_eval(key)] = _words(
                    lines, comments, key.lineno, value.end_lineno, previous_end
                )
                previous_end = value.end_lineno
            return out
    raise ValueError(f"no dict literal {name} in {schema.__name__}")


def _value(value: Any) -> str:
    """A default as YAML writes it."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def _cell(text: str) -> str:
    """Table cell text: `a | b` written `a or b` (GitHub and MkDocs treat an escaped pipe in code
    differently)."""
    return text.replace(" | ", " or ").replace("|", "/").replace("\n", " ")


def _nested(annotation: Any) -> type | None:
    """The schema dataclass a field holds (alone or `| None`), if any."""
    options = typing.get_args(annotation) or (annotation,)
    found = [o for o in options if dataclasses.is_dataclass(o)]
    return found[0] if found else None


def _readers() -> dict[str, list[str]]:
    """{loss key: the methods whose spec reads it}."""
    from dpolab.objectives.registry import LOSS_KEYS, LOSSES

    specs = list(dict.fromkeys(LOSSES.values()))
    return {key: [s.name for s in specs if key in s.keys] for key in LOSS_KEYS}


def _section(prefix: str, cls: type, out: list[str], missing: list[str], *, level: int = 2) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    readers = _readers() if cls is schema.LossSection else {}
    doc = class_doc(cls)
    out += [f"{'#' * level} `{prefix}`", ""]
    if doc:
        out += [doc, ""]
    if readers:
        out += ["| key | type | default | what it does | read by |", "| --- | --- | --- | --- | --- |"]
    else:
        out += ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    nested = []
    for f in dataclasses.fields(cls):
        if f.name == "explicit":
            continue
        annotation, words = docs[f.name]
        key = f"{prefix}.{f.name}"
        choices = schema.CHOICES.get(key)
        kind = " | ".join(str(c) for c in choices if c is not None) if choices else annotation
        inner = _nested(hints[f.name])
        if inner is not None:
            nested.append((key, inner))
            words = words or f"see `{key}` below"
        if not words:
            missing.append(key)
        row = f"| `{key}` | `{_cell(kind)}` | {_value(_default(f)) if inner is None else _nested_default(f)} | {_cell(words)} |"
        if readers:
            users = readers.get(f.name)
            row += f" {', '.join(users) if users else '—'} |"
        out.append(row)
    out.append("")
    for key, inner in nested:
        _section(key, inner, out, missing, level=level + 1)


def _nested_default(f: dataclasses.Field) -> str:
    value = _default(f)
    return "`null`" if value is None else "the defaults below"


def _training(out: list[str]) -> None:
    from dpolab.training.stages import STAGES

    words = dict_docs("TRAINING_DEFAULTS")
    out += [
        "## `training`",
        "",
        "Any field of `transformers.TrainingArguments` "
        "([its reference](https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments)), "
        "under its own name, type-checked at start-up. A key that is not a field stops the run with the "
        "closest field's name.",
        "",
        "Defaults dpolab gives where the config says nothing (the rest are TrainingArguments' own):",
        "",
        "| key | default | note |",
        "| --- | --- | --- |",
    ]
    for key, value in schema.TRAINING_DEFAULTS.items():
        out.append(f"| `training.{key}` | {_value(value)} | {_cell(words.get(key, ''))} |")
    out.append("")
    for name, stage in STAGES.items():
        if stage.training_defaults:
            out += [f"`dpolab {name}` also defaults to:", ""]
            out += [f"- `training.{k}`: {_value(v)}" for k, v in stage.training_defaults.items()]
            out.append("")
    out += [
        "Set by dpolab itself, refused in a config:",
        "",
        *[f"- `training.{key}`: {reason}" for key, reason in schema.TRAINING_RESERVED.items()],
        "",
        "Derived from other keys unless the config sets them: with evaluation data (`data.eval` or "
        "`data.eval_size`) and no `training.eval_strategy`, evaluation runs every `eval_steps` steps, "
        "`eval_steps` defaulting to `logging_steps`; with `early_stopping.patience`, "
        "`load_best_model_at_end`, `metric_for_best_model` and `greater_is_better` follow "
        "`early_stopping.metric` (and may not be set), and `save_strategy` / `save_steps` default to "
        "the evaluation's.",
        "",
    ]


def render() -> str:
    """The Markdown of docs/config.md."""
    out = [
        "# Config reference",
        "",
        f"<!-- Generated from src/dpolab/config/schema.py by `{COMMAND}`; edit the schema's comments, not this page. -->",
        "",
        "A run config is a YAML file of the sections below; `dpolab train` and `dpolab sft` read it, "
        "and any key can be overridden on the command line as `section.key=value` (the value read as "
        "YAML). Unknown keys, wrong types and keys that the chosen method does not read stop the run "
        "at start-up with one line that says what to write instead. `dpolab config example NAME` "
        "prints a commented config ([training.md](training.md) walks through one).",
        "",
    ]
    missing: list[str] = []
    hints = typing.get_type_hints(schema.RunConfig)
    for name in schema.SECTIONS:
        cls = hints[name]
        if name == "training":
            _training(out)
        else:
            _section(name, cls, out, missing)
    out += [
        "## Keys that moved",
        "",
        "A config that still uses an old spelling stops with the new one.",
        "",
        "| old | new |",
        "| --- | --- |",
        *[f"| `{old}` | `{new}` |" for old, new in schema.MOVED_KEYS.items()],
        "",
    ]
    if missing:
        raise ValueError(
            f"no comment beside (or above) {', '.join(missing)} in dpolab.config.schema: every key "
            f"is documented there"
        )
    return "\n".join(out)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
