"""EncoderDecoder.loss (the LM head on counted positions only) against the cross-entropy of
the full forward's logits, computed here in float64, with and without label smoothing."""

import pytest
import torch

from attnkit.models.encdec import EncoderDecoder
from attnkit.models.encdec_config import get_encdec_preset


def reference(logits, labels, smoothing):
    """Mean over counted positions of (1 - e) * -log p[y] + e * mean_v(-log p[v])."""
    logp = torch.log_softmax(logits.double(), dim=-1)  # (B, T, V)
    counted = labels != -100
    nll = -logp[counted].gather(1, labels[counted][:, None])[:, 0]
    uniform = -logp[counted].mean(dim=-1)
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


@pytest.mark.parametrize("family", ["marian", "bart", "t5"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_the_full_logits_cross_entropy(family, smoothing):
    ids = dict(pad_token_id=36, decoder_start_token_id=36) if family == "marian" else {}
    cfg = get_encdec_preset(f"tiny-{family}", vocab_size=37, d_model=32, d_ff=48, **ids)
    torch.manual_seed(0)
    model = EncoderDecoder(cfg).double().train()
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 30, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    labels = torch.randint(3, 30, (3, 6), generator=g)
    labels[1, 4:] = -100  # padded targets take no part
    labels[2, 2:] = -100
    model.eval()  # no dropout: the two computations see the same function
    got = model.loss(src, mask, labels, label_smoothing=smoothing)
    logits = model(input_ids=src, attention_mask=mask, labels=labels).logits
    want = reference(logits, labels, smoothing)
    assert abs(got.item() - want.item()) < 1e-10  # a float64 model: the fused loss in float64
    got.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference(
        model(input_ids=src, attention_mask=mask, labels=labels).logits, labels, smoothing
    ).backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert (grads[n] - p.grad).abs().max().item() < 1e-10, n
