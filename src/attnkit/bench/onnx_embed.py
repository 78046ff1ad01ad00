"""The ONNX Runtime rows of ``attnkit bench embed``: the sentence-transformers model exported to
ONNX from its local directory, in float32 and dynamically quantized to int8, run through ONNX
Runtime with sentence-transformers' own preprocessing, ordering, pooling and normalisation.

sentence-transformers' ``backend="onnx"`` and ``export_dynamic_quantized_onnx_model`` go
through ``optimum-onnx``, whose releases require transformers < 4.58 (this project pins 5.24),
so this module does what they do with the pieces they call:

* export: ``torch.onnx.export`` of transformers' model loaded from the directory (inputs
  ``input_ids``, ``attention_mask``, ``token_type_ids``; output ``last_hidden_state``;
  batch and length dynamic; opset 17), as optimum's feature-extraction export;
* int8: ``onnxruntime.quantization.quantize_dynamic`` with the settings of optimum's
  ``AutoQuantizationConfig.avx2(is_static=False)``, which
  ``export_dynamic_quantized_onnx_model(model, "avx2")`` uses: uint8 asymmetric activations,
  uint8 symmetric weights, per channel, full range, MatMul and Add nodes;
* inference: an ``onnxruntime.InferenceSession`` on the CPU provider with ONNX Runtime's
  default graph optimisations (as optimum's ORTModel) and torch's thread count, fed
  batches that ``SentenceTransformer.preprocess`` made, in sentence-transformers' order
  (longest text first), its token embeddings pooled and normalised by the model's own
  sentence-transformers modules.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["OnnxEncoders", "onnx_available"]

logger = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_available() -> str | None:
    """None when onnxruntime and onnx can be imported, else what is missing."""
    missing = []
    for name in ("onnxruntime", "onnx"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        return (
            f"the ONNX Runtime rows need {' and '.join(missing)} "
            "(pip install 'attnkit[onnx]'), or pass --no-onnx"
        )
    return None


class _LastHidden(torch.nn.Module):
    """transformers' model called by keyword (its forward takes more positional arguments)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state  # (B, T, C)


def export_onnx(source: str | Path, folder: Path) -> tuple[Path, Path]:
    """The float32 export of the transformers model in ``source`` and its dynamic-int8
    quantization, written into ``folder``: (float32 path, int8 path)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])  # (2, 4)
    mask = (ids != 0).long()
    fp32, int8 = folder / "model.onnx", folder / "model_qint8_avx2.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHidden(model),
            (ids, mask, torch.zeros_like(ids)),
            str(fp32),
            input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(
        str(fp32),
        str(int8),
        op_types_to_quantize=["MatMul", "Add"],
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QUInt8,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    return fp32, int8


class OnnxEncoders:
    """ONNX Runtime sessions of the float32 and int8 exports of ``st`` (a loaded
    SentenceTransformer) from ``source``; :meth:`encoder` gives an ``encode(texts)`` for each.
    The exports live in a temporary folder until :meth:`close`."""

    def __init__(self, st: Any, source: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self._tmp = tempfile.TemporaryDirectory(prefix="attnkit-onnx-")
        fp32, int8 = export_onnx(source, Path(self._tmp.name))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.sessions = {
            dtype: ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            for dtype, path in (("float32", fp32), ("int8", int8))
        }
        self.st = st
        self.version = ort.__version__
        self.sizes = {"float32": fp32.stat().st_size, "int8": int8.stat().st_size}

    def encoder(self, dtype: str, batch_size: int) -> Callable[[list[str]], np.ndarray]:
        session = self.sessions[dtype]
        wanted = {i.name for i in session.get_inputs()}
        st = self.st
        after = list(st)[1:]  # pooling, normalisation: the modules after the transformer

        def encode(texts: list[str]) -> np.ndarray:
            order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first
            out: list[torch.Tensor] = [torch.empty(0)] * len(texts)
            with torch.inference_mode():
                for start in range(0, len(texts), batch_size):
                    idx = order[start : start + batch_size]
                    features = st.preprocess([texts[i] for i in idx])
                    feeds = {k: features[k].numpy() for k in _INPUTS if k in wanted}
                    hidden = session.run(None, feeds)[0]  # (B, T, C)
                    features["token_embeddings"] = torch.from_numpy(hidden)
                    for module in after:
                        features = module(features)
                    for i, vec in zip(idx, features["sentence_embedding"]):
                        out[int(i)] = vec
            return torch.stack(out).numpy() if texts else np.zeros((0, 0), np.float32)

        return encode

    def close(self) -> None:
        self._tmp.cleanup()
