"""Which Hugging Face causal LMs dpolab trains with the exact loss: every class in transformers'
auto mapping (`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), built tiny from its own config and checked.

    python -m dpolab.modeling.coverage --write docs/models.md      # the page, regenerated
    python -m dpolab.modeling.coverage llama bloom                 # a few model types, printed

For each model type: a tiny model (2 layers, hidden 32, vocabulary 128, random weights) is built
from its config (`dpolab.testing.tiny_config`), its parts found (`anatomy`), its attention and row
layout chosen (`choose_attention`), then dpolab's final-layer log-probs of two pairs, in that
layout and in separate rows, are compared with the model's own `forward().logits`, and layer 1
with the naive logit lens (the model's own forward with the later blocks bypassed).
`tests/modeling/test_coverage.py` checks that docs/models.md is what this produces.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

TOLERANCE = 1e-4  # per token, fp32
MAX_PARAMETERS = 4_000_000  # a "tiny" config larger than this has sizes tiny_config does not know
VOCAB = 128
PAGE = Path("docs/models.md")
COLUMNS = ("model_type", "class", "dpolab", "rows", "attention", "logit transform", "intermediate layers")


@dataclass(frozen=True)
class Coverage:
    """What dpolab makes of one model type."""

    model_type: str
    model_class: str
    status: str  # "exact", "refused" or "not built"
    rows: str = ""  # "pair" (one row per pair) or "separate: why"
    attention: str = ""
    transform: str = ""
    lens: str = ""  # "yes" or "no: why"
    detail: str = ""  # why refused / not built

    def cells(self) -> tuple[str, ...]:
        status = self.status if not self.detail else f"{self.status}: {self.detail}"
        return (
            self.model_type,
            self.model_class,
            status,
            self.rows,
            self.attention,
            self.transform,
            self.lens,
        )

    @classmethod
    def from_cells(cls, cells: tuple[str, ...]) -> Coverage:
        """The row a page's table line was rendered from (`cells` inverted)."""
        model_type, model_class, status, rows, attention, transform, lens = cells
        status, _, detail = status.partition(": ")
        return cls(model_type, model_class, status, rows, attention, transform, lens, detail)


def _line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line.replace("|", "/")[:160]


def _pairs(vocab: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    return [
        {"prompt_ids": ids(7), "chosen_ids": ids(5), "rejected_ids": ids(3)},
        {"prompt_ids": ids(3), "chosen_ids": ids(2), "rejected_ids": ids(6)},
    ]


def _gap(model, pairs, packed: bool, layer: int | None = None) -> float:
    """The largest per-token gap between dpolab's log-probs (final layer, or `layer` against the
    naive logit lens) and the model's own forward, for `pairs` collated packed or apart."""
    from dpolab.modeling.collate import PairCollator, batch_targets
    from dpolab.modeling.logprobs import layer_logprobs
    from dpolab.modeling.probe import own_logprobs
    from dpolab.testing import blocks_bypassed

    batch = PairCollator(pad_token_id=0, packed=packed)(pairs)
    layers = None if layer is None else [layer]
    with torch.no_grad():
        ours = layer_logprobs(model, batch, layers, targets=batch_targets(batch)).token_logps[0]
        sequences = [(p["prompt_ids"], c) for p in pairs for c in (p["chosen_ids"], p["rejected_ids"])]
        if layer is None:
            theirs = torch.cat([own_logprobs(model, p, c) for p, c in sequences])
        else:
            with blocks_bypassed(model, layer):
                theirs = torch.cat([own_logprobs(model, p, c) for p, c in sequences])
    return (ours.double() - theirs.double()).abs().max().item()


def check(model_type: str, model_class: str) -> Coverage:
    """Build a tiny `model_type` and check dpolab's log-probs of it (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from dpolab.errors import DpolabError
    from dpolab.modeling.anatomy import anatomy
    from dpolab.modeling.layout import choose_attention
    from dpolab.modeling.probe import probe_inputs
    from dpolab.testing import tiny_config

    def result(status: str, detail: str = "", **kwargs) -> Coverage:
        return Coverage(model_type, model_class, status, detail=detail, **kwargs)

    try:
        config = tiny_config(model_type, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4)
        with torch.device("meta"):
            size = sum(
                t.numel() for m in [AutoModelForCausalLM.from_config(config)] for t in m.state_dict().values()
            )
    except Exception as err:  # an arbitrary family's config or constructor
        return result("not built", f"no tiny config ({_line(err)})")
    if size > MAX_PARAMETERS:
        return result(
            "not built", f"{size / 1e6:.0f}M parameters at tiny sizes (sizes tiny_config does not set)"
        )
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():  # the model's own forward on the probe's inputs, before dpolab's own
            model(**probe_inputs(model))
    except Exception as err:
        return result("not built", _line(err))
    try:
        parts = anatomy(model)
        layout = choose_attention(model, "auto")
    except DpolabError as err:
        return result("refused", str(err).removeprefix(f"{type(model).__name__}: "))
    except Exception as err:  # a forward that fails in a way dpolab does not foresee
        return result("refused", _line(err))
    rows = "pair" if layout.packed else f"separate: {layout.reason}"
    done = {"rows": rows, "attention": layout.attention, "transform": parts.logits.describe()}
    pairs = _pairs(VOCAB)
    try:
        gaps = [_gap(model, pairs, packed) for packed in {layout.packed, False}]
    except Exception as err:
        return result("refused", f"its forward fails on dpolab's rows ({_line(err)})", **done)
    if max(gaps) > TOLERANCE:
        return result("refused", f"final-layer log-probs differ from its forward by {max(gaps):.2g}", **done)
    lens = "yes"
    if parts.lens_problem is not None:
        lens = f"no: {parts.lens_problem}"
    elif parts.num_layers < 2:
        lens = "no: a single block"
    else:
        try:
            gap = _gap(model, pairs, layout.packed, layer=1)
            lens = "yes" if gap <= TOLERANCE else f"no: differs from the naive lens by {gap:.2g}"
        except Exception as err:
            lens = f"unverified: the naive lens cannot be taken here ({_line(err)})"
    return result("exact", lens=lens, **done)


def walk(model_types: list[str] | None = None) -> list[Coverage]:
    """`check` of every causal-LM model type in transformers' auto mapping (or of those given)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as MAPPING

    names = model_types or sorted(MAPPING)
    return [check(name, MAPPING[name]) for name in names]


def versions() -> str:
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__.split('+')[0]}"


def render(rows: list[Coverage], version: str) -> str:
    """docs/models.md from the walk's rows."""
    exact = [r for r in rows if r.status == "exact"]
    packed = [r for r in exact if r.rows == "pair"]
    separate = [r for r in exact if r.rows != "pair"]
    no_lens = [r for r in exact if r.lens.startswith("no")]
    unverified = [r for r in exact if r.lens.startswith("unverified")]
    refused = [r for r in rows if r.status == "refused"]
    unbuilt = [r for r in rows if r.status == "not built"]

    def names(group: list[Coverage]) -> str:
        return ", ".join(f"`{r.model_type}`" for r in group) or "none"

    def reasons(group: list[Coverage], text) -> list[str]:
        return [f"- `{r.model_type}` ({r.model_class}): {text(r)}" for r in group] or ["- none"]

    out = [
        "# Supported models",
        "",
        "dpolab finds a model's parts from the model itself (no table of families): its decoder blocks,",
        "the modules between the last block and the output head (the final norm, OPT's `project_out`),",
        "the head, what the model does to the head's output (Gemma 2/3's softcap, Cohere's `logit_scale`,",
        "Granite's `logits_scaling`) and a mixture-of-experts model's routers. Every run checks its first",
        "training pairs against the model's own forward before it trains (see",
        "[architecture.md](architecture.md)).",
        "",
        "This page is generated, not written: every causal-LM class of transformers' auto mapping",
        "(`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`) is built tiny from its own config (2 blocks, hidden 32,",
        "vocabulary 128, random weights) and dpolab's final-layer log-probs of two pairs, in the row",
        "layout dpolab chooses and in separate rows, are compared with the model's own",
        f"`forward().logits` (to {TOLERANCE:.0e} per token), and layer 1 with the naive logit lens (the".replace(
            "e-0", "e-"
        ),
        "model's forward with the later blocks bypassed). Regenerate it with",
        "",
        "```bash",
        "python -m dpolab.modeling.coverage --write docs/models.md",
        "```",
        "",
        f"Made with {version}; `tests/modeling/test_coverage.py` checks that it is what the code produces.",
        "",
        "## Summary",
        "",
        f"- **{len(exact)} of {len(rows)} model types train with the exact loss**: {len(packed)} with one row",
        f"  per pair (the prompt computed once), {len(separate)} with chosen and rejected in separate rows.",
        f"- **{len(refused)} refused**, each with one line naming the class and what is missing.",
        f"- **{len(unbuilt)} not built** from a tiny config here (a size or option the generic tiny config",
        "  does not set, or a package the model needs); not checked, so not claimed.",
        "",
        "## Fallbacks",
        "",
        "**Separate rows.** A pair is one row, `prompt + chosen + rejected`, the rejected completion",
        "restarting its positions at the prompt's end under a 4-D mask. A model that cannot take that",
        "row (positions from the attention mask, ALiBi, layers that read no 4-D mask, attention kernels",
        "without one) gets `prompt + chosen` and `prompt + rejected` as separate rows, still scored at the",
        "completion positions only; the log says so once:",
        "",
        *reasons(separate, lambda r: r.rows.removeprefix("separate: ")),
        "",
        "**Attention.** `model.attn_implementation: auto` (the default) keeps the model's default",
        "implementation when its pairs fit one row, else tries sdpa, then eager; `sdpa` or `eager` force one.",
        "",
        "**Intermediate layers** (the logit lens: final modules + shared head + logit transform) are",
        "refused, with the reason, for:",
        "",
        *reasons(no_lens, lambda r: r.lens.removeprefix("no: ")),
        "",
        f"and were not compared with the naive lens here for: {names(unverified)}.",
        "",
        "**Refused**:",
        "",
        *reasons(refused, lambda r: r.detail),
        "",
        f"**Not built at tiny sizes**: {names(unbuilt)}.",
        "",
        "## Every model type",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(r.cells()) + " |" for r in rows),
        "",
    ]
    return "\n".join(out)


def parse_rows(page: str) -> dict[str, tuple[str, ...]]:
    """The table of a rendered page: model_type -> its cells."""
    rows = {}
    for line in page.splitlines():
        if line.startswith("| ") and not line.startswith("| model_type"):
            cells = tuple(c.strip() for c in line.strip("|").split(" | "))
            rows[cells[0]] = cells
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpolab.modeling.coverage", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model_types", nargs="*", help="check only these (default: every one)")
    parser.add_argument("--write", type=Path, help="write the page here (docs/models.md)")
    args = parser.parse_args(argv)
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("dpolab").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    rows = walk(args.model_types or None)
    if args.write:
        args.write.write_text(render(rows, versions()), encoding="utf-8")
        print(f"{args.write}: {sum(r.status == 'exact' for r in rows)} of {len(rows)} exact")
    else:
        for r in rows:
            print(" | ".join(r.cells()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
