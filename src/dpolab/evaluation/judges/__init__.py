"""Judges of pairwise comparisons: `build_judge(spec)` and the names callers use.

Judges, by the spec a user writes (the registry `JUDGES` below, one entry each):
- `openai:MODEL`  an OpenAI-compatible chat-completions endpoint (`judges.openai`)
- `hf:PATH`       a local causal LM reading the judge prompt (`judges.local`)
- `rm:PATH`       a local reward model (`judges.local`)
- `exact:`        programmatic: the answer with the correct final answer wins (`judges.exact`)

Every judge module imports only `judges.base` (the shared types, the judge prompt, the verdict
reader), never another judge module or this package. A judge's module is imported when that judge
is built, so that `import dpolab.evaluation.judges` costs no HTTP client and no torch.
Adding a judge: one module with a `Judge` subclass and a builder `(spec, target, JudgeOptions) ->
Judge`, and one entry in `JUDGES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpolab.errors import DpolabError
from dpolab.evaluation.judges.base import (
    PLACEHOLDERS,
    VERDICTS,
    Judge,
    JudgeError,
    Judgement,
    JudgeOptions,
    JudgeRequest,
    default_judge_prompt,
    load_judge_prompt,
    parse_verdict,
    render_judge_prompt,
    template_hash,
)
from dpolab.evaluation.judges.exact import ExactJudge, reference_answer
from dpolab.evaluation.judges.local import CausalLMJudge, RewardModelJudge, model_weights_id

__all__ = [
    "JUDGES",
    "PLACEHOLDERS",
    "VERDICTS",
    "CausalLMJudge",
    "ExactJudge",
    "Judge",
    "JudgeError",
    "JudgeKind",
    "JudgeOptions",
    "JudgeRequest",
    "Judgement",
    "RewardModelJudge",
    "build_judge",
    "default_judge_prompt",
    "load_judge_prompt",
    "model_weights_id",
    "parse_verdict",
    "reference_answer",
    "render_judge_prompt",
    "template_hash",
]


@dataclass(frozen=True)
class JudgeKind:
    """One kind of judge: how a user writes it, where its builder is (`module:function`, imported
    on use), whether it needs something after the colon, and the options only it takes."""

    usage: str
    builder: str
    needs_target: bool = True
    options: frozenset[str] = frozenset()


OPENAI_OPTIONS = frozenset(
    {
        "base_url",
        "api_key_env",
        "concurrency",
        "timeout",
        "max_retries",
        "backoff",
        "temperature",
        "max_tokens",
    }
)

JUDGES: dict[str, JudgeKind] = {
    "openai": JudgeKind("openai:MODEL", "dpolab.evaluation.judges.openai:build", options=OPENAI_OPTIONS),
    "hf": JudgeKind("hf:PATH_OR_ID", "dpolab.evaluation.judges.local:build_causal_lm"),
    "rm": JudgeKind("rm:PATH_OR_ID", "dpolab.evaluation.judges.local:build_reward_model"),
    "exact": JudgeKind("exact:", "dpolab.evaluation.judges.exact:build", needs_target=False),
}


def _usages() -> str:
    usages = [kind.usage for kind in JUDGES.values()]
    return ", ".join(usages[:-1]) + " or " + usages[-1]


def build_judge(
    spec: str,
    *,
    judge_prompt: str | Path | None = None,
    threshold: float = 0.0,
    device: str = "auto",
    dtype: str = "auto",
    **options: Any,
) -> Judge:
    """A judge from its spec: `openai:MODEL`, `hf:PATH`, `rm:PATH` or `exact:`.

    `options` are those of one kind only (for `openai:`: base_url, api_key_env, concurrency,
    timeout, max_retries, backoff, temperature, max_tokens; see `judges.openai.OpenAIJudge`);
    one the kind does not take is an error, not ignored.
    """
    name, _, target = spec.partition(":")
    kind = JUDGES.get(name)
    if kind is None or (kind.needs_target and not target):
        raise DpolabError(f"unknown judge {spec!r}; write {_usages()}")
    unknown = sorted(set(options) - kind.options)
    if unknown:
        takers = [other.usage for other in JUDGES.values() if set(unknown) <= other.options]
        whose = f" (an option of {' and '.join(takers)} only)" if takers else ""
        raise DpolabError(f"the judge {spec} does not take {', '.join(unknown)}{whose}")
    module, _, function = kind.builder.partition(":")
    build = getattr(importlib.import_module(module), function)
    judge_options = JudgeOptions(
        judge_prompt=judge_prompt, threshold=threshold, device=device, dtype=dtype, extra=options
    )
    return build(spec, target, judge_options)
