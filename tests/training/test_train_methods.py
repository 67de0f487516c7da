"""`dpolab train` with the new methods end to end on a tiny model: intermediate layers with a
reference-free method and with a weighted list under LD-DPO and WPO, against a direct computation
from full logits (each sequence alone, no packing, no chunks); the precomputed reference of an
LD-DPO run gives the live run's numbers, from a cache of its own."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from dpolab.data.formats import normalise
from dpolab.data.tokenize import tokenize_pair
from dpolab.modeling.anatomy import anatomy
from dpolab.testing import tiny_model
from dpolab.training import config_from_dict, run

ROWS = [
    {"prompt": "Question: 3 + 5 = ?", "chosen": " Answer: 8", "rejected": " Answer: 9 or so"},
    {"prompt": "Question: 2 + 2 = ?", "chosen": " Answer: 4", "rejected": " The answer is 5"},
    {"prompt": "Human: What is the capital of France?", "chosen": " Paris.", "rejected": " Lyon."},
    {"prompt": "The quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " sleeps."},
]
LAYERS = [1, 3, 4]  # two intermediate layers and the final one (L = 4)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("methods-e2e")
    out = []
    for name, seed in (("policy", 0), ("ref", 1)):
        tiny_model("llama", vocab_size=len(tokenizer), seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out.append(root / name)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return (*out, data)


def _config(tmp_path, models, loss, out="out", **extra):
    policy, _ref, data = models
    values = {
        "model": {"name_or_path": str(policy)},
        "data": {"train": str(data), "max_length": 64, "max_prompt_length": 32},
        "loss": loss,
        "training": {
            "output_dir": str(tmp_path / out),
            "per_device_train_batch_size": len(ROWS),
            "max_steps": 1,
            "logging_steps": 1,
            "learning_rate": 0.0,
            "disable_tqdm": True,
            "seed": 0,
        },
    }
    for section, keys in extra.items():
        values.setdefault(section, {}).update(keys)
    return values


def _first_train_line(out_dir):
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return next(line for line in lines if line["split"] == "train")


@torch.no_grad()
def per_token(model_dir, tokenizer):
    """For each pair: per layer, the log-probs and log Σ p² of every token of prompt + chosen and
    prompt + rejected (as separate sequences, full logits), and the prompt's length."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    parts = anatomy(model)
    pairs = []
    for row in ROWS:
        pair = tokenize_pair(normalise(row), tokenizer, max_length=64, max_prompt_length=32)
        seqs = []
        for completion in (pair.chosen_ids, pair.rejected_ids):
            ids = torch.tensor([pair.prompt_ids + completion])
            out = model(input_ids=ids, output_hidden_states=True)
            layers = {}
            for k in LAYERS:
                h = out.hidden_states[k] if k < parts.num_layers else None
                logits = out.logits if h is None else parts.head(parts.final_norm(h))
                logp = torch.log_softmax(logits[0, :-1].float(), -1)
                layers[k] = (logp.gather(1, ids[0, 1:, None]).squeeze(1), torch.logsumexp(2 * logp, -1))
            seqs.append(layers)
        pairs.append((len(pair.prompt_ids), seqs))
    return pairs


def test_orpo_and_simpo_with_intermediate_layers_match_the_direct_computation(tmp_path, tokenizer, models):
    beta, gamma, lam = 2.0, 0.5, 0.25
    policy = per_token(models[0], tokenizer)
    for method in ("orpo", "simpo"):
        keys = {"beta": lam} if method == "orpo" else {"beta": beta, "simpo_gamma": gamma}
        values = _config(
            tmp_path,
            models,
            {"method": method, **keys, "intermediate": {"layers": [1, 3], "gamma": 0.8}},
            out=method,
        )
        run(config_from_dict(values))
        logged = _first_train_line(tmp_path / method)
        per_layer = {}
        for k in LAYERS:
            losses, nll_sum, nll_count = [], 0.0, 0
            for n_prompt, (chosen, rejected) in policy:
                c, r = chosen[k][0][n_prompt - 1 :], rejected[k][0][n_prompt - 1 :]  # the completions' tokens
                a_w, a_l = c.mean(), r.mean()
                if method == "orpo":
                    # log odds ratio, odds = p/(1 − p) with p = e^ā; NLL over prompt (from its 2nd token) + chosen
                    log_odds = (a_w - torch.log1p(-a_w.exp())) - (a_l - torch.log1p(-a_l.exp()))
                    losses.append(-lam * F.logsigmoid(log_odds))
                    nll_sum, nll_count = nll_sum - chosen[k][0].sum(), nll_count + chosen[k][0].numel()
                else:  # −log σ(β·ā_w − β·ā_l − γ)
                    losses.append(-F.logsigmoid(beta * a_w - beta * a_l - gamma))
            per_layer[k] = torch.stack(losses) + (nll_sum / nll_count if method == "orpo" else 0.0)
        final = per_layer[4].mean()
        total = 0.8 * final + 0.2 * (per_layer[1].mean() + per_layer[3].mean()) / 2
        assert logged["loss"] == pytest.approx(total.item(), rel=1e-5, abs=1e-5), method
        assert logged["loss/final"] == pytest.approx(final.item(), rel=1e-5, abs=1e-5)
        for k in (1, 3):
            assert logged[f"layers/{k}/loss"] == pytest.approx(per_layer[k].mean().item(), rel=1e-5, abs=1e-5)
            assert f"layers/{k}/rewards/accuracies" in logged
        if method == "orpo":
            assert all(f"layers/{k}/{m}" in logged for k in (1, 3) for m in ("log_odds_ratio", "nll_loss"))
        assert not (tmp_path / method / "reference").exists()


def test_weighted_list_with_ld_alpha_wpo_and_intermediate_layers(tmp_path, tokenizer, models):
    beta, alpha, w = 0.4, 0.5, (0.8, 0.2, 1.0)
    loss = {
        "method": ["sigmoid", "bco_pair", "sft"],
        "weights": list(w),
        "beta": beta,
        "ld_alpha": alpha,
        "use_weighting": True,
        "intermediate": {"layers": [1, 3], "gamma": 0.9},
    }
    run(config_from_dict(_config(tmp_path, models, loss, model={"ref_name_or_path": str(models[1])})))
    logged = _first_train_line(tmp_path / "out")
    policy, ref = per_token(models[0], tokenizer), per_token(models[1], tokenizer)
    per_layer = {}
    for k in LAYERS:
        dpo, bco, weights, nll_sum, nll_count, r_w = [], [], [], 0.0, 0, []
        for (n_prompt, (pc, pr)), (_, (rc, rr)) in zip(policy, ref):
            toks = [seq[k][0][n_prompt - 1 :] for seq in (pc, pr, rc, rr)]
            shared = min(len(toks[0]), len(toks[1]))
            # LD-DPO: the tokens past the shared length weigh α, for the policy and the reference
            ld = [t[:shared].sum() + alpha * t[shared:].sum() for t in toks]
            d_w, d_l = ld[0] - ld[2], ld[1] - ld[3]
            dpo.append(-F.logsigmoid(beta * (d_w - d_l)))
            bco.append(-F.logsigmoid(beta * d_w) - F.logsigmoid(-beta * d_l))
            r_w.append(beta * d_w)
            # WPO: exp(mean(log p − log Σ p²)) of the chosen times the rejected (the plain tokens)
            aligned = [(seq[k][0] - seq[k][1])[n_prompt - 1 :].mean().exp() for seq in (pc, pr)]
            weights.append(aligned[0] * aligned[1])
            nll_sum, nll_count = nll_sum - toks[0].sum(), nll_count + len(toks[0])
        sft = nll_sum / nll_count
        per_layer[k] = (w[0] * torch.stack(dpo) + w[1] * torch.stack(bco) + w[2] * sft) * torch.stack(weights)
        if k == 4:
            rewards = torch.stack(r_w).mean()
    total = 0.9 * per_layer[4].mean() + 0.1 * (per_layer[1].mean() + per_layer[3].mean()) / 2
    assert logged["loss"] == pytest.approx(total.item(), rel=1e-5, abs=1e-5)
    for k in (1, 3):
        assert logged[f"layers/{k}/loss"] == pytest.approx(per_layer[k].mean().item(), rel=1e-5, abs=1e-5)
    assert logged["rewards/chosen"] == pytest.approx(rewards.item(), rel=1e-5, abs=1e-5)


def test_precomputed_ld_reference_gives_the_live_numbers_from_its_own_cache(tmp_path, models):
    cache = tmp_path / "cache"
    lines = {}
    for name, ld_alpha, precompute in (
        ("live", 0.3, False),
        ("pre", 0.3, True),
        ("pre-plain", None, True),
        ("pre-again", 0.3, True),
    ):
        loss = {"method": "ipo", "ld_alpha": ld_alpha, "intermediate": {"layers": [2]}}
        values = _config(
            tmp_path,
            models,
            {k: v for k, v in loss.items() if v is not None},
            out=name,
            model={"ref_name_or_path": str(models[1])},
            reference={"precompute": precompute, "cache_dir": str(cache)},
        )
        run(config_from_dict(values))
        lines[name] = _first_train_line(tmp_path / name)
    assert len(list(cache.glob("*.pt"))) == 2  # one per ld_alpha; the fourth run read the second's
    for key in ("loss", "layers/2/loss", "rewards/chosen", "logps/chosen"):
        assert lines["pre"][key] == pytest.approx(lines["live"][key], rel=1e-5, abs=1e-5), key
        assert lines["pre-again"][key] == pytest.approx(lines["live"][key], rel=1e-5, abs=1e-5), key
    assert lines["pre-plain"]["loss"] != pytest.approx(lines["live"]["loss"], rel=1e-4)
