"""bf16 end to end: training with bf16 weights (`model.dtype: bfloat16`) and with fp32 weights under
bf16 autocast (`training.bf16: true`) follows the fp32 run, step by step, within what bf16's
rounding allows; under autocast the reference is rounded as the policy is.

Tolerances. bf16 keeps 8 significant bits (7 stored): a number is rounded to within 2⁻⁹ ≈ 0.2 % of
itself, about 2–3 significant decimal digits. What that does here (tiny Llama, hidden 32, logits
of about ±0.1, 6 steps of AdamW at 1e-3, intermediate layer 2):

- Under autocast the weights stay fp32 and only the products are rounded. Each token's log-prob
  moves by a few roundings of its logits (≈ 0.1 × 2⁻⁹ ≈ 2e-4), a sum of ~10–30 of them by ~1e-3 at
  most: 1e-4 of the summed log-probs (−45 … −90) relative; the loss (≈ 0.3–0.7) then differs by a
  few 1e-4 after the updates. Asserted: log-probs to 2e-4 relative, the loss to 2e-3.
- With bf16 weights, AdamW also updates bf16 numbers: a weight of ~0.02 has a spacing of 2⁻¹³ ≈
  1.2e-4, so each step's update of ~1e-3 is rounded by up to 6 %, and these errors add up over the
  steps. The margins (≈ 0.5–1.4 here) drift by ~1 % over 6 steps (measured: ≤ 0.7 %), the loss by a
  few 1e-3. Asserted: the loss to 1e-2, log-probs to 1e-3 relative, margins to 3 % relative.

Both runs must also have trained (the loss falls from log 2 to below 0.4 as in fp32) and must
differ from the fp32 run at all (else bf16 was not in effect).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from dpolab.training import config_from_dict, run

ROWS = [
    {
        "prompt": f"Question {i}: {i} + {i + 1} = ?",
        "chosen": f" Answer: {2 * i + 1}",
        "rejected": f" Answer: {i}{' maybe' * (i % 3)}",
    }
    for i in range(12)
]
STEPS = 6


def _train(root, model_dir, name, *, model=None, training=None, reference=None, steps=STEPS):
    data = root / "train.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    values = {
        "model": {"name_or_path": str(model_dir), **(model or {})},
        "data": {"train": str(data)},
        "loss": {"method": "dpo", "beta": 0.5, "intermediate": {"layers": [2]}},
        "reference": {"cache_dir": str(root / "cache"), **(reference or {})},
        "training": {
            "output_dir": str(root / name),
            "per_device_train_batch_size": 4,
            "max_steps": steps,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
            "seed": 0,
            "use_cpu": True,
            "save_strategy": "no",
            **(training or {}),
        },
    }
    run(config_from_dict(values))
    lines = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["split"] == "train"]


def _saved_dtypes(out_dir) -> set[str]:
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as f:
        return {str(f.get_slice(name).get_dtype()) for name in f.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("bf16")
    return root, {
        "fp32": _train(root, model_dir, "fp32"),
        "bf16 weights": _train(root, model_dir, "bf16-weights", model={"dtype": "bfloat16"}),
        "autocast": _train(root, model_dir, "autocast", training={"bf16": True}),
    }


def _deviation(run, reference, key, relative=False) -> float:
    out = 0.0
    for a, b in zip(run, reference):
        d = abs(a[key] - b[key])
        out = max(out, d / abs(b[key]) if relative else d)
    return out


def test_every_run_trained(runs):
    _, logs = runs
    for name, log in logs.items():
        assert [x["step"] for x in log] == list(range(1, STEPS + 1)), name
        assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), name
        assert log[-1]["loss"] < 0.4, name


def test_weights_have_the_dtype_asked_for(runs):
    root, _ = runs
    assert _saved_dtypes(root / "fp32") == {"F32"}
    assert _saved_dtypes(root / "bf16-weights") == {"BF16"}
    assert _saved_dtypes(root / "autocast") == {"F32"}  # autocast rounds the products, not the weights


def test_bf16_autocast_follows_the_fp32_run(runs):
    _, logs = runs
    fp32, amp = logs["fp32"], logs["autocast"]
    assert _deviation(amp, fp32, "loss") < 2e-3
    for key in ("logps/chosen", "logps/rejected", "layers/2/logps/chosen", "layers/2/logps/rejected"):
        deviation = _deviation(amp, fp32, key, relative=True)
        assert 0 < deviation < 2e-4, key  # > 0: the products really were taken in bf16


def test_bf16_weights_follow_the_fp32_run(runs):
    _, logs = runs
    fp32, bf16 = logs["fp32"], logs["bf16 weights"]
    assert _deviation(bf16, fp32, "loss") < 1e-2
    for key in ("logps/chosen", "logps/rejected", "layers/2/logps/chosen", "layers/2/logps/rejected"):
        deviation = _deviation(bf16, fp32, key, relative=True)
        assert 0 < deviation < 1e-3, key
    # from step 2 on (step 1's margins are 0: the policy is the reference)
    assert _deviation(bf16[1:], fp32[1:], "rewards/margins", relative=True) < 0.03


@pytest.mark.parametrize(
    "model",
    [{}, {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}],
    ids=["frozen-copy", "lora-adapters-off"],
)
def test_under_autocast_the_live_reference_is_rounded_as_the_policy(tmp_path, model_dir, model):
    """At step 1 the policy is the reference: under bf16 autocast both must be computed in bf16,
    so that the margins are exactly 0 and the loss exactly log 2 (a frozen copy left in fp32 makes
    them differ by the policy's rounding: margins of ~6e-4 here)."""
    (first,) = _train(tmp_path, model_dir, "run", model=model, training={"bf16": True}, steps=1)
    assert first["rewards/margins"] == 0.0
    assert first["layers/2/rewards/margins"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_under_autocast_the_reference_is_precomputed_in_bf16(tmp_path, model_dir):
    """The precomputation runs before the Trainer, outside the autocast accelerate wraps the
    policy's forward in: it must enter the same autocast itself. Its values equal a direct bf16
    computation of the same batches exactly, and differ from the fp32 one (by bf16's rounding).
    (The live step's batches are others, drawn at random: in bf16 a row's log-probs depend on
    the batch's shape at the 1e-5 level, so the step-1 margins are not exactly 0 here.)"""
    from transformers import AutoModelForCausalLM

    from dpolab.modeling.collate import PairCollator, batch_targets
    from dpolab.modeling.logprobs import layer_logprobs
    from dpolab.training.run import prepare

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    config = config_from_dict(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"train": str(data)},
            "loss": {"method": "dpo", "intermediate": {"layers": [2]}},
            "reference": {"precompute": True, "batch_size": 4, "cache_dir": str(tmp_path / "cache")},
            "training": {"output_dir": str(tmp_path / "out"), "bf16": True, "use_cpu": True},
        }
    )
    pairs = list(prepare(config).data.train)  # the rows, as dicts
    precomputed = torch.tensor([p["ref_logps"] for p in pairs])  # (pairs, layers [2, 4], [chosen, rejected])

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    collator = PairCollator(pad_token_id=2)

    def direct(autocast: bool) -> torch.Tensor:
        out = []
        for start in range(0, len(pairs), 4):
            examples = [
                {k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                for p in pairs[start : start + 4]
            ]
            batch = collator(examples)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logps = layer_logprobs(model, batch, [2, 4], targets=batch_targets(batch)).logps
            out.append(logps.reshape(2, -1, 2).permute(1, 0, 2))
        return torch.cat(out)

    torch.testing.assert_close(precomputed, direct(autocast=True), rtol=0, atol=0)
    assert (precomputed - direct(autocast=False)).abs().max() > 1e-4
