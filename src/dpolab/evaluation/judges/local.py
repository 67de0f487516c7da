"""The judges that run a local model: `hf:PATH` (a causal LM: the log-probs of the verdict tokens
"A" and "B" after the judge prompt and "Verdict: [[") and `rm:PATH` (a reward model, sequence
classification: the higher score wins, a margin not above `threshold` is a tie).

torch and the loader are imported only when a model is built or run.
"""

from __future__ import annotations

import hashlib
import json

from dpolab.errors import DpolabError
from dpolab.evaluation.judges.base import (
    Judge,
    Judgement,
    JudgeOptions,
    JudgeRequest,
    load_judge_prompt,
    render_judge_prompt,
    template_hash,
)


def score_verdict(margin: float, threshold: float) -> str:
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
        return Judgement(score_verdict(s1 - s2, self.threshold), json.dumps({"first": s1, "second": s2}))


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
        return Judgement(score_verdict(lp["A"] - lp["B"], self.threshold), json.dumps(lp))


def model_weights_id(path: str, dtype: str) -> str:
    """A judge model's weights (the reference cache's fingerprint: a hub id, or a local folder's
    files by size, time and ends) and dtype, so that cached verdicts of a model since retrained
    into the same folder are not reused."""
    from dpolab.modeling.fingerprint import model_fingerprint

    fingerprint = json.dumps(model_fingerprint(path), sort_keys=True)
    return f"weights={hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}|dtype={dtype}"


def _dtype_name(model) -> str:
    return str(model.dtype).removeprefix("torch.")


def build_reward_model(spec: str, target: str, options: JudgeOptions) -> RewardModelJudge:
    """`rm:PATH_OR_ID`: a sequence-classification model with a trained score head."""
    from dpolab.modeling.loading import load_sequence_classifier

    model, tokenizer = load_sequence_classifier(target, device=options.device, dtype=options.dtype)
    weights = model_weights_id(target, _dtype_name(model))
    return RewardModelJudge(model, tokenizer, spec=spec, threshold=options.threshold, weights=weights)


def build_causal_lm(spec: str, target: str, options: JudgeOptions) -> CausalLMJudge:
    """`hf:PATH_OR_ID`: a causal LM reading the judge prompt."""
    from dpolab.modeling.loading import load_for_inference

    model, tokenizer = load_for_inference(target, device=options.device, dtype=options.dtype)
    return CausalLMJudge(
        model,
        tokenizer,
        spec=spec,
        template=load_judge_prompt(options.judge_prompt),
        threshold=options.threshold,
        weights=model_weights_id(target, _dtype_name(model)),
    )
