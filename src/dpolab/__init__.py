"""dpolab: preference optimisation for Hugging Face causal language models.

    from dpolab import train, sft, load_config, PreferenceTrainer

are imported on first use (`import dpolab` loads no torch; the command line starts fast).
"""

__version__ = "0.1.0"

_API = {
    "train": "dpolab.api",
    "sft": "dpolab.api",
    "load_config": "dpolab.api",
    "RunResult": "dpolab.training.notebook",
    "PreferenceTrainer": "dpolab.training.notebook",
    "DpolabError": "dpolab.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dpolab' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
