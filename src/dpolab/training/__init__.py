"""Training: a run from a config (`run`), the stages of the papers' pipeline (`stages`), the
Trainer subclass and its callbacks, the reference in its three kinds, and sweeps."""

from dpolab.training.config import config_from_dict, load_config
from dpolab.training.run import build_trainer, prepare, run, summarise, train_and_save
from dpolab.training.stages import PREFERENCE, SFT, STAGES

__all__ = [
    "PREFERENCE",
    "SFT",
    "STAGES",
    "build_trainer",
    "config_from_dict",
    "load_config",
    "prepare",
    "run",
    "summarise",
    "train_and_save",
]
