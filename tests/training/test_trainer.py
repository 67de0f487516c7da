"""The trainer's loss step leaves the device alone: no operator that makes the host wait for the
device (a value read back, an output whose size depends on the data) runs in it, so on a GPU the
host can queue step after step; values are read back only when they are logged."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainingArguments

from dpolab.config.schema import IntermediateSettings, LossSection
from dpolab.modeling.collate import PairCollator
from dpolab.modeling.layout import row_layout
from dpolab.objectives.preference import LossTerm, PreferenceObjective
from dpolab.objectives.registry import get_loss_spec
from dpolab.testing import tiny_model
from dpolab.training.reference import ModelReference, PrecomputedReference
from dpolab.training.trainer import DpolabTrainer

# ATen operators that synchronise with a CUDA device: `.item()` / `float()` / `bool()` go through
# _local_scalar_dense; the others size their output from the data (bincount reads its maximum back)
SYNCING = {
    "_local_scalar_dense",
    "nonzero",
    "bincount",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "masked_select",
    "repeat_interleave",
}


class HostSyncSpy(TorchDispatchMode):
    """Records every synchronising operator dispatched inside the `with` block (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_spy_sees_synchronising_operators():
    with HostSyncSpy() as spy:
        torch.bincount(torch.tensor([0, 1, 1]))
        torch.tensor(1.5).item()
        torch.tensor([0, 3]).nonzero()
    assert spy.seen == ["bincount", "_local_scalar_dense", "nonzero"]


PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 1], "rejected_ids": [11, 1]},
    {"prompt_ids": [13, 14], "chosen_ids": [15, 1], "rejected_ids": [16, 17, 18, 1]},
]


@pytest.mark.parametrize("reference", ["live", "precomputed", "methods", "moe"])
def test_loss_step_has_no_host_synchronisation(tmp_path, reference):
    """(moe: a Mixtral policy whose router's load-balancing loss is added)"""
    policy = tiny_model("mixtral" if reference == "moe" else "llama", vocab_size=64).train()
    objective = PreferenceObjective(
        (LossTerm(get_loss_spec("dpo"), params={"beta": 0.1}),), final_layer=4, intermediate_layers=(2,)
    )
    if reference == "methods":  # a list with ORPO (the prompts scored), LD-DPO's sums and WPO's weights
        section = LossSection(
            method=["orpo", "dpo"],
            ld_alpha=0.5,
            use_weighting=True,
            intermediate=IntermediateSettings(layers=[2]),
        )
        objective = PreferenceObjective.from_config(section, final_layer=4)
    collator = PairCollator(pad_token_id=2, score_prompt=objective.scores_prompt)
    if reference in ("live", "methods", "moe"):
        ref, pairs = ModelReference(tiny_model("llama", vocab_size=64, seed=1), objective.layers), PAIRS
    else:
        ref, pairs = (
            PrecomputedReference(),
            [{**p, "ref_logps": [[-20.0, -30.0], [-21.0, -31.0]]} for p in PAIRS],
        )
    trainer = DpolabTrainer(
        model=policy,
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
        data_collator=collator,
        objective=objective,
        reference=ref,
        aux_loss_coef=0.02 if reference == "moe" else 0.0,
    )
    batch = collator(pairs)
    # what dpolab finds of a model once, when it loads it (a probe forward, the row layout), is found
    # before the step: the step is what runs thousands of times
    for model in (policy, getattr(ref, "model", None)):
        if model is not None:
            row_layout(model)
    with HostSyncSpy() as spy:
        loss = trainer.compute_loss(policy, batch)
        loss.backward()
    assert spy.seen == []
    assert policy.lm_head.weight.grad is not None and torch.isfinite(loss)
