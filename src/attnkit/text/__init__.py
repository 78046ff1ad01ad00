"""Text for models: corpora, tokenizers, memmapped token streams, the batcher that pads or
packs tokenised texts (:mod:`~attnkit.text.batching`), the pooling rule of text vectors
(:mod:`~attnkit.text.pooling`) and the Shakespeare genre data set (:mod:`~attnkit.text.genre`)."""

from attnkit.text.batching import (
    Batch,
    length_batches,
    map_batches,
    pack_sequences,
    pad_batch,
    padded_batches,
)
from attnkit.text.corpora import Corpus, load_corpus, split_text
from attnkit.text.datasets import TokenStream, build_streams, mask_tokens
from attnkit.text.tokenizers import build_tokenizer, tokenizer_hash

__all__ = [
    "Batch",
    "length_batches",
    "map_batches",
    "pack_sequences",
    "pad_batch",
    "padded_batches",
    "Corpus",
    "load_corpus",
    "split_text",
    "TokenStream",
    "build_streams",
    "mask_tokens",
    "build_tokenizer",
    "tokenizer_hash",
]
