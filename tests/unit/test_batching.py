"""attnkit.text.batching (the one batcher) and attnkit.text.pooling (the one pooling rule)."""

from __future__ import annotations

import pytest
import torch

from attnkit.models import build_model, get_preset
from attnkit.text.batching import (
    length_batches,
    map_batches,
    pack_sequences,
    pad_batch,
    padded_batches,
)
from attnkit.text.pooling import resolve_pooling

SEQS = [[2, 7, 3], [2, 3], [2, 9, 9, 9, 3], [2, 5, 3]]


def test_pad_batch_pads_right_and_masks_real_tokens():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6], [7, 8]])
    assert mask is None and ids.tolist() == [[5, 6], [7, 8]]
    _, mask = pad_batch([[5, 6], [7, 8]], always_mask=True)
    assert mask.tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ValueError, match="no sequences"):
        pad_batch([])


def test_padded_batches_sort_by_length_and_map_batches_restores_the_order():
    batches = list(padded_batches(SEQS, 2, pad_id=0))
    assert [b.index for b in batches] == [[2, 0], [3, 1]]
    assert batches[0].ids.shape == (2, 5) and batches[1].attention_mask.tolist() == [
        [1, 1, 1],
        [1, 1, 0],
    ]
    seen = []

    def lengths(batch):
        seen.append(batch.index)
        real = (
            batch.attention_mask if batch.attention_mask is not None else torch.ones_like(batch.ids)
        )
        return real.sum(1, keepdim=True)  # (B, 1)

    out = map_batches(SEQS, 3, lengths)
    assert out.tolist() == [[3], [2], [5], [3]] and seen == [[2, 0, 3], [1]]


def test_length_batches_shuffled_are_seeded_and_cover_every_item():
    lengths = [i % 7 for i in range(50)]
    a = length_batches(lengths, 4, shuffle=True, generator=torch.Generator().manual_seed(1), pool=2)
    b = length_batches(lengths, 4, shuffle=True, generator=torch.Generator().manual_seed(1), pool=2)
    assert a == b and sorted(i for batch in a for i in batch) == list(range(50))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        length_batches(lengths, 0)


def test_pack_sequences_first_fit_keeps_documents_apart():
    packed = pack_sequences(SEQS, max_tokens=6)
    assert packed.ids.shape[1] <= 6 and packed.ids.shape[0] == 3
    for i, (row, start, n) in enumerate(packed.rows):
        assert packed.ids[row, start : start + n].tolist() == SEQS[i]
        doc = packed.document_ids[row, start]
        assert doc > 0 and (packed.document_ids[row, start : start + n] == doc).all()
    assert (packed.attention_mask == (packed.document_ids > 0)).all()
    with pytest.raises(ValueError, match="sequence 2 has 5 tokens; expected at most max_tokens=4"):
        pack_sequences(SEQS, max_tokens=4)


def test_resolve_pooling_explicit_then_config():
    mean = build_model(get_preset("tiny-bert", pooling="mean", pooler=True))
    cls = build_model(get_preset("tiny-bert", pooling="cls", pooler=True))
    bare = build_model(get_preset("tiny-bert", pooling="cls", pooler=False))
    assert resolve_pooling(mean) == "mean" and resolve_pooling(mean, "cls") == "cls"
    assert resolve_pooling(cls) == "cls" and resolve_pooling(cls, for_classifier=True) == "pooler"
    assert resolve_pooling(mean, for_classifier=True) == "mean"
    assert resolve_pooling(bare, for_classifier=True) == "cls"
    with pytest.raises(ValueError, match=r"pooling must be one of \['cls', 'mean'\], got 'pooler'"):
        resolve_pooling(cls, "pooler")
    assert resolve_pooling(cls, "pooler", for_classifier=True) == "pooler"
