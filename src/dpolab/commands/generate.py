"""`dpolab generate`: sample answers to a file of prompts (resumable)."""

from __future__ import annotations

import argparse
import sys

from dpolab.commands import add_model_options, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample answers to prompts (temperature 0.3, repetition penalty 1.1; batched, seeded, resumable)",
        description="Writes one JSONL row per prompt: index, row, prompt, completion, and the prompt row's other "
        "fields. Re-running on the same output continues an interrupted run.",
    )
    p.add_argument("--model", required=True, help="model directory (or adapter directory) or hub id")
    p.add_argument(
        "--prompts", required=True, help="JSONL/JSON/Parquet with 'prompt' (text or messages), or pairs"
    )
    p.add_argument("--output", required=True, help="answer file (JSONL)")
    p.add_argument("--prompt-field", default="prompt", help="field holding the prompt (default: prompt)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.3, help="0 for greedy decoding")
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--top-p", type=float, help="nucleus sampling (default: the model's generation config)")
    p.add_argument("--top-k", type=int, help="top-k sampling (default: the model's generation config)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-prompt-length", type=int, help="keep only the last N prompt tokens")
    p.add_argument(
        "--chat-template",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto: messages through the tokenizer's chat template, text prompts as training tokenises "
        "them (default); always: text prompts too, as one user message; never: messages as plain text",
    )
    p.add_argument("--limit", type=positive_int, help="answer only the first N prompts")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dpolab.evaluation.answer_files import load_prompts
    from dpolab.evaluation.generate import GenerationSettings, generate_answers
    from dpolab.modeling.loading import load_for_inference

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
        top_p=args.top_p,
        top_k=args.top_k,
        batch_size=args.batch_size,
        seed=args.seed,
        max_prompt_length=args.max_prompt_length,
        chat_template=args.chat_template,
    )
    settings.check()
    prompts = load_prompts(args.prompts, prompt_field=args.prompt_field, limit=args.limit)
    model, tokenizer = load_for_inference(args.model, device=args.device, dtype=args.dtype)

    def progress(done: int, total: int) -> None:
        print(f"answered {done}/{total}", file=sys.stderr, flush=True)

    report = generate_answers(
        model,
        tokenizer,
        prompts,
        args.output,
        settings=settings,
        model_name=args.model,
        overwrite=args.overwrite,
        on_batch=progress,
    )
    resumed = f" ({report.resumed} were already there)" if report.resumed else ""
    print(f"{report.generated} answers written to {report.output}{resumed}")
    return 0
