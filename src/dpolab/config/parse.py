"""Reading a run config: YAML plus `section.key=value` overrides, into the typed sections of
`dpolab.config.schema`. Unknown keys, wrong types and keys that moved stop here with one line that
names the key and says what to write instead."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dpolab.config.schema import MOVED_KEYS, SECTIONS, RunConfig
from dpolab.data.io import write_text_atomic
from dpolab.errors import DpolabError


def suggest(name: str, options: typing.Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return _coerce(key, value, option)  # its own message names the inner key
            try:
                return _coerce(key, value, option)
            except DpolabError:
                continue
        raise DpolabError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DpolabError(
                f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
            )
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise DpolabError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DpolabError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise DpolabError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DpolabError(f"{key}: expected an integer, got {value!r}")
    if tp in (str, float) and not isinstance(value, tp):
        raise DpolabError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls, values: dict[str, Any], prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "explicit"]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise DpolabError(
                f"unknown key '{dotted}'{suggest(key, names, f'{prefix}.' if prefix else '')} (known: {', '.join(names)})"
            )
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def _explicit_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys.add(dotted)
        if isinstance(value, dict) and key != "training":
            keys |= _explicit_keys(value, dotted)
    return keys


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `1e-3` is a string (a float needs a dot: `1.0e-3`); this loader
    also reads exponent-only numbers as floats, as YAML 1.2 and every other config reader do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise DpolabError(f"override '{text}' is not of the form section.key=value (e.g. loss.beta=0.3)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise DpolabError(f"override '{text}': name a section and a key, e.g. loss.beta=0.3")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise DpolabError(f"override '{text}': the value is not valid YAML ({err})") from None
    return path, value


def _set_dotted(values: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = values
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise DpolabError(f"override '{text}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def merge_overrides(
    values: dict[str, Any], overrides: typing.Sequence[str] | typing.Mapping[str, Any]
) -> dict[str, Any]:
    """`values` with the overrides set: `section.key=value` strings (the value read as YAML), or a
    mapping of `section.key` to Python values (the Python API's form)."""
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(overrides, typing.Mapping):
        for key, value in overrides.items():
            path = str(key).split(".")
            if len(path) < 2 or not all(path):
                raise DpolabError(f"override '{key}': name a section and a key, e.g. loss.beta")
            _set_dotted(values, path, value, f"{key}={value!r}")
        return values
    for text in overrides:
        path, value = parse_override(text)
        _set_dotted(values, path, value, text)
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DpolabError(f"{path}: no such config file")
    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise DpolabError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise DpolabError(f"{path}: expected a mapping of sections (model, data, loss, ...)")
    return values


def _check_moved(values: dict[str, Any]) -> None:
    """A key of an older dpolab stops with its new spelling, in YAML and as an override."""
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".", 1)
        if not (isinstance(values.get(section), dict) and key in values[section]):
            continue
        value = json.dumps(values[section][key])
        *parents, leaf = new.split(".")[1:]
        nested = f"{leaf}: {value}"
        for parent in reversed(parents):
            nested = f"{parent}: {{{nested}}}"
        raise DpolabError(
            f"{old} is now {new}: write `{section}: {{{nested}}}` in the YAML, or "
            f"{new}={value.replace(' ', '')} on the command line"
        )


def parse_config(values: dict[str, Any]) -> RunConfig:
    """The typed config of a mapping of sections (no stage rules yet: see dpolab.config.validate
    and the stages of dpolab.training)."""
    if not isinstance(values, dict):
        raise DpolabError("a config is a mapping of sections (model, data, loss, ...)")
    for section in values:
        if section not in SECTIONS:
            raise DpolabError(
                f"unknown section '{section}'{suggest(section, SECTIONS)} (known: {', '.join(SECTIONS)})"
            )
    _check_moved(values)
    config = _build(RunConfig, values, "")
    config.explicit = _explicit_keys(values)
    return config


def explicit_values(config: RunConfig) -> dict[str, Any]:
    """The sections and keys of `config` its source wrote (`config.explicit`), as a mapping that
    `parse_config` reads back into the same config: the defaults stay defaults."""

    def keep(values: dict[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if dotted not in config.explicit:
                continue
            nested = isinstance(value, dict) and any(e.startswith(dotted + ".") for e in config.explicit)
            out[key] = keep(value, dotted) if nested else value
        return out

    return keep(config.to_dict(), "")


def read_config(
    path: str | Path | None, overrides: typing.Sequence[str] | typing.Mapping[str, Any] = ()
) -> dict[str, Any]:
    """The sections of a YAML file (none for None) with the overrides applied, untyped."""
    values = read_yaml(path) if path is not None else {}
    return merge_overrides(values, overrides)


def dump_config(config: RunConfig, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
