"""``attnkit generate``: continue a prompt with a GPT checkpoint, streaming the text.

    attnkit generate --model runs/char --prompt "ROMEO:" --max-new-tokens 200 --top-k 50
    attnkit generate --model hf-gpt2-dir --prompt "Hello" --temperature 0 --stop "\\n\\n"
    attnkit generate --model runs/bpe --prompt "To be" --prompt "Once upon" --seed 1

The checkpoint is an attnkit directory (``attnkit pretrain --out``) or a Hugging Face GPT-2
directory; it needs a tokenizer. One prompt is streamed token by token as it is generated;
several prompts are decoded together as one batch and printed one after the other.

``attnkit sample`` is the same command with the defaults the old ``sample`` had
(``--max-new-tokens 300 --top-k 200 --seed 1337``).
"""

from __future__ import annotations

import argparse
import sys

from attnkit.cli.types import add_device_args, device_and_dtype, positive_int


def generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a checkpoint directory: attnkit (pretrain --out) or HF GPT-2",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        help="text to continue; repeat for a batch (default: a newline)",
    )
    parser.add_argument(
        "--max-new-tokens",
        "--tokens",
        dest="max_new_tokens",
        type=positive_int,
        default=100,
        metavar="N",
        help="new tokens per prompt (default 100)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="0 = greedy; otherwise sampling temperature (default 0.8)",
    )
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: smallest set of mass >= p")
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 discourages tokens already in the text (default 1: off)",
    )
    parser.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop a prompt's output once it contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--eos-id",
        type=int,
        action="append",
        metavar="ID",
        help="token id that ends a prompt's output (repeatable)",
    )
    parser.add_argument("--seed", type=int, help="seed for sampling (default: fresh randomness)")
    parser.add_argument(
        "--context",
        choices=("slide", "error"),
        default="slide",
        help="past the model's context: drop the oldest half and go on (slide, "
        "default) or stop with an error",
    )
    add_device_args(parser)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence every step (slow; for checking)",
    )


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    """``generate``'s options with the defaults of the old ``sample`` command."""
    generate_arguments(parser)
    parser.set_defaults(max_new_tokens=300, top_k=200, seed=1337)
    parser.epilog = (
        "the same as 'attnkit generate', with --max-new-tokens 300 --top-k 200 --seed 1337"
    )


def generate_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import load
    from attnkit.generation import stream
    from attnkit.models.gpt import GPT

    device, dtype = device_and_dtype(args)
    model = load(args.model, device=device, dtype=dtype)
    if not isinstance(model, GPT):
        raise ValueError(
            f"--model {args.model!r} is a {model.config.arch!r} model; 'generate' "
            f"needs a GPT checkpoint"
        )
    tok = model.meta.tokenizer
    if tok is None:
        raise ValueError(
            f"--model {args.model!r} has no tokenizer (tokenizer.json, or vocab.json"
            f" + merges.txt); 'generate' needs one to read the prompt"
        )
    prompts = args.prompt or ["\n"]
    events = stream(
        model,
        prompts if len(prompts) > 1 else prompts[0],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        eos_token_id=args.eos_id,
        seed=args.seed,
        use_cache=not args.no_cache,
        context=args.context,
    )
    out = sys.stdout
    if len(prompts) == 1:
        out.write(prompts[0])
        out.flush()
        for event in events:
            out.write(event.text or "")
            out.flush()
        out.write("\n")
        return 0
    texts = list(prompts)
    for event in events:
        texts[event.row] += event.text or ""
    for i, text in enumerate(texts):
        if i:
            out.write("\n" + "-" * 40 + "\n")
        out.write(text)
    out.write("\n")
    return 0
