"""Sentence embeddings: :class:`Encoder`, a BERT-family model + tokenizer + pooling.

    >>> enc = Encoder.load("minilm")                 # all-MiniLM-L6-v2, shipped in a package
    >>> v = enc.encode("a sentence")                 # (384,) numpy, unit length
    >>> m = enc.encode(["one", "two"])               # (2, 384)

Like sentence-transformers: texts are tokenised once, sorted by token count so each batch
holds sequences of nearly the same length (little padding), run under ``torch.no_grad`` in
eval mode, pooled (mean over real tokens, or the first token), optionally L2-normalised, and
returned in the caller's order. A batch whose sequences all have the same length runs with no
mask at all, so attention takes SDPA's unmasked path.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.models.heads import POOLERS


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic (AVX-512 BF16 or AMX-BF16; Linux only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class Encoder:
    """Turns texts into vectors with a BERT-family ``model`` and its ``tokenizer``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        pooling: str | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        autocast: torch.dtype | None = None,
    ):
        if getattr(model, "config", None) is None or model.config.arch != "bert":
            raise ValueError(
                f"Encoder needs a BERT-family attnkit model (config.arch='bert'), "
                f"got {type(model).__name__}"
            )
        if tokenizer is None:
            raise ValueError("Encoder needs a tokenizer; the checkpoint has no tokenizer.json")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling or model.config.pooling
        if self.pooling not in POOLERS:
            raise ValueError(f"pooling must be one of {sorted(POOLERS)}, got {self.pooling!r}")
        self.max_length = min(max_length or model.config.max_seq_len, model.config.max_seq_len)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model.to(self.device)
        # mixed precision for the forward pass (e.g. torch.bfloat16); pooling stays float32
        self.autocast_dtype: torch.dtype | None = autocast
        if autocast == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "bfloat16 autocast on a CPU without AVX-512 BF16 or AMX: PyTorch emulates "
                "bf16 here and it is slower than float32",
                RuntimeWarning,
                stacklevel=2,
            )

    @classmethod
    def load(
        cls, name_or_dir: str | os.PathLike, device: str | torch.device | None = None, **kwargs: Any
    ) -> Encoder:
        """From a known name ("minilm"), an attnkit directory or a (sentence-transformers)
        Hugging Face directory."""
        from attnkit.checkpoints.io import load

        model = load(name_or_dir, device=device)
        sentence = (getattr(model, "extra_config", None) or {}).get("sentence", {})
        kwargs.setdefault("pooling", sentence.get("pooling"))
        kwargs.setdefault("max_length", sentence.get("max_seq_length"))
        return cls(model, model.tokenizer, device=device, **kwargs)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    # ---------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def _batch(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-padded ids (B, T) and a mask (B, T), or None when no sequence is padded."""
        T = max(len(s) for s in seqs)
        # one tensor from padded lists: a copy per sequence costs ~5% of a MiniLM batch
        ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs], dtype=torch.long)  # (B, T)
        if all(len(s) == T for s in seqs):
            return ids, None
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs], dtype=torch.long)
        return ids, mask

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def _embed_sorted(
        self, ids_list: list[list[int]], batch_size: int, show_progress: bool
    ) -> torch.Tensor:
        order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
        out = torch.empty(len(ids_list), self.dim, dtype=torch.float32, device=self.device)
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        for start in starts:
            idx = order[start : start + batch_size]
            ids, mask = self._batch([ids_list[i] for i in idx])
            ids = ids.to(self.device)
            mask = None if mask is None else mask.to(self.device)
            with self._autocast():
                h = self.model.hidden_states(ids, attention_mask=mask)  # (B, T, C)
            pooled = POOLERS[self.pooling](h.float(), mask)  # (B, C)
            out[torch.tensor(idx, device=self.device)] = pooled
        return out

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize: bool = True,
        show_progress: bool = False,
        convert_to: str = "numpy",
    ):
        """One vector (C,) for a string, a matrix (N, C) for a list, in the input order.

        ``normalize``: L2-normalise each vector (cosine similarity becomes a dot product).
        ``convert_to``: "numpy" (float32 array) or "torch" (float32 tensor).
        """
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"texts must be strings; item {bad[0]} is {type(items[bad[0]]).__name__}"
            )
        if items:
            vecs = self._embed_sorted(self.tokenize(items), batch_size, show_progress)
        else:
            vecs = torch.empty(0, self.dim, device=self.device)
        if normalize:
            vecs = F.normalize(vecs, p=2, dim=-1)
        vecs = vecs[0] if single else vecs
        return vecs.cpu().numpy() if convert_to == "numpy" else vecs

    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def word_vector(self, sentence: str, word: str, occurrence: int = 0) -> torch.Tensor:
        """The contextual vector of ``word`` in ``sentence``: the mean of the hidden states of
        its sub-word tokens (C,). Matching is case-insensitive on whole words."""
        enc = self.tokenizer.encode(sentence)
        target = word.lower()
        spans: dict[int, list[int]] = {}
        for t, wid in enumerate(enc.word_ids):
            if wid is not None:
                spans.setdefault(wid, []).append(t)
        hits = []
        for wid, toks in spans.items():
            start, end = enc.offsets[toks[0]][0], enc.offsets[toks[-1]][1]
            if sentence[start:end].lower() == target:
                hits.append(toks)
        if len(hits) <= occurrence:
            words = [sentence[enc.offsets[t[0]][0] : enc.offsets[t[-1]][1]] for t in spans.values()]
            raise ValueError(
                f"word {word!r} (occurrence {occurrence}) not found in {sentence!r}; "
                f"its words are {words}"
            )
        ids = torch.tensor([enc.ids], device=self.device)
        with self._autocast():
            h = self.model.hidden_states(ids)[0].float()  # (T, C)
        return h[hits[occurrence]].mean(dim=0)

    def similarity(self, a: str, b: str, word: str | None = None) -> float:
        """Cosine similarity of two texts, or of ``word``'s contextual vectors in them."""
        if word is None:
            va, vb = self.encode([a, b], normalize=True, convert_to="torch")
        else:
            va, vb = self.word_vector(a, word), self.word_vector(b, word)
        return float(F.cosine_similarity(va, vb, dim=0))


def read_texts(args_texts: Iterable[str], file: str | None, stdin) -> list[str]:
    """Texts from arguments, else one per non-empty line of --file, else of stdin."""
    texts = list(args_texts)
    if texts:
        return texts
    if file is not None:
        with open(file, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    return [line.rstrip("\n") for line in stdin if line.strip()]
