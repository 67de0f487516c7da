"""The run config: typed sections (`schema`), YAML and overrides (`parse`), the rules every stage
follows (`validate`). Each stage of `dpolab.training` adds its own rules on top."""

from dpolab.config.parse import (
    dump_config,
    explicit_values,
    load_yaml,
    merge_overrides,
    parse_config,
    parse_override,
    read_config,
    read_yaml,
    suggest,
)
from dpolab.config.schema import (
    TRAINING_DEFAULTS,
    DataSection,
    EarlyStoppingSection,
    IntermediateSettings,
    LoraSettings,
    LossSection,
    ModelSection,
    ReferenceSection,
    RunConfig,
)
from dpolab.config.validate import check_early_stopping_metric, has_eval_data, validate

__all__ = [
    "TRAINING_DEFAULTS",
    "DataSection",
    "EarlyStoppingSection",
    "IntermediateSettings",
    "LoraSettings",
    "LossSection",
    "ModelSection",
    "ReferenceSection",
    "RunConfig",
    "check_early_stopping_metric",
    "dump_config",
    "explicit_values",
    "has_eval_data",
    "load_yaml",
    "merge_overrides",
    "parse_config",
    "parse_override",
    "read_config",
    "read_yaml",
    "suggest",
    "validate",
]
