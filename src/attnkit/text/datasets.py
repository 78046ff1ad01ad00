"""Token streams on disk and the batches drawn from them.

A corpus split is encoded once into a flat binary file of token ids (uint16 when the
vocabulary fits, else uint32), cached under ``<cache>/tokens/`` by (corpus checksum,
tokenizer hash, split), and read back as a ``numpy.memmap``: nothing is held in memory and a
second run skips the encoding.

Batches are random windows drawn with an explicit ``torch.Generator``, so the data position of
a run is that generator's state (saved in checkpoints for exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnkit._util.fs import atomic_write_bytes
from attnkit.text.corpora import Corpus, split_text
from attnkit.text.tokenizers import encode, tokenizer_hash


@dataclass
class TokenStream:
    """A read-only memmapped array of token ids: the flat binary file ``path`` of ``dtype``
    (``"uint16"`` or ``"uint32"``) ids, as :func:`build_streams` writes it; ``len()`` counts
    its tokens.

    Examples:
        >>> stream = TokenStream(Path("tokens/abc-train.uint16.bin"), "uint16")
        >>> len(stream)
    """

    path: Path
    dtype: str

    def __post_init__(self) -> None:
        self.data = np.memmap(self.path, dtype=self.dtype, mode="r")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def windows(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random windows of ``length`` consecutive ids -> (n, length) int64.

        Each window starts at a position drawn uniformly from ``generator`` (windows may
        overlap).

        Args:
            n: the number of windows (rows).
            length: ids per window.
            generator: the source of the start positions.

        Raises:
            ValueError: the stream holds fewer than ``length + 1`` tokens.

        Examples:
            >>> stream.windows(8, 256, torch.Generator().manual_seed(0)).shape
            torch.Size([8, 256])
        """
        if len(self) < length + 1:
            raise ValueError(
                f"token stream {self.path.name} has {len(self)} tokens; a window of "
                f"{length} needs at least {length + 1} (use a smaller block_size or "
                f"more data)"
            )
        starts = torch.randint(0, len(self) - length + 1, (n,), generator=generator)
        rows = [
            torch.from_numpy(self.data[s : s + length].astype(np.int64)) for s in starts.tolist()
        ]
        return torch.stack(rows)  # (n, length)


def _dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


def _write_ids(path: Path, ids: list[int], dtype: str) -> None:
    atomic_write_bytes(path, np.asarray(ids, dtype=dtype).tobytes())


def build_streams(corpus: Corpus, tok, val_fraction: float, cache: Path) -> dict[str, TokenStream]:
    """{"train": TokenStream, "val": TokenStream} for this corpus and tokenizer (cached).

    The corpus is split by :func:`~attnkit.text.corpora.split_text` and each split encoded
    once into ``<cache>/tokens/``, keyed by the corpus checksum, the tokenizer hash and
    ``val_fraction``; later calls only open the files.

    Args:
        corpus: the text and its checksum.
        tok: a ``tokenizers.Tokenizer``.
        val_fraction: the share of the text held out for validation.
        cache: the cache directory.

    Examples:
        >>> streams = build_streams(load_corpus("shakespeare"), tok, 0.1, cache_dir())
        >>> len(streams["train"]) > len(streams["val"])
        True
    """
    dtype = _dtype_for(tok.get_vocab_size())
    key = f"{corpus.checksum[:16]}-{tokenizer_hash(tok)[:16]}-v{val_fraction:g}"
    paths = {s: cache / "tokens" / f"{key}-{s}.{dtype}.bin" for s in ("train", "val")}
    if not all(p.is_file() for p in paths.values()):
        parts = dict(zip(("train", "val"), split_text(corpus.text, val_fraction)))
        for split, path in paths.items():
            _write_ids(path, encode(tok, parts[split]), dtype)
    return {s: TokenStream(p, dtype) for s, p in paths.items()}


def mask_tokens(
    ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    special_ids: tuple[int, ...] = (),
    prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: each non-special token is chosen with probability ``prob``; a chosen
    token becomes ``mask_id`` 80% of the time, a random token 10%, itself 10%.

    Args:
        ids: (B, T) token ids.
        mask_id: the id of the mask token.
        vocab_size: random replacements are drawn from 0..vocab_size - 1.
        generator: the source of every draw.
        special_ids: ids never chosen (padding, [CLS], [SEP]).
        prob: the chance of each token to be chosen.

    Returns:
        ``(inputs, labels)``, both (B, T): labels hold the original id at chosen positions,
            -100 elsewhere (ignored by cross entropy). At least one token per batch is chosen:
            when the draw chooses none, the first token that is neither ``mask_id`` nor one of
            ``special_ids`` is.

    Raises:
        ValueError: ``ids`` is not an integer (B, T) tensor, ``prob`` is not in (0, 1], or
            every token of ``ids`` is ``mask_id`` or special (nothing could be chosen).

    Examples:
        >>> inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=100, generator=g)
        >>> inputs.shape == labels.shape == ids.shape
        True
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        what = (
            f"shape {tuple(ids.shape)} dtype {ids.dtype}"
            if isinstance(ids, torch.Tensor)
            else type(ids).__name__
        )
        raise ValueError(f"ids must be an integer tensor of shape (B, T), got {what}")
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 < prob <= 1.0:
        raise ValueError(f"prob must be a number in (0, 1], got {prob!r}")
    u = torch.rand(ids.shape, generator=generator)
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    chosen = u < prob
    for s in special_ids:
        chosen &= ids != s
    if not chosen.any():  # an all-unchosen batch would give a NaN loss
        eligible = ids != mask_id  # (B, T)
        for s in special_ids:
            eligible &= ids != s
        flat = torch.where(eligible.flatten())[0]
        if not flat.numel():
            raise ValueError(
                f"ids hold only the mask id {mask_id} and special ids {tuple(special_ids)}; "
                f"expected at least one token that can be masked"
            )
        chosen.view(-1)[flat[0]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = ids.clone()
    inputs[chosen & (action < 0.8)] = mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels
