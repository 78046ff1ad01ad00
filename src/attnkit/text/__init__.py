"""Text for pre-training: corpora, tokenizers and memmapped token streams."""

from attnkit.text.corpora import Corpus, load_corpus, split_text
from attnkit.text.datasets import TokenStream, build_streams, mask_tokens
from attnkit.text.tokenizers import build_tokenizer, tokenizer_hash

__all__ = [
    "Corpus",
    "load_corpus",
    "split_text",
    "TokenStream",
    "build_streams",
    "mask_tokens",
    "build_tokenizer",
    "tokenizer_hash",
]
