"""What every judge shares: the request and judgement types, the error, the judge prompt (loading,
rendering, its hash), the verdict reader and the `Judge` base class.

A judge sees one prompt and two answers, in the order given, and says which is better: `first`,
`second` or `tie`, or `unparsed` when its reply holds no verdict that can be read without guessing.
It also returns its raw reply (or the scores it decided by), which the win-rate cache keeps.
The win-rate rule (both orders, agreement required) lives in `dpolab.evaluation.winrate`.

Each judge module (`exact`, `local`, `openai`) imports only this one; `dpolab.evaluation.judges`
(the package) builds a judge from its spec.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dpolab.errors import DpolabError

VERDICTS = ("first", "second", "tie", "unparsed")
PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")


class JudgeError(DpolabError):
    """A judge that cannot go on (bad key, unreachable endpoint, malformed replies).

    `request_index`: the position, among the requests given to `judge_many`, of the request it
    stopped at (None when not known). `about_request`: True when the judge refused that request
    itself (e.g. too long for its context), not its own setup, so the user can act on that pair.
    """

    def __init__(self, message: str, *, about_request: bool = False):
        super().__init__(message)
        self.about_request = about_request
        self.request_index: int | None = None


@dataclass(frozen=True)
class JudgeRequest:
    prompt: str
    first: str
    second: str
    reference: str | None = None  # the correct answer, for judges that check one


@dataclass(frozen=True)
class Judgement:
    verdict: str  # one of VERDICTS
    raw: str  # the judge's reply, or the scores it decided by (JSON)


# ----------------------------------------------------------------------------------------------
# Judge prompt
# ----------------------------------------------------------------------------------------------


def default_judge_prompt() -> str:
    return resources.files("dpolab").joinpath("resources/judge_prompt.txt").read_text(encoding="utf-8")


def load_judge_prompt(path: str | Path | None = None) -> str:
    """The judge prompt template (the packaged default when `path` is None); it must contain the
    placeholders {question}, {answer_a} and {answer_b}."""
    if path is None:
        return default_judge_prompt()
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DpolabError(f"{path}: cannot read the judge prompt ({err.strerror})") from None
    missing = [p for p in PLACEHOLDERS if p not in template]
    if missing:
        raise DpolabError(f"{path}: the judge prompt lacks the placeholder(s) {', '.join(missing)}")
    return template


def render_judge_prompt(template: str, request: JudgeRequest) -> str:
    """The template with the question and the two answers filled in (plain replacement, so braces
    elsewhere in the template or the answers need no escaping)."""
    values = {"{question}": request.prompt, "{answer_a}": request.first, "{answer_b}": request.second}
    return re.sub(r"\{question\}|\{answer_a\}|\{answer_b\}", lambda m: values[m.group(0)], template)


_VERDICT = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_VERDICT_MEANING = {"A": "first", "B": "second", "C": "tie", "TIE": "tie"}


def parse_verdict(reply: str) -> str:
    """`first` for [[A]], `second` for [[B]], `tie` for [[C]] (or [[tie]]); `unparsed` when the
    reply has no verdict or verdicts that disagree."""
    found = {_VERDICT_MEANING[m.upper()] for m in _VERDICT.findall(reply or "")}
    return found.pop() if len(found) == 1 else "unparsed"


def template_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Judges
# ----------------------------------------------------------------------------------------------


class Judge:
    """Base class: `judge` one request; `judge_many` calls back with each result as it comes."""

    spec: str = "judge"
    needs_reference: bool = False

    @property
    def cache_id(self) -> str:
        """Identifies everything that changes verdicts (model, prompt, settings); part of the cache key."""
        return self.spec

    def judge(self, request: JudgeRequest) -> Judgement:
        raise NotImplementedError

    def judge_many(
        self, requests: Sequence[JudgeRequest], on_result: Callable[[int, Judgement], None]
    ) -> None:
        """Judge each request in turn; a `JudgeError` says which request it stopped at."""
        for i, request in enumerate(requests):
            try:
                judgement = self.judge(request)
            except JudgeError as err:
                err.request_index = i
                raise
            on_result(i, judgement)


@dataclass(frozen=True)
class JudgeOptions:
    """What `build_judge` hands each judge's builder. `extra`: the options of one kind of judge
    only (for `openai:`: base_url, api_key_env, concurrency, ...), checked against the kind's list."""

    judge_prompt: str | Path | None = None
    threshold: float = 0.0
    device: str = "auto"
    dtype: str = "auto"
    extra: dict = field(default_factory=dict)
