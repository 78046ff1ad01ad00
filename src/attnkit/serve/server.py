"""Loading the models to serve, and running the server (uvicorn) in the foreground or in a
background thread (:func:`start`, for tests and benchmarks)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnkit.serve.app import Service, create_app
from attnkit.serve.completions import CompletionService
from attnkit.serve.embeddings import EmbeddingService
from attnkit.serve.limits import Limits

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["RunningServer", "load_services", "model_id", "serve", "start"]

logger = logging.getLogger(__name__)

# connections handled at once; past it uvicorn answers 503 itself (a last line of defence:
# the request queue refuses work long before)
MAX_CONNECTIONS = 1024
# seconds an idle keep-alive connection stays open
KEEP_ALIVE_S = 30


def model_id(name_or_dir: str | os.PathLike[str]) -> str:
    """The id a model is served under: a known name as given, a directory by its name.

    Args:
        name_or_dir: a known model name or a model directory.

    Examples:
        >>> model_id("minilm")
        'minilm'
    """
    path = Path(name_or_dir)
    return path.resolve().name if path.is_dir() else str(name_or_dir)


def load_services(
    models: Sequence[str | os.PathLike[str]],
    limits: Limits,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Service]:
    """One service per model: an encoder (BERT family) for embeddings, a GPT for
    completions, on ``device`` with weights in ``dtype`` (default: as loaded, on the CPU).
    The services already started are closed when one fails.

    Args:
        models: known model names or model directories.
        limits: the server's caps.
        device: the device to load the models on.
        dtype: the weights' dtype.

    Returns:
        The services by model id (:func:`model_id`).

    Raises:
        ValueError: two models with the same id, or a model that is neither a GPT nor a
            BERT-family encoder.

    Examples:
        >>> services = load_services(["minilm", "runs/char"], Limits())
        >>> sorted(services)
        ['char', 'minilm']
    """
    from attnkit.checkpoints import load
    from attnkit.models.bert import Bert
    from attnkit.models.gpt import GPT
    from attnkit.tasks.sentence import Encoder

    services: dict[str, Service] = {}
    try:
        for name in models:
            ident = model_id(name)
            if ident in services:
                raise ValueError(
                    f"two models would be served as {ident!r}; expected distinct names"
                )
            model = load(name, device=device, dtype=dtype)
            if isinstance(model, GPT):
                services[ident] = CompletionService(model, ident, limits)
            elif isinstance(model, Bert):
                services[ident] = EmbeddingService(Encoder(model, device=device), ident, limits)
            else:
                raise ValueError(
                    f"{name}: a {type(model).__name__} cannot be served; expected a GPT "
                    f"(completions) or a BERT-family encoder (embeddings)"
                )
    except BaseException:
        close(services)
        raise
    return services


def close(services: Mapping[str, Service]) -> None:
    for s in services.values():
        s.queue.close()


def _config(app: Any, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=5,
        # longer than clients keep an idle connection (httpx, under the openai client: 5 s), so
        # the client closes it first: with equal times a request sent just as the server
        # closes finds the connection gone
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="off",
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    services: Mapping[str, Service],
    limits: Limits,
    sock: socket.socket,
    api_key: str | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM and drains), then stop the
    workers.

    Args:
        services: the services by model id.
        limits: the server's caps.
        sock: a listening socket (:func:`bind`).
        api_key: the key requests must carry (None: no key needed).
        log_level: uvicorn's log level.

    Examples:
        >>> serve(load_services(["minilm"], limits), limits, bind("127.0.0.1", 8000))
    """
    import uvicorn

    server = uvicorn.Server(_config(create_app(services, limits, api_key), log_level))
    try:
        server.run(sockets=[sock])
    finally:
        close(services)


@dataclass
class RunningServer:
    """A server started by :func:`start`: its ``url`` (``http://host:port``) and :meth:`stop`.

    Examples:
        >>> running = start(load_services(["minilm"], limits), limits)
        >>> running.url  # e.g. 'http://127.0.0.1:43123'
    """

    url: str
    server: Any
    thread: threading.Thread
    services: Mapping[str, Service]

    def stop(self) -> None:
        """Ask uvicorn to exit, wait up to 15 s for its thread, then stop the workers.

        Examples:
            >>> running.stop()
        """
        self.server.should_exit = True
        self.thread.join(15)
        close(self.services)


def start(
    services: Mapping[str, Service],
    limits: Limits,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
) -> RunningServer:
    """Serve ``services`` from a background thread; returns once it accepts connections.

    Args:
        services: the services by model id.
        limits: the server's caps.
        host: the address to listen on.
        port: the port (0: a free one).
        api_key: the key requests must carry (None: no key needed).

    Raises:
        RuntimeError: the server did not start within 30 s.

    Examples:
        >>> running = start(load_services(["minilm"], limits), limits)
    """
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(_config(create_app(services, limits, api_key), "warning"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="attnkit-serve-http"
    )
    thread.start()
    until = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > until:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return RunningServer(f"http://{shown}:{bound[1]}", server, thread, services)
