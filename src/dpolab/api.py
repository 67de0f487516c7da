"""The Python API: a run from a config, as `dpolab train` and `dpolab sft` do it, for notebooks
and scripts (docs/python-api.md).

    from dpolab import load_config, train
    result = train("dpo.yaml", {"loss.beta": 0.3, "training.max_steps": 100})
    result.summary["global_step"], result.evals()[-1]["rewards/accuracies"], result.model

`load_config` checks a config before anything loads; `train` and `sft` run one (logging to stderr
as the command line does) and return a `RunResult`. `PreferenceTrainer` builds a run from a model,
datasets and a tokenizer, as TRL's `DPOTrainer` does (`dpolab.training.notebook`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpolab.config.parse import explicit_values, merge_overrides, read_config
from dpolab.config.schema import RunConfig
from dpolab.errors import DpolabError
from dpolab.training.config import config_from_dict
from dpolab.training.notebook import PreferenceTrainer, RunResult

Overrides = Mapping[str, Any] | Sequence[str] | None


def load_config(
    source: str | Path | Mapping[str, Any] | RunConfig, overrides: Overrides = None, *, stage: str = "train"
) -> RunConfig:
    """A checked config for `stage` (`train` or `sft`) from a YAML file, a mapping of sections or
    a `RunConfig`, with overrides: a mapping `{"loss.beta": 0.3}` (Python values) or a list
    `["loss.beta=0.3"]` (as on the command line). Raises `DpolabError` naming the key on any
    mistake, before any model loads."""
    if isinstance(source, RunConfig):
        values = merge_overrides(explicit_values(source), overrides or ())
    elif isinstance(source, Mapping):
        values = merge_overrides(copy.deepcopy(dict(source)), overrides or ())
    elif isinstance(source, str | Path):
        values = read_config(source, overrides or ())
    else:
        raise DpolabError(
            f"a config is a YAML path, a dict of sections or a RunConfig, not {type(source).__name__}"
        )
    return config_from_dict(values, stage=stage)


def _run(source, overrides: Overrides, stage: str, callbacks) -> RunResult:
    config = load_config(source, overrides, stage=stage)
    return PreferenceTrainer.from_config(config, stage=stage, callbacks=callbacks).train()


def train(
    config: str | Path | Mapping[str, Any] | RunConfig, overrides: Overrides = None, *, callbacks=()
) -> RunResult:
    """Preference training as `dpolab train CONFIG [overrides]` runs it; returns its `RunResult`
    (summary, metrics, the trainer)."""
    return _run(config, overrides, "train", callbacks)


def sft(
    config: str | Path | Mapping[str, Any] | RunConfig, overrides: Overrides = None, *, callbacks=()
) -> RunResult:
    """Supervised fine-tuning as `dpolab sft CONFIG [overrides]` runs it; returns its `RunResult`."""
    return _run(config, overrides, "sft", callbacks)
