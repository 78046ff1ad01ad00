"""``attnkit serve``: the OpenAI API for attnkit models over HTTP (needs ``attnkit[serve]``).

    attnkit serve --model minilm                          # /v1/embeddings on 127.0.0.1:8000
    attnkit serve --model runs/char --port 9000 --api-key secret
    attnkit serve --model minilm --model runs/bpe         # an encoder and a GPT at once

Then point any OpenAI client at it: ``OpenAI(base_url="http://127.0.0.1:8000/v1",
api_key="secret")``. It binds to loopback unless ``--host`` says otherwise; see
:mod:`attnkit.serve` for the routes, the batching and the limits.
"""

from __future__ import annotations

import argparse
import sys

from attnkit.cli.types import (
    UsageError,
    add_device_args,
    device_and_dtype,
    non_negative_int,
    positive_float,
    positive_int,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="a known name (minilm) or a checkpoint directory: a BERT-family encoder serves "
        "/v1/embeddings, a GPT /v1/completions (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument(
        "--port", type=non_negative_int, default=8000, help="port (default 8000; 0: a free one)"
    )
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' (default: $ATTNKIT_API_KEY, else no key)",
    )
    parser.add_argument(
        "--max-body-bytes", type=positive_int, default=2 << 20, help="largest request body"
    )
    parser.add_argument(
        "--max-inputs", type=positive_int, default=256, help="texts or prompts per request"
    )
    parser.add_argument(
        "--max-input-tokens",
        type=positive_int,
        help="tokens per input or prompt (default: what the model reads)",
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, default=512, help="largest max_tokens of a completion"
    )
    parser.add_argument(
        "--queue-size", type=positive_int, default=64, help="requests waiting at most (then 429)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a lone request waits for others to batch with (default 5)",
    )
    parser.add_argument(
        "--request-timeout",
        type=positive_float,
        default=30.0,
        help="seconds a request may wait for the model (then 503)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    add_device_args(parser)


def serve_command(args: argparse.Namespace) -> int:
    import os

    from attnkit.serve import Limits, load_services, serve
    from attnkit.serve.server import bind

    if args.batch_wait_ms < 0:
        raise UsageError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    device, dtype = device_and_dtype(args)  # before the socket: a bad one binds nothing
    api_key = args.api_key or os.environ.get("ATTNKIT_API_KEY") or None
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs,
        max_input_tokens=args.max_input_tokens,
        max_tokens=args.max_tokens,
        default_max_tokens=min(16, args.max_tokens),
        queue_size=args.queue_size,
        batch_wait_ms=args.batch_wait_ms,
        request_timeout_s=args.request_timeout,
    )
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    services = load_services(args.model, limits, device, dtype)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    routes = ", ".join(f"{name} ({s.kind})" for name, s in services.items())
    print(f"attnkit serve: http://{shown}:{port}/v1 serving {routes}", file=sys.stderr, flush=True)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"attnkit serve: warning: listening on {args.host} without --api-key",
            file=sys.stderr,
            flush=True,
        )
    serve(services, limits, sock, api_key, args.log_level)
    return 0
