"""How a model's preference pairs become rows, and what its forward gets: the one place that decides.

Two layouts (`dpolab.modeling.collate.PairCollator` builds either):

- **packed**: one row per pair, `prompt + chosen + rejected`, the prompt computed once. The rejected
  completion restarts its positions at the prompt's end and a 4-D mask stops each completion from
  seeing the other (`dpolab.modeling.attention.segment_attention_mask`). The model must take
  `position_ids` and a 4-D mask: additive under sdpa and eager, a FlexAttention `BlockMask` under
  flex_attention (`segment_block_mask`, no `(B, T, T)` tensor); every layer must read that mask.
  Several pairs may share a row (`data.pack_tokens`): the same mask keeps each to itself.
- **separate**: `prompt + chosen` and `prompt + rejected` as two right-padded rows with a 2-D
  attention mask, as TRL batches them: for the models that cannot take the packed row (ALiBi,
  positions derived from the attention mask, attention without a 4-D mask, recurrent layers).
  Still completion-only through the head.

    choose_attention(model, requested)   at load: the attention implementation (auto: the first of
                                         the model's default, sdpa, eager that packs pairs; never
                                         flex_attention, which is asked for by name)
    flex_attention_problem(config, device)  why a model cannot train under flex_attention there
    row_layout(model) -> RowLayout       a screen of the forward's signature and the config, then one
                                         synthetic pair scored packed and apart (cached per model)
    RowLayout.model_inputs(batch, dtype) the forward's inputs for a collated batch
    router_token_weights(batch)          how many of TRL's rows hold each token (MoE aux loss)
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dpolab.modeling.anatomy import anatomy, eval_mode, logprobs_agree, unwrap
from dpolab.modeling.attention import (
    positions_from_attention_mask,
    segment_attention_mask,
    segment_block_mask,
)
from dpolab.modeling.probe import own_logprobs, text_config

# the implementations that take dpolab's 4-D mask: additive (sdpa, eager) or a BlockMask (flex)
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention")
MASKED_LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class RowLayout:
    """The row layout of one model: packed pair rows or separate chosen and rejected rows."""

    model: str  # the model's class name
    packed: bool
    attention: str  # the attention implementation the model runs
    reason: str  # why it is packed or not (for the log)
    position_ids: bool  # its forward takes position ids
    # the mask of each layer type (Hugging Face `layer_types`): its sliding window, None for full
    # attention; one entry ("") when every layer reads the same mask
    windows: tuple[tuple[str, int | None], ...] = (("", None),)

    def describe(self) -> str:
        rows = "one row per pair, the prompt once" if self.packed else "chosen and rejected in separate rows"
        return f"{self.model}: attention {self.attention}; {rows} ({self.reason})"

    def model_inputs(self, batch: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
        """`input_ids`, `attention_mask` (2-D, 4-D, or a 4-D mask per layer type; a `BlockMask`
        under flex_attention) and, where the forward takes them, `position_ids`, for a batch of
        either layout."""
        inputs: dict[str, Any] = {"input_ids": batch["input_ids"]}
        segment_ids = batch.get("segment_ids")
        if segment_ids is not None:
            if not self.packed:
                raise ValueError(
                    f"{self.model} cannot take packed pair rows ({self.reason}); collate with "
                    f"PairCollator(packed=False)"
                )
            positions = batch["position_ids"]
            width = segment_ids.shape[1]
            masks: dict[int | None, torch.Tensor] = {}
            by_type = {}
            for layer_type, window in self.windows:
                window = window if window is not None and window < width else None  # wider than the row
                if window not in masks and self.attention == "flex_attention":
                    masks[window] = segment_block_mask(segment_ids, position_ids=positions, window=window)
                elif window not in masks:
                    masks[window] = segment_attention_mask(
                        segment_ids, dtype, position_ids=positions, window=window
                    )
                by_type[layer_type] = masks[window]
            inputs["attention_mask"] = by_type[self.windows[0][0]] if len(by_type) == 1 else by_type
            inputs["position_ids"] = positions
            return inputs
        attention_mask = batch["attention_mask"]
        inputs["attention_mask"] = attention_mask
        if self.position_ids:
            positions = batch.get("position_ids")
            inputs["position_ids"] = (
                positions if positions is not None else positions_from_attention_mask(attention_mask)
            )
        return inputs


def router_token_weights(batch: dict[str, Any]) -> torch.Tensor:
    """`(B, T)` weight of each token in the router's load-balancing loss: the number of TRL's rows
    (`prompt + chosen`, `prompt + rejected`) that hold it. In a packed row a prompt token stands for
    two, a completion token for one (however many pairs share the row); in separate rows, and in
    SFT's sequences, every real token for one; padding for none."""
    segment_ids = batch.get("segment_ids")
    if segment_ids is None:
        return batch["attention_mask"].float()
    real = segment_ids > 0
    prompt = real & ((segment_ids - 1).remainder(3) == 0)
    return real.float() + prompt.float()


def flex_attention_problem(config, device: torch.device | str) -> str | None:
    """Why a model with this config cannot train under flex_attention on `device`, or None: torch's
    FlexAttention has no backward on a CPU, transformers has it for some model classes only, and
    refuses attention dropout with it."""
    import transformers
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    device = torch.device(device)
    if device.type == "cpu":
        return (
            f"torch {torch.__version__}'s FlexAttention has no backward on a CPU: train on a GPU, or use "
            f"model.attn_implementation sdpa"
        )
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_flex_attn", False):
        return f"transformers {transformers.__version__} has no FlexAttention for {model_class.__name__}: use sdpa"
    text = text_config(config).to_dict()
    dropout = {k: v for k, v in text.items() if "att" in k and "drop" in k and isinstance(v, float) and v > 0}
    if dropout:
        key, value = next(iter(dropout.items()))
        return f"transformers' flex_attention takes no attention dropout ({key} {value:g}): use sdpa"
    return None


def _takes_position_ids(causal_lm: nn.Module) -> bool:
    """Whether the base model's forward names `position_ids` and the causal LM passes them on."""
    base = getattr(causal_lm, "base_model", causal_lm)
    base_params = inspect.signature(type(base).forward).parameters
    top = inspect.signature(type(causal_lm).forward).parameters
    passes = "position_ids" in top or any(p.kind is p.VAR_KEYWORD for p in top.values())
    return "position_ids" in base_params and passes


def _uses_alibi(config) -> bool:
    """ALiBi declared in the config (Falcon's `alibi`, MPT's `attn_config.alibi`, a position
    embedding type "alibi"): its biases come from the attention mask, not from position ids."""

    def walk(value) -> bool:
        if isinstance(value, dict):
            return any(("alibi" in str(k) and v is True) or walk(v) for k, v in value.items())
        return value == "alibi"

    return walk(text_config(config).to_dict())


def _mask_windows(config) -> tuple[tuple[tuple[str, int | None], ...] | None, str | None]:
    """The sliding window of each layer type, or why some layers cannot read a 4-D mask."""
    text = text_config(config)
    window = getattr(text, "sliding_window", None)
    if not (isinstance(window, int) and window > 0) or getattr(text, "use_sliding_window", True) is False:
        window = None
    types = getattr(text, "layer_types", None)
    if not types:
        return (("", window),), None
    kinds = sorted(set(types))
    other = [k for k in kinds if k not in MASKED_LAYER_TYPES]
    if other:
        return None, f"its {', '.join(other)} layers do not read the 4-D attention mask"
    return tuple((k, window if k == "sliding_attention" else None) for k in kinds), None


def _screen(causal_lm: nn.Module) -> tuple[list[RowLayout], bool]:
    """The layouts the forward's signature and the config allow, the preferred first (packed rows,
    then separate rows with dpolab's positions, then separate rows with the model's own); whether
    another attention implementation could allow packed rows."""
    config = causal_lm.config
    name = type(causal_lm).__name__
    attention = getattr(config, "_attn_implementation", None) or "eager"
    windows, problem = _mask_windows(config)
    windows = windows or (("", None),)

    def layout(packed: bool, reason: str, positions: bool = True) -> RowLayout:
        return RowLayout(name, packed, attention, reason, positions, windows)

    own = layout(False, "its own positions: it does not count them from 0", positions=False)
    if not _takes_position_ids(causal_lm):
        return [layout(False, "its forward takes no position_ids", positions=False)], False
    apart = layout(False, "")
    if _uses_alibi(config):
        return [
            dataclasses.replace(apart, reason="it uses ALiBi, whose biases come from the attention mask"),
            own,
        ], False
    if problem is not None:
        return [dataclasses.replace(apart, reason=problem), own], False
    if attention not in PACKING_ATTENTION:
        return [dataclasses.replace(apart, reason=f"{attention} attention takes no 4-D mask"), own], True
    return [layout(True, "checked against its own forward"), apart, own], True


def _partitioned(causal_lm: nn.Module) -> bool:
    from dpolab.modeling.head import _zero3_partitioned

    get = getattr(causal_lm, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head is not None and _zero3_partitioned(head.weight)


def _synthetic_pair(vocab: int) -> dict[str, list[int]]:
    ids = [(3 + 7 * i) % vocab for i in range(12)]
    return {"prompt_ids": ids[:5], "chosen_ids": ids[5:9], "rejected_ids": ids[9:]}


def _gap(causal_lm: nn.Module, layout: RowLayout) -> str | None:
    """None when a synthetic pair's completion log-probs, collated and fed as `layout` says, equal
    those of the model's own forward on each `prompt + completion` alone; else how they differ."""
    from dpolab.modeling.collate import PairCollator  # collate → logprobs → layout

    head = anatomy(causal_lm).head
    dtype, device = head.weight.dtype, head.weight.device
    pair = _synthetic_pair(head.out_features)
    batch = PairCollator(0, packed=layout.packed)([pair])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    rows = "a pair row's" if layout.packed else "separate rows'"
    with torch.no_grad(), eval_mode(causal_lm):
        try:
            expected = torch.cat(
                [own_logprobs(causal_lm, pair["prompt_ids"], pair[k]) for k in ("chosen_ids", "rejected_ids")]
            )
        except Exception as err:  # an arbitrary model's forward under this attention
            return f"its own forward fails under {layout.attention} attention ({type(err).__name__})"
        try:
            output = causal_lm(**layout.model_inputs(batch, dtype), use_cache=False)
        except Exception as err:  # an arbitrary model's forward on dpolab's inputs
            return f"its forward fails on {'a pair row' if layout.packed else 'separate rows'} ({type(err).__name__})"
    logits = output.logits if hasattr(output, "logits") else output[0]
    logp = torch.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
    got = logp[batch["target_positions"], batch["target_tokens"]]
    if logprobs_agree(got, expected, dtype):
        return None
    return f"{rows} log-probs differ from its own forward's by {(got.double() - expected.double()).abs().max():.2g}"


# per model: its layout and whether another attention implementation might pack its pairs
_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, tuple[RowLayout, bool]] = weakref.WeakKeyDictionary()


def row_layout(model: nn.Module) -> RowLayout:
    """The row layout of a (possibly wrapped) model for its current attention implementation."""
    return _layout(unwrap(model))[0]


def _layout(causal_lm: nn.Module) -> tuple[RowLayout, bool]:
    """The first layout the screen allows that gives the model's own log-probs on a synthetic pair
    (cached per model and attention implementation); whether another attention could pack."""
    attention = getattr(causal_lm.config, "_attn_implementation", None) or "eager"
    cached = _LAYOUTS.get(causal_lm)
    if cached is not None and cached[0].attention == attention:
        return cached
    candidates, other_attention_may_help = _screen(causal_lm)
    chosen = candidates[0]
    if _partitioned(causal_lm):  # DeepSpeed ZeRO-3: no forward outside its engine
        chosen = dataclasses.replace(chosen, reason=f"{chosen.reason or 'screened'}; not checked: ZeRO-3")
    else:
        problems = []
        for candidate in candidates:
            problem = _gap(causal_lm, candidate)
            if problem is None:
                reason = "; ".join([*problems[:1], *([candidate.reason] if candidate.reason else [])])
                chosen = dataclasses.replace(candidate, reason=reason) if problems else candidate
                break
            problems.append(problem)
        else:  # nothing reproduces the model's own forward: say why, on the plainest layout
            screened = [] if candidates[0].packed else [candidates[0].reason]
            chosen = dataclasses.replace(candidates[-1], reason="; ".join([*screened, *problems]))
    _LAYOUTS[causal_lm] = (chosen, other_attention_may_help and not chosen.packed)
    return _LAYOUTS[causal_lm]


def choose_attention(model: nn.Module, requested: str = "auto") -> RowLayout:
    """The row layout, after choosing the attention implementation: `requested` as loaded, or
    with "auto" the first of the model's default, sdpa and eager under which pairs pack."""
    causal_lm = unwrap(model)
    first, retry = _layout(causal_lm)
    if first.packed or requested != "auto" or not retry:
        return first
    candidates = ["sdpa"] if getattr(causal_lm, "_supports_sdpa", False) else []
    for attention in [*candidates, "eager"]:
        if attention == first.attention:
            continue
        try:
            causal_lm.set_attn_implementation(attention)
        except (ValueError, AttributeError, NotImplementedError):
            continue
        layout = row_layout(causal_lm)
        if layout.packed:
            return layout
    causal_lm.set_attn_implementation(first.attention)
    return row_layout(causal_lm)
