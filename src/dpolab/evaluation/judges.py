"""Judges of pairwise comparisons, and the judge prompt.

A judge sees one prompt and two answers, in the order given, and says which is better: `first`,
`second` or `tie`, or `unparsed` when its reply holds no verdict that can be read without guessing.
It also returns its raw reply (or the scores it decided by), which the win-rate cache keeps.
The win-rate rule (both orders, agreement required) lives in `dpolab.evaluation.winrate`.

Judges, by the spec a user writes:
- `openai:MODEL`  an OpenAI-compatible chat-completions endpoint (`dpolab.evaluation.openai_judge`)
- `hf:PATH`       a local causal LM; reads the log-probs of the verdict tokens "A" and "B" after the
                  judge prompt and "Verdict: [["
- `rm:PATH`       a reward model (sequence classification); the higher score wins, a margin not
                  above `threshold` is a tie
- `exact:`        programmatic: the answer with the correct final answer (`#### N`) wins
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dpolab.errors import DpolabError
from dpolab.evaluation.answers import answers_match, extract_final_answer

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


def reference_answer(text: str | None) -> str | None:
    """A reference answer: the part after `####` if there is one, else the text itself (numbers normalised)."""
    if text is None:
        return None
    text = str(text)
    found = extract_final_answer(text)
    return found if found is not None else extract_final_answer("#### " + text.strip())


class ExactJudge(Judge):
    """The answer whose final answer (`#### N`) matches the reference wins; both or neither: a tie."""

    spec = "exact:"
    needs_reference = True

    def judge(self, request: JudgeRequest) -> Judgement:
        reference = reference_answer(request.reference)
        if reference is None:
            raise DpolabError("the exact: judge needs a reference answer for every prompt")
        first, second = extract_final_answer(request.first), extract_final_answer(request.second)
        ok_first, ok_second = answers_match(first, reference), answers_match(second, reference)
        verdict = "tie" if ok_first == ok_second else ("first" if ok_first else "second")
        return Judgement(verdict, json.dumps({"reference": reference, "first": first, "second": second}))


def _score_verdict(margin: float, threshold: float) -> str:
    if margin > threshold:
        return "first"
    if margin < -threshold:
        return "second"
    return "tie"


class RewardModelJudge(Judge):
    """Scores each answer with a sequence-classification reward model (logit 0); the higher wins,
    a margin |s_first − s_second| ≤ `threshold` is a tie. Scores are computed once per answer."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        spec: str,
        threshold: float = 0.0,
        max_length: int = 4096,
        weights: str = "",
    ):
        self.model, self.tokenizer = model, tokenizer
        self.spec, self.threshold, self.max_length = spec, threshold, max_length
        self.weights = weights  # what identifies the model's weights (`model_weights_id`)
        self._scores: dict[tuple[str, str], float] = {}

    @property
    def cache_id(self) -> str:
        return f"{self.spec}|threshold={self.threshold}" + (f"|{self.weights}" if self.weights else "")

    def render(self, prompt: str, answer: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + answer

    def score(self, prompt: str, answer: str) -> float:
        import torch

        from dpolab.modeling.loading import model_device

        key = (prompt, answer)
        if key not in self._scores:
            enc = self.tokenizer(
                self.render(prompt, answer),
                return_tensors="pt",
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            )
            enc = {k: v.to(model_device(self.model)) for k, v in enc.items()}
            with torch.inference_mode():
                self._scores[key] = float(self.model(**enc).logits[0, 0].float())
        return self._scores[key]

    def judge(self, request: JudgeRequest) -> Judgement:
        s1, s2 = self.score(request.prompt, request.first), self.score(request.prompt, request.second)
        return Judgement(_score_verdict(s1 - s2, self.threshold), json.dumps({"first": s1, "second": s2}))


class CausalLMJudge(Judge):
    """A local causal LM reads the judge prompt (through its chat template when it has one)
    followed by `Verdict: [[`; the log-probs of the next token being "A" or "B" decide, a margin
    ≤ `threshold` being a tie."""

    VERDICT_PREFIX = "Verdict: [["

    def __init__(
        self, model, tokenizer, *, spec: str, template: str, threshold: float = 0.0, weights: str = ""
    ):
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.template, self.threshold = template, threshold
        self.weights = weights  # what identifies the model's weights (`model_weights_id`)

    @property
    def cache_id(self) -> str:
        key = f"{self.spec}|prompt={template_hash(self.template)}|threshold={self.threshold}"
        return key + (f"|{self.weights}" if self.weights else "")

    def context(self, request: JudgeRequest) -> str:
        text = render_judge_prompt(self.template, request)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text + self.VERDICT_PREFIX

    def verdict_logprobs(self, context: str) -> dict[str, float]:
        """log p(A), log p(B) of the first token where `context + "A"` and `context + "B"` differ."""
        import torch

        from dpolab.modeling.loading import model_device

        special = not getattr(self.tokenizer, "chat_template", None)
        ids_a = self.tokenizer(context + "A", add_special_tokens=special)["input_ids"]
        ids_b = self.tokenizer(context + "B", add_special_tokens=special)["input_ids"]
        n = 0
        while n < min(len(ids_a), len(ids_b)) and ids_a[n] == ids_b[n]:
            n += 1
        if n == 0 or n >= min(len(ids_a), len(ids_b)):
            raise DpolabError(
                f"{self.spec}: the tokenizer does not tell the verdicts 'A' and 'B' apart (they tokenize "
                "the same, e.g. both unknown); judge with a model whose vocabulary has them, or with "
                "openai:, rm: or exact:"
            )
        input_ids = torch.tensor([ids_a[:n]], device=model_device(self.model))
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids).logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        return {"A": float(logp[ids_a[n]]), "B": float(logp[ids_b[n]])}

    def judge(self, request: JudgeRequest) -> Judgement:
        lp = self.verdict_logprobs(self.context(request))
        return Judgement(_score_verdict(lp["A"] - lp["B"], self.threshold), json.dumps(lp))


JUDGE_KINDS = ("openai", "hf", "rm", "exact")


def model_weights_id(path: str, dtype: str) -> str:
    """A judge model's weights (the reference cache's fingerprint: a hub id, or a local folder's
    files by size, time and ends) and dtype, so that cached verdicts of a model since retrained
    into the same folder are not reused."""
    import hashlib

    from dpolab.modeling.fingerprint import model_fingerprint

    fingerprint = json.dumps(model_fingerprint(path), sort_keys=True)
    return f"weights={hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}|dtype={dtype}"


def build_judge(
    spec: str,
    *,
    judge_prompt: str | Path | None = None,
    threshold: float = 0.0,
    device: str = "auto",
    dtype: str = "auto",
    **openai_options: Any,
) -> Judge:
    """A judge from its spec: `openai:MODEL`, `hf:PATH`, `rm:PATH` or `exact:`.

    `openai_options` go to `OpenAIJudge` (base_url, api_key_env, concurrency, timeout,
    max_retries, backoff, max_tokens).
    """
    kind, _, target = spec.partition(":")
    if kind not in JUDGE_KINDS or (not target and kind != "exact"):
        raise DpolabError(
            f"unknown judge {spec!r}; write openai:MODEL, hf:PATH_OR_ID, rm:PATH_OR_ID or exact:"
        )
    if kind == "exact":
        return ExactJudge()
    if kind == "openai":
        from dpolab.evaluation.openai_judge import OpenAIJudge

        return OpenAIJudge(target, template=load_judge_prompt(judge_prompt), **openai_options)
    from dpolab.modeling.loading import load_for_inference, load_sequence_classifier

    if kind == "rm":
        model, tokenizer = load_sequence_classifier(target, device=device, dtype=dtype)
        weights = model_weights_id(target, str(model.dtype).removeprefix("torch."))
        return RewardModelJudge(model, tokenizer, spec=spec, threshold=threshold, weights=weights)
    model, tokenizer = load_for_inference(target, device=device, dtype=dtype)
    return CausalLMJudge(
        model,
        tokenizer,
        spec=spec,
        template=load_judge_prompt(judge_prompt),
        threshold=threshold,
        weights=model_weights_id(target, str(model.dtype).removeprefix("torch.")),
    )
