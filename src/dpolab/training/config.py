"""A run config read and checked for one stage: the generic rules, then the stage's own."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from dpolab.config.parse import parse_config, read_config
from dpolab.config.schema import RunConfig
from dpolab.training.stages import PREFERENCE, STAGES, Stage


def resolve_stage(stage: Stage | str) -> Stage:
    return STAGES[stage] if isinstance(stage, str) else stage


def config_from_dict(values: dict[str, Any], *, stage: Stage | str = PREFERENCE) -> RunConfig:
    """Type-check and validate a mapping of sections for `stage` (`train` or `sft`). Raises
    `DpolabError` on any problem, before any model loads."""
    stage = resolve_stage(stage)
    config = parse_config(values)
    stage.validate(config)
    return config


def load_config(
    path: str | Path | None, overrides: typing.Sequence[str] = (), *, stage: Stage | str = PREFERENCE
) -> RunConfig:
    """Read a YAML config, apply `section.key=value` overrides, type-check and validate it for `stage`."""
    return config_from_dict(read_config(path, overrides), stage=stage)
