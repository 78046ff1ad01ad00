"""Text for pre-training: corpora, tokenizers and memmapped token streams."""
from .corpora import Corpus, load_corpus, split_text
from .datasets import TokenStream, build_streams, mask_tokens
from .tokenizers import build_tokenizer, tokenizer_hash

__all__ = ["Corpus", "load_corpus", "split_text", "TokenStream", "build_streams", "mask_tokens",
           "build_tokenizer", "tokenizer_hash"]
