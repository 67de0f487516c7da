"""The two stages of the papers' pipeline: SFT on the chosen responses, then preference training.

A stage is what differs between `dpolab sft` and `dpolab train`: its config rules, the objective,
how a pair is tokenised and collated, the metrics it logs at evaluation and the one early
stopping watches by default, and whether it needs a reference model. The run
(`dpolab.training.run`) asks the stage and never branches on which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dpolab.config.schema import RunConfig
from dpolab.config.validate import check_early_stopping_metric, validate
from dpolab.data.tokenize import tokenize_pair, tokenize_sft
from dpolab.errors import DpolabError
from dpolab.modeling.collate import PairCollator, SequenceCollator
from dpolab.objectives.checks import check_loss_section
from dpolab.objectives.preference import PreferenceObjective
from dpolab.objectives.registry import needs_reference
from dpolab.objectives.sft import SFTObjective


@dataclass(frozen=True)
class PreferenceStage:
    """`dpolab train`: the configured loss (DPO, IPO, DPOP, SimPO, ORPO, ... or a weighted sum of
    several) at the final and intermediate layers."""

    name: ClassVar[str] = "train"
    # TRL's DPOConfig (TrainingArguments' 5e-5 is 50 times too high for preference training)
    training_defaults: ClassVar[dict[str, Any]] = {"learning_rate": 1e-6}
    tokenize = staticmethod(tokenize_pair)

    def early_stopping_metric(self, config: RunConfig) -> str:
        return config.early_stopping.metric

    def objective(self, config: RunConfig, num_layers: int) -> PreferenceObjective:
        return PreferenceObjective.from_config(config.loss, final_layer=num_layers)

    def eval_metric_names(self, config: RunConfig) -> tuple[str, ...]:
        """The metrics a run logs at each evaluation (as `eval_<name>`); no model needed."""
        return ("loss", *self.objective(config, num_layers=0).metric_names())

    def validate(self, config: RunConfig) -> None:
        validate(config, early_stopping_metric=self.early_stopping_metric(config))
        check_loss_section(config.loss, config.explicit)
        metric = self.early_stopping_metric(config)
        hint = (
            "; a layers/<k>/ metric needs k in loss.intermediate.layers"
            if metric.startswith("layers/")
            else ""
        )
        check_early_stopping_metric(config, metric, self.eval_metric_names(config), "this run", hint)

    def check_model(self, config: RunConfig, num_layers: int) -> None:
        """Intermediate layers must lie in 1..L−1 (L, the final layer, is always trained)."""
        for k in config.loss.intermediate.layers:
            if not 1 <= k <= num_layers - 1:
                raise DpolabError(
                    f"loss.intermediate.layers: layer {k} is outside 1..{num_layers - 1} for "
                    f"{config.model.name_or_path} ({num_layers} layers; the final layer {num_layers} is always trained)"
                )

    def collator(
        self,
        tokenizer,
        objective: PreferenceObjective | None = None,
        *,
        packed: bool = True,
        pack_tokens: int | None = None,
    ) -> PairCollator:
        """Pair rows (one per pair, or two for a model that cannot take that: `packed`,
        dpolab.modeling.layout; several pairs a row up to `pack_tokens`); with the prompts' tokens
        among the targets when the objective scores them (ORPO)."""
        score_prompt = objective is not None and objective.scores_prompt
        return PairCollator(
            pad_token_id=tokenizer.pad_token_id,
            score_prompt=score_prompt,
            packed=packed,
            pack_tokens=pack_tokens,
        )

    def needs_reference(self, config: RunConfig) -> bool:
        return needs_reference(config.loss)

    def describe(self, config: RunConfig) -> dict[str, Any]:
        """What summary.json says of the stage."""
        return {"command": self.name, "method": config.loss.method}


@dataclass(frozen=True)
class SFTStage:
    """`dpolab sft`: the negative log-likelihood of the chosen completions; no loss or reference
    section plays a part."""

    name: ClassVar[str] = "sft"
    training_defaults: ClassVar[dict[str, Any]] = {"learning_rate": 2e-5}  # TRL's SFTConfig
    tokenize = staticmethod(tokenize_sft)

    def early_stopping_metric(self, config: RunConfig) -> str:
        """SFT logs no rewards: early stopping watches eval loss unless the config names a metric."""
        return config.early_stopping.metric if "early_stopping.metric" in config.explicit else "loss"

    def objective(self, config: RunConfig, num_layers: int) -> SFTObjective:
        return SFTObjective(final_layer=num_layers)

    def eval_metric_names(self, config: RunConfig) -> tuple[str, ...]:
        return ("loss", *self.objective(config, num_layers=0).metric_names())

    def validate(self, config: RunConfig) -> None:
        validate(config, early_stopping_metric=self.early_stopping_metric(config))
        what = "dpolab sft (no rewards; by default it stops on eval loss)"
        check_early_stopping_metric(
            config, self.early_stopping_metric(config), self.eval_metric_names(config), what
        )

    def check_model(self, config: RunConfig, num_layers: int) -> None:
        pass

    def collator(
        self,
        tokenizer,
        objective: SFTObjective | None = None,
        *,
        packed: bool = True,
        pack_tokens: int | None = None,
    ) -> SequenceCollator:
        """One row per sequence, whatever the model (`packed` concerns pairs only); several
        sequences a row up to `pack_tokens` (for a model that takes pair rows)."""
        return SequenceCollator(pad_token_id=tokenizer.pad_token_id, pack_tokens=pack_tokens)

    def needs_reference(self, config: RunConfig) -> bool:
        return False

    def describe(self, config: RunConfig) -> dict[str, Any]:
        return {"command": self.name, "method": None}


PREFERENCE = PreferenceStage()
SFT = SFTStage()
STAGES = {stage.name: stage for stage in (PREFERENCE, SFT)}
Stage = PreferenceStage | SFTStage
