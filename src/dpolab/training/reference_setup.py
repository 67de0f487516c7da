"""Choosing and preparing the reference for a run (see dpolab.training.reference for the three kinds)."""

from __future__ import annotations

import copy
import gc
import logging
from pathlib import Path

from dpolab.config.schema import RunConfig
from dpolab.data.rows import RowList
from dpolab.errors import DpolabError
from dpolab.modeling.fingerprint import model_fingerprint, weights_fingerprint
from dpolab.objectives.preference import PreferenceObjective
from dpolab.training.policy import GivenModels, freeze, load_frozen_reference
from dpolab.training.reference import (
    AdapterDisabledReference,
    ModelReference,
    PrecomputedReference,
    eval_mode,
    mixed_precision_autocast,
)
from dpolab.training.reference_cache import (
    cache_key,
    cached_reference_logps,
    compute_reference_logps,
    default_cache_dir,
)

log = logging.getLogger("dpolab")


def _reference_name(section, given: GivenModels) -> str:
    if given.reference is not None:
        return "the given ref_model"
    if given.policy is not None and section.ref_name_or_path is None:
        return "the given model's starting weights"
    return section.ref_name_or_path or section.name_or_path


def check_sharding(config: RunConfig) -> None:
    """Under DeepSpeed ZeRO-3 every model dpolab loads is partitioned as it loads, and only the
    policy runs inside DeepSpeed's engine (which gathers the parts): a frozen reference copy, or a
    precomputation before training starts, would run on empty weights. Say so before loading."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return
    if config.model.lora is None or config.model.ref_name_or_path is not None or config.reference.precompute:
        raise DpolabError(
            "under DeepSpeed ZeRO-3 dpolab supports only LoRA with the live reference (model.lora set, no "
            "model.ref_name_or_path, reference.precompute false): a frozen reference copy or a precomputation "
            "would run outside DeepSpeed's engine on partitioned weights; use ZeRO-2 or FSDP "
            "(examples/accelerate/fsdp.yaml) for full fine-tuning"
        )


def check_vocabulary(config: RunConfig, tokenizer, policy_config, reference_config=None) -> None:
    """Every token id the tokenizer can produce must have a row in the policy's embeddings and in
    the reference's (`ref_name_or_path`), or the forward pass fails with an IndexError deep in
    torch. Checked from the model configs (`vocab_size`) before any weights load. A reference whose
    vocabulary size differs from the policy's but still covers the tokenizer (embeddings padded to
    another multiple) runs and is only warned about: it may have been trained with another
    tokenizer, and the reference then scores tokens it never saw as those ids."""
    section = config.model
    tokens = len(tokenizer)
    tokenizer_name = section.tokenizer_name_or_path or section.name_or_path
    models = [
        ("model.name_or_path", section.name_or_path, policy_config, "give the model's own tokenizer"),
    ]
    if reference_config is not None:
        advice = "the policy and the reference must share the tokenizer's vocabulary"
        models.append(("model.ref_name_or_path", section.ref_name_or_path, reference_config, advice))
    for key, name, model_config, advice in models:
        size = getattr(model_config, "vocab_size", None)
        if size is not None and tokens > size:
            raise DpolabError(
                f"{key} {name}: its embeddings hold {size} tokens, but the tokenizer ({tokenizer_name}) has "
                f"{tokens}; {advice}"
            )
    if reference_config is not None:
        sizes = (getattr(policy_config, "vocab_size", None), getattr(reference_config, "vocab_size", None))
        if None not in sizes and sizes[0] != sizes[1]:
            log.warning(
                "model.ref_name_or_path %s has a vocabulary of %d, the policy %d: check that both use the "
                "tokenizer %s",
                section.ref_name_or_path,
                sizes[1],
                sizes[0],
                tokenizer_name,
            )


def _frozen_reference(config: RunConfig, given: GivenModels):
    """The reference model: the given one, or a copy of the given policy's starting weights (as
    it is now, before any step), or the one the config names, loaded; frozen."""
    if given.reference is not None:
        return freeze(given.reference)
    if given.policy is not None and config.model.ref_name_or_path is None:
        return freeze(copy.deepcopy(given.policy))
    return load_frozen_reference(config.model)


def build_reference(
    config: RunConfig, policy, objective, prepared, collator, args, given: GivenModels | None = None
):
    """The reference the trainer will use; with `reference.precompute`, first adds a `ref_logps`
    column to the train/eval pairs (from the cache when it holds them) and frees the reference model.
    When the reference is the policy's starting weights (no `ref_name_or_path`, no given
    reference), the policy itself computes them before training starts: no second copy is loaded."""
    given = given or GivenModels()
    if not objective.needs_reference:
        if isinstance(objective, PreferenceObjective):  # reference-free methods (SFT needs none either)
            log.info(
                "reference: none (loss.method %s compares the policy with no reference: none loaded, computed or cached)",
                config.loss.method,
            )
        return None
    section = config.model
    layers, final_norm = objective.layers, objective.final_norm
    how = {"final_norm": final_norm, "ld_alpha": objective.ld_alpha}  # reduced as the policy's are
    separate = section.ref_name_or_path is not None or given.reference is not None
    adapters = section.lora is not None and not separate
    if not config.reference.precompute:
        if adapters:
            log.info("reference: the policy with its LoRA adapters disabled")
            return AdapterDisabledReference(layers, **how)
        log.info("reference: a frozen copy of %s", _reference_name(section, given))
        return ModelReference(_frozen_reference(config, given), layers, **how).to(args.device)

    ref_path = section.ref_name_or_path or section.name_or_path
    if given.reference is not None:
        fingerprint = weights_fingerprint(given.reference)
    elif given.policy is not None and section.ref_name_or_path is None:
        fingerprint = weights_fingerprint(policy)  # its starting weights: no step taken yet
    else:
        fingerprint = model_fingerprint(ref_path)
    # computed under the autocast the policy's forward will run under (training.bf16 / fp16)
    precision = getattr(args, "mixed_precision", "no") or "no"
    cache_dir = Path(config.reference.cache_dir) if config.reference.cache_dir else default_cache_dir()
    batch_size = config.reference.batch_size or args.per_device_eval_batch_size
    for part in ("train", "eval"):
        dataset = getattr(prepared, part)
        if not dataset:
            continue
        pairs = RowList(dataset)  # the rows as dicts, as the collator receives them
        key = cache_key(
            model=fingerprint,
            pairs=pairs,
            layers=layers,
            final_norm=final_norm,
            dtype=section.dtype,
            ld_alpha=objective.ld_alpha,
            autocast=None if precision == "no" else precision,
        )

        def compute(pairs=pairs):
            if adapters:
                reference, owner = AdapterDisabledReference(layers, **how), policy
            elif not separate:
                # the reference is the policy's starting weights, and no step has been taken yet:
                # the policy itself serves, with no second copy in memory
                reference, owner = ModelReference(policy, layers, **how), None
            else:
                reference, owner = (
                    ModelReference(_frozen_reference(config, given), layers, **how),
                    None,
                )
            if adapters or not separate:
                policy.to(args.device)
            else:
                reference.to(args.device)
            # no dropout in the reference's log-probs; the policy's mixed precision
            with eval_mode(policy), mixed_precision_autocast(precision, args.device.type):
                values = compute_reference_logps(
                    reference, pairs, collator, batch_size=batch_size, device=args.device, policy=owner
                )
            del reference
            gc.collect()
            return values

        # every process computes a share of the batches (dpolab.training.reference_cache); the first caches them
        values = cached_reference_logps(key, cache_dir, compute, shape=(len(pairs), len(layers), 2))
        if values.shape[0] != len(pairs):
            raise RuntimeError(
                f"cached reference log-probs hold {values.shape[0]} pairs, expected {len(pairs)}"
            )
        setattr(prepared, part, dataset.add_column("ref_logps", values.tolist()))
    log.info("reference: log-probs precomputed for %d layers; no reference model in memory", len(layers))
    return PrecomputedReference()
