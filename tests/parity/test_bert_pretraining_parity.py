"""Masked-LM pre-training of the shipped ``bert-shakespeare`` model against its Hugging Face
form: the same weights, the same masked batches and the config's AdamW settings give the same
losses step after step (float64, so that only real differences show), for the shipped config
(RoPE: HF ``RoFormerForMaskedLM``) and for the same model with learned positions (HF
``BertForMaskedLM``).

So a curve that stalls under a config is the recipe's, not the model's: this is the check that
told the two apart when the config with learned positions plateaued at a bag-of-words loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from attnkit.checkpoints.hf.convert import to_hf_state_dict  # noqa: E402 (after the skip)
from attnkit.models import ModelConfig, build_model  # noqa: E402
from attnkit.text.datasets import mask_tokens  # noqa: E402
from attnkit.training import optim  # noqa: E402
from attnkit.training.config import build, find_config, read_file  # noqa: E402

VOCAB = 512  # the shipped shape with a smaller vocabulary, to keep the test fast
SPECIAL = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], as WordPiece numbers them


def shipped(**overrides):
    cfg = build(read_file(find_config("bert-shakespeare")), [])
    fields = dict(cfg.model, vocab_size=VOCAB, pad_token_id=0, **overrides)
    return cfg.train, ModelConfig(**fields)


def hf_twin(model):
    """HF BertForMaskedLM or RoFormerForMaskedLM (the export's choice) holding ``model``'s
    weights (float64)."""
    sd, hf_cfg = to_hf_state_dict(model)
    kind = hf_cfg["model_type"]
    hf_cfg = {k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")}
    config_cls, model_cls, base = {
        "bert": (transformers.BertConfig, transformers.BertForMaskedLM, "bert"),
        "roformer": (transformers.RoFormerConfig, transformers.RoFormerForMaskedLM, "roformer"),
    }[kind]
    hf = model_cls(config_cls(**hf_cfg, attn_implementation="eager")).double()
    missing, unexpected = hf.load_state_dict({k: v.double() for k, v in sd.items()}, strict=False)
    assert not unexpected
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    hf.tie_weights()  # the decoder is the word embedding matrix, as in attnkit
    backbone = getattr(hf, base)
    assert hf.cls.predictions.decoder.weight is backbone.embeddings.word_embeddings.weight
    if kind == "roformer":  # its sin/cos table in float64, as attnkit computes it
        table = backbone.encoder.embed_positions.weight  # (positions, head_dim)
        d = table.shape[1]
        pos = torch.arange(table.shape[0], dtype=torch.float64)[:, None]
        angles = pos * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        with torch.no_grad():
            table.copy_(torch.cat((angles.sin(), angles.cos()), dim=1))
    return hf


def hf_optimizer(hf, tc):
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    rest = [p for p in hf.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
    )


@pytest.mark.parametrize(
    "overrides, hf_class",
    [({}, "RoFormerForMaskedLM"), ({"positional": "learned"}, "BertForMaskedLM")],
)
def test_shipped_bert_trains_step_for_step_like_hf(overrides, hf_class):
    tc, mcfg = shipped(**overrides)
    torch.manual_seed(0)
    ours = build_model(mcfg).double().train()
    hf = hf_twin(ours).train()
    assert type(hf).__name__ == hf_class
    trained = [p for p in hf.parameters() if p.requires_grad]  # not RoFormer's sin/cos table
    assert ours.num_parameters() == sum(p.numel() for p in trained)
    opt_ours = optim.make_optimizer(
        ours, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), torch.device("cpu"), fused=False
    )
    opt_hf = hf_optimizer(hf, tc)
    start = ours.embed.tok.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    T = tc.block_size
    losses = []
    for step in range(4):
        ids = torch.randint(5, VOCAB, (4, T), generator=g)  # (B, T)
        x, y = mask_tokens(
            ids,
            mask_id=4,
            vocab_size=VOCAB,
            generator=g,
            special_ids=SPECIAL,
            prob=tc.mlm_probability,
        )
        lr = optim.lr_at(
            step + tc.warmup_iters,  # the peak: steps large enough to move every weight
            lr=tc.lr,
            min_lr=tc.min_lr,
            warmup=tc.warmup_iters,
            decay_iters=tc.max_iters,
        )
        optim.set_lr(opt_ours, lr)
        for group in opt_hf.param_groups:
            group["lr"] = lr
        out = ours(x, labels=y)
        logits = hf(input_ids=x).logits  # (B, T, V)
        if step == 0:  # attnkit's masked-LM loss (float32) against HF's
            assert abs(out.loss.item() - hf(input_ids=x, labels=y).loss.item()) <= 1e-5
        a = F.cross_entropy(out.logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)
        b = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)
        a.backward()
        b.backward()
        optim.clip_and_step(opt_ours, ours.parameters(), tc.grad_clip)
        torch.nn.utils.clip_grad_norm_(hf.parameters(), tc.grad_clip)
        opt_hf.step()
        opt_ours.zero_grad(set_to_none=True)
        opt_hf.zero_grad(set_to_none=True)
        losses.append((a.item(), b.item()))
    for a, b in losses:
        assert abs(a - b) <= 1e-9, losses
    moved = (ours.embed.tok.weight - start).abs().max().item()
    assert moved > 3 * tc.lr, moved  # the steps did move the weights
    with torch.no_grad():
        ids = torch.randint(5, VOCAB, (2, T), generator=g)
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, atol=1e-9, rtol=0)
