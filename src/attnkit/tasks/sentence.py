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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from attnkit._util import checks
from attnkit._util.env import cpu_has_native_bf16
from attnkit.models.bert import Bert
from attnkit.models.heads import POOLERS
from attnkit.text.batching import Batch, map_batches
from attnkit.text.inputs import check_texts
from attnkit.text.pooling import resolve_pooling
from attnkit.text.tokenizers import encode_texts, pad_token_id

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer


class Encoder:
    """Turns texts into vectors with a BERT-family ``model`` and its ``tokenizer`` (default:
    ``model.meta.tokenizer``).

    ``pooling``: "mean" or "cls" (default: ``model.config.pooling``, see
    :func:`attnkit.text.pooling.resolve_pooling`); ``max_length``: tokens kept per text
    (default: ``model.meta.max_length``, else ``config.max_seq_len``).

    ``quantize="int8"`` (CPU, float32 weights): the blocks' linears but the q/k/v projections
    are replaced, in ``model`` itself, by dynamic int8 linears: int8 weights times 8-bit
    activations with one scale per token
    (:func:`attnkit.native.int8.quantize_dynamic_int8`). On all-MiniLM-L6-v2 the embeddings
    of 2,048 Shakespeare lines keep a cosine of at least 0.99 to the float32 ones.

    Args:
        model: a BERT-family attnkit model (``config.arch="bert"``); put in eval mode and
            moved to ``device``.
        tokenizer: the tokenizer (default: ``model.meta.tokenizer``).
        pooling: "mean" or "cls" (default: the model's rule).
        max_length: tokens kept per text (at most ``config.max_seq_len``).
        device: where the model runs (default: where its parameters are).
        autocast: a dtype for mixed precision in the forward pass (e.g. ``torch.bfloat16``);
            pooling stays float32. bfloat16 on a CPU without native support warns.
        quantize: None or "int8" (see above).

    Raises:
        ValueError: ``model`` is not a BERT-family model, there is no tokenizer,
            ``max_length`` is not a positive int, or ``quantize`` is neither None nor "int8"
            or asks for int8 off the CPU or on a model that is not float32.

    Examples:
        >>> enc = Encoder(attnkit.load("minilm"), max_length=128)
        >>> enc.encode(["one", "two"]).shape
        (2, 384)
    """

    def __init__(
        self,
        model: Bert,
        tokenizer: Tokenizer | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        autocast: torch.dtype | None = None,
        quantize: str | None = None,
    ):
        _check_quantize(quantize, device)
        if not isinstance(model, Bert):
            raise ValueError(
                f"Encoder needs a BERT-family attnkit model (config.arch='bert'), "
                f"got {type(model).__name__}"
            )
        tokenizer = tokenizer if tokenizer is not None else model.meta.tokenizer
        if tokenizer is None:
            raise ValueError("Encoder needs a tokenizer; the checkpoint has no tokenizer.json")
        checks.optional_positive_int("max_length", max_length)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = resolve_pooling(model, pooling)
        limit = model.config.max_seq_len
        self.max_length = min(max_length or model.meta.max_length or limit, limit)
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.model.to(self.device)
        self.quantize = quantize
        if quantize == "int8":
            from attnkit.native.int8 import quantize_dynamic_int8

            weight = next(model.parameters())
            if weight.device.type != "cpu" or weight.dtype != torch.float32:
                raise ValueError(
                    f"quantize='int8' needs a float32 model on the CPU, got {weight.dtype} "
                    f"on {weight.device}"
                )
            quantize_dynamic_int8(self.model)
        self.pad_id = pad_token_id(tokenizer, model.config.pad_token_id)
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
        cls,
        name_or_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        quantize: str | None = None,
        **kwargs: Any,
    ) -> Encoder:
        """From a known name ("minilm"), an attnkit directory or a (sentence-transformers)
        Hugging Face directory; its pooling and length are the ones the checkpoint declares.
        ``quantize``: see the class docstring.

        Args:
            name_or_dir: a known name or a checkpoint directory.
            device: where the model is loaded and runs.
            quantize: None or "int8" (a float32 model on the CPU).
            **kwargs: the other arguments of :class:`Encoder` (``pooling``, ``max_length``,
                ``autocast``, ``tokenizer``).

        Raises:
            ValueError: the checkpoint is not a BERT-family model, or ``quantize`` does not
                fit ``device``.

        Examples:
            >>> enc = Encoder.load("minilm")
            >>> enc.pooling, enc.max_length
            ('mean', 256)
        """
        from attnkit.checkpoints import load

        _check_quantize(quantize, device)
        model = load(name_or_dir, device=device)
        if not isinstance(model, Bert):
            raise ValueError(
                f"{name_or_dir}: Encoder needs a BERT-family attnkit model "
                f"(config.arch='bert'), got {type(model).__name__}"
            )
        return cls(model, device=device, quantize=quantize, **kwargs)

    @property
    def dim(self) -> int:
        """The width C of the vectors (the model's ``d_model``).

        Examples:
            >>> Encoder.load("minilm").dim
            384
        """
        return self.model.config.d_model

    # ---------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, cut at ``max_length``, unpadded.

        Examples:
            >>> enc.tokenize(["To be, or not to be"])
            [[101, 2000, 2022, 1010, 2030, 2025, 2000, 2022, 102]]
        """
        return encode_texts(self.tokenizer, texts, self.max_length)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def _embed_sorted(
        self, ids_list: Sequence[Sequence[int]], batch_size: int, show_progress: bool
    ) -> torch.Tensor:
        pool = POOLERS[self.pooling]

        def embed(batch: Batch) -> torch.Tensor:
            with self._autocast():
                h = self.model.hidden_states(
                    batch.ids, attention_mask=batch.attention_mask, unpad=True
                )
            return pool(h.float(), batch.attention_mask)  # (B, C)

        return map_batches(
            ids_list,
            batch_size,
            embed,
            self.pad_id,
            device=self.device,
            progress="encode" if show_progress else None,
        )

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize: bool = True,
        show_progress: bool = False,
        convert_to: str = "numpy",
    ):
        """One vector (C,) for a string, a matrix (N, C) for a list, in the input order.

        Args:
            texts: one string, or a list of them (an empty list gives a (0, C) result).
            batch_size: texts per forward pass.
            normalize: L2-normalise each vector (cosine similarity becomes a dot product).
            show_progress: a tqdm bar over the batches.
            convert_to: "numpy" (float32 array) or "torch" (float32 tensor on the
                encoder's device).

        Raises:
            TypeError: ``texts`` is bytes, a mapping or holds a non-string.
            ValueError: a bad option, text that is not valid Unicode, or a vector that is not
                finite.

        Examples:
            >>> enc.encode("a sentence").shape, enc.encode(["one", "two"]).shape
            ((384,), (2, 384))
        """
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        checks.positive_int("batch_size", batch_size)
        checks.flag("normalize", normalize)
        single = isinstance(texts, str)
        items = check_texts(texts)
        vecs = self._vectors(self.tokenize(items), batch_size, normalize, show_progress)
        vecs = vecs[0] if single else vecs
        return vecs.cpu().numpy() if convert_to == "numpy" else vecs

    def encode_ids(
        self, ids: Sequence[Sequence[int]], batch_size: int = 32, normalize: bool = True
    ) -> torch.Tensor:
        """:meth:`encode` of texts already tokenised (each as :meth:`tokenize` gives it, at
        most ``max_length`` ids): a float32 (N, C) tensor, in the input order. For a caller
        that has the ids already (the server counts tokens before it queues a request).

        Args:
            ids: N token-id sequences, each of 1 to ``max_length`` ids.
            batch_size: sequences per forward pass.
            normalize: L2-normalise each vector.

        Raises:
            ValueError: a sequence is empty or longer than ``max_length``, or a bad option.

        Examples:
            >>> enc.encode_ids(enc.tokenize(["one", "two"])).shape
            torch.Size([2, 384])
        """
        checks.positive_int("batch_size", batch_size)
        checks.flag("normalize", normalize)
        for i, seq in enumerate(ids):
            if not 0 < len(seq) <= self.max_length:
                raise ValueError(
                    f"ids[{i}] holds {len(seq)} tokens; expected 1 to max_length={self.max_length}"
                )
        return self._vectors(ids, batch_size, normalize, False)

    def _vectors(
        self, ids: Sequence[Sequence[int]], batch_size: int, normalize: bool, show_progress: bool
    ) -> torch.Tensor:
        if ids:
            vecs = self._embed_sorted(ids, batch_size, show_progress)
        else:
            vecs = torch.empty(0, self.dim, device=self.device)
        check_finite(vecs)
        return F.normalize(vecs, p=2, dim=-1) if normalize else vecs

    # ---------------------------------------------------------------------------------------
    def word_tokens(self, sentence: str, word: str, occurrence: int = 0) -> tuple[int, ...]:
        """Positions (in ``sentence``'s token ids, [CLS] included) of the sub-word pieces of
        ``word``'s ``occurrence``-th whole-word, case-insensitive match. ValueError naming the
        word and the sentence when it is not there.

        Args:
            sentence: the text to look in.
            word: the word to find (matched case-insensitively against whole words).
            occurrence: which match, 0 = the first.

        Examples:
            >>> enc.word_tokens("He swung the bat", "bat")
            (4,)
        """
        check_texts([sentence, word])
        enc = self.tokenizer.encode(sentence)
        return tuple(self._word_hits(enc, sentence, word, occurrence))

    def word_pieces(self, sentence: str, word: str, occurrence: int = 0) -> list[str]:
        """The tokenizer's pieces of ``word`` in ``sentence`` (e.g. ["bat"] or ["swing", "##ing"]).

        Examples:
            >>> enc.word_pieces("He swung the bat", "bat")
            ['bat']
        """
        enc = self.tokenizer.encode(sentence)
        return [enc.tokens[t] for t in self.word_tokens(sentence, word, occurrence)]

    @torch.no_grad()
    def word_vectors_by_layer(self, sentence: str, word: str, occurrence: int = 0) -> torch.Tensor:
        """``word``'s contextual vector after the embeddings and after each block: float32
        (n_layers + 1, C), row 0 the embeddings' output, row i the output of block i. Each row
        is the mean over the word's sub-word pieces (:meth:`word_tokens`).

        Examples:
            >>> enc.word_vectors_by_layer("He swung the bat", "bat").shape  # MiniLM: 6 blocks
            torch.Size([7, 384])
        """
        toks = list(self.word_tokens(sentence, word, occurrence))
        ids = torch.tensor([self.tokenizer.encode(sentence).ids], device=self.device)
        with self._autocast():
            x = self.model.embed(ids)  # (1, T, C)
            rows = [x[0, toks].float().mean(dim=0)]
            for block in self.model.blocks:
                x = block(x)
                rows.append(x[0, toks].float().mean(dim=0))
        out = torch.stack(rows)  # (L + 1, C)
        check_finite(out)
        return out

    def word_similarity_by_layer(
        self, a: str, b: str, word: str, occurrence: int = 0
    ) -> list[float]:
        """Cosine of ``word``'s vectors in ``a`` and ``b`` at each depth: n_layers + 1 floats,
        the first after the embeddings, the last the same as :meth:`similarity` with ``word``.

        Examples:
            >>> len(enc.word_similarity_by_layer("He swung the bat", "A bat flew out", "bat"))
            7
        """
        va = self.word_vectors_by_layer(a, word, occurrence)
        vb = self.word_vectors_by_layer(b, word, occurrence)
        return [float(c) for c in F.cosine_similarity(va, vb, dim=-1)]

    def _word_hits(self, enc: Any, sentence: str, word: str, occurrence: int) -> list[int]:
        target = word.lower()
        spans: dict[int, list[int]] = {}
        for t, wid in enumerate(enc.word_ids):
            if wid is not None:
                spans.setdefault(wid, []).append(t)
        hits = []
        for toks in spans.values():
            start, end = enc.offsets[toks[0]][0], enc.offsets[toks[-1]][1]
            if sentence[start:end].lower() == target:
                hits.append(toks)
        if len(hits) <= occurrence:
            words = [sentence[enc.offsets[t[0]][0] : enc.offsets[t[-1]][1]] for t in spans.values()]
            raise ValueError(
                f"word {word!r} (occurrence {occurrence}) not found in {sentence!r}; "
                f"its words are {words}"
            )
        return hits[occurrence]

    @torch.no_grad()
    def word_vector(self, sentence: str, word: str, occurrence: int = 0) -> torch.Tensor:
        """The contextual vector of ``word`` in ``sentence``: the mean of the hidden states of
        its sub-word tokens (C,). Matching is case-insensitive on whole words.

        Examples:
            >>> enc.word_vector("He swung the bat", "bat").shape
            torch.Size([384])
        """
        toks = list(self.word_tokens(sentence, word, occurrence))
        ids = torch.tensor([self.tokenizer.encode(sentence).ids], device=self.device)
        with self._autocast():
            h = self.model.hidden_states(ids)[0].float()  # (T, C)
        vec = h[toks].mean(dim=0)
        check_finite(vec[None])
        return vec

    def similarity(self, a: str, b: str, word: str | None = None) -> float:
        """Cosine similarity of two texts, or of ``word``'s contextual vectors in them.

        Examples:
            >>> enc.similarity("He swung the bat", "A bat flew out", word="bat")
        """
        if word is None:
            va, vb = self.encode([a, b], normalize=True, convert_to="torch")
        else:
            va, vb = self.word_vector(a, word), self.word_vector(b, word)
        return float(F.cosine_similarity(va, vb, dim=0))


def _check_quantize(quantize: Any, device: str | torch.device | None) -> None:
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize is not None and device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"quantize='int8' runs on the CPU, got device={str(device)!r}")


def check_finite(vecs: torch.Tensor) -> None:
    """ValueError if an embedding holds NaN or inf (a model with non-finite weights): such a
    vector is never handed back as a result.

    Args:
        vecs: (N, C) vectors (or any shape whose last dimension is a vector); the error names
            the first row that is not finite.

    Examples:
        >>> check_finite(torch.zeros(2, 384))  # passes: returns None
    """
    if vecs.numel() and not bool(torch.isfinite(vecs).all()):
        row = int((~torch.isfinite(vecs)).any(-1).nonzero()[0, 0])
        raise ValueError(
            f"the embedding of text {row} holds NaN or inf (the model's weights or activations "
            f"are not finite); expected finite vectors"
        )
