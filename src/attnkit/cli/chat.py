"""``attnkit chat``: an interactive conversation with a GPT checkpoint, one KV cache for all
of it.

    attnkit chat --model runs/char --max-new-tokens 200 --temperature 0.8 --top-k 50
    attnkit chat --model hf-gpt2-dir --system "A conversation." --stop "\\n\\n" --seed 1

Each line typed is one turn: the line and a newline (``--turn-end``) are appended to the
conversation and the model's reply streams after it. Only the new tokens go through the model:
the cache holds everything before (:class:`attnkit.generation.chat.ChatSession`). When the
conversation and a reply no longer fit in the model's context, the oldest tokens are dropped
(the ``--system`` text stays) and a line on stderr says how many.

Commands: ``/reset`` starts the conversation again, ``/exit`` (or Ctrl-D) leaves. Ctrl-C
during a reply stops the reply; at the prompt it leaves (status 130).
"""

from __future__ import annotations

import argparse
import sys

from attnkit.cli.types import add_device_args, device_and_dtype, non_negative_int, positive_int

COMMANDS = ("/reset", "/exit")


def chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a GPT checkpoint directory: attnkit or HF GPT-2"
    )
    parser.add_argument("--system", help="text that opens the conversation (kept when it slides)")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=128,
        metavar="N",
        help="tokens per reply at most (default 128)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="0 = greedy; otherwise sampling temperature (default 0.8)",
    )
    parser.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: smallest set of mass >= p")
    parser.add_argument("--seed", type=non_negative_int, help="seed for the whole conversation")
    parser.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="end a reply once it contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--turn-end",
        default="\n",
        metavar="TEXT",
        help="appended to each line typed before the model replies (default: a newline)",
    )
    parser.add_argument("--prompt", default="> ", help="what the input line starts with")
    add_device_args(parser)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def chat_command(args: argparse.Namespace) -> int:
    from attnkit.checkpoints import load
    from attnkit.generation.chat import ChatSession
    from attnkit.models.gpt import GPT

    device, dtype = device_and_dtype(args)
    model = load(args.model, device=device, dtype=dtype)
    if not isinstance(model, GPT):
        raise ValueError(
            f"--model {args.model!r} is a {model.config.arch!r} model; 'chat' needs a GPT"
        )
    if model.meta.tokenizer is None:
        raise ValueError(f"--model {args.model!r} has no tokenizer; 'chat' needs one")
    chat = ChatSession(
        model,
        system=args.system,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=args.stop,
        seed=args.seed,
    )
    _say(
        f"attnkit chat: {args.model} on {device} ({chat.limit} tokens of context); "
        f"/reset starts again, /exit or Ctrl-D leaves"
    )
    out = sys.stdout
    while True:
        try:
            line = input(args.prompt)
        except EOFError:  # Ctrl-D
            out.write("\n")
            out.flush()
            return 0
        command = line.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            chat.reset()
            _say("[conversation reset]")
            continue
        if command.startswith("/"):
            _say(f"[unknown command {command!r}; expected one of {', '.join(COMMANDS)}]")
            continue
        if not line:
            continue
        try:
            reply = chat.send(line + args.turn_end)
        except ValueError as e:  # a turn the tokenizer cannot read: say so, go on
            _say(f"[{e}]")
            continue
        if reply.dropped:
            _say(f"[context full: dropped the oldest {reply.dropped} tokens]")
        text = ""
        try:
            for token in reply.tokens:
                text += token.text or ""
                out.write(token.text or "")
                out.flush()
        except KeyboardInterrupt:  # stops this reply; the conversation keeps what was made
            out.write("\n")
            _say("[reply interrupted]")
            continue
        if not text.endswith("\n"):
            out.write("\n")
        out.flush()
