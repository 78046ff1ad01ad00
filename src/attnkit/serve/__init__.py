"""An HTTP server with the OpenAI API for attnkit models (FastAPI + uvicorn, the ``[serve]``
extra): ``/v1/embeddings`` for encoders, ``/v1/completions`` and ``/v1/chat/completions`` for
GPTs, ``/v1/models`` and ``/health``.

    >>> from attnkit.serve import Limits, load_services, start
    >>> limits = Limits()
    >>> running = start(load_services(["minilm"], limits), limits)      # a background thread
    >>> client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused")
    >>> client.embeddings.create(model="minilm", input=["a text"]).data[0].embedding
    >>> running.stop()

One module per job: :mod:`~attnkit.serve.limits` (the caps), :mod:`~attnkit.serve.batching`
(the bounded queue and the worker thread that owns a model), :mod:`~attnkit.serve.embeddings`
and :mod:`~attnkit.serve.completions` (what a request becomes, and a batch of them),
:mod:`~attnkit.serve.schemas` (request bodies), :mod:`~attnkit.serve.errors` (OpenAI-style
errors), :mod:`~attnkit.serve.app` (routes, key and size checks) and
:mod:`~attnkit.serve.server` (loading models, running uvicorn).
"""

from attnkit.serve.limits import Limits
from attnkit.serve.server import RunningServer, load_services, model_id, serve, start

__all__ = ["Limits", "RunningServer", "load_services", "model_id", "serve", "start"]
