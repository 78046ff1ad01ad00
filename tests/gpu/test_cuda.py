"""CUDA checks (marker gpu; `make gpu-check` runs them through scripts/gpu_check.py).

* every exact attention backend on CUDA against a float64 reference written here, in float32
  and bfloat16, causal and not, with a window and with padding;
* greedy generation on CUDA gives the tokens greedy generation gives on the CPU;
* training steps in bfloat16 autocast on CUDA follow the float32 CPU steps' losses.

Without CUDA these fail (a skipped CUDA check must not pass for a run one).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.attention import attention
from attnkit.generation import generate
from attnkit.models import ModelConfig, build_model

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("marked gpu: needs a CUDA device (torch.cuda.is_available() is False)")


def reference(q, k, v, causal: bool, window: int | None, valid: torch.Tensor | None):
    """softmax(q k^T / sqrt(D) + mask) v in float64 on the CPU."""
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    i = torch.arange(T)[:, None] + (S - T)
    j = torch.arange(S)[None, :]
    allowed = torch.ones(T, S, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        allowed &= (i - j < window) if causal else ((i - j).abs() < window)
    allowed = allowed[None, None]
    if valid is not None:
        allowed = allowed & valid.cpu()[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


CASES = [
    ("math", False, None),
    ("math", True, None),
    ("sdpa", False, None),
    ("sdpa", True, None),
    ("sdpa", True, 16),
    ("windowed", True, 16),
    ("windowed", False, 16),
    ("flex", True, None),
    ("auto", True, 16),
]


PRECISIONS = [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)]


# flex compiles a kernel per dtype: float32 alone keeps the check short
@pytest.mark.parametrize(
    "backend,causal,window,dtype,atol",
    [c + p for c in CASES for p in PRECISIONS if c[0] != "flex" or p[0] == torch.float32],
)
def test_attention_backends_match_float64(backend, causal, window, dtype, atol):
    g = torch.Generator().manual_seed(0)
    B, H, T, D = 2, 4, 96, 32
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 88:] = False  # the second row is padded (every query keeps a key in its window)
    want = reference(q, k, v, causal, window, valid)
    cuda = [t.to("cuda", dtype) for t in (q, k, v)]
    got = attention(
        *cuda,
        causal=causal,
        window=window,
        valid_key_mask=valid.cuda(),
        backend=backend,
    )
    assert got.device.type == "cuda" and got.dtype == dtype
    err = (got.double().cpu() - want).abs().max().item()
    assert err <= atol, (backend, causal, window, dtype, err)


def _tiny_gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="gpt", vocab_size=97, d_model=64, n_layer=2, n_heads=4, max_seq_len=96)
    return build_model(cfg).eval()


def test_greedy_generation_on_cuda_equals_cpu():
    model = _tiny_gpt()
    prompt = [[5, 17, 3, 42, 8], [1, 2, 3]]
    cpu = generate(model, prompt, max_new_tokens=40, temperature=0.0)
    gpu = generate(model.cuda(), prompt, max_new_tokens=40, temperature=0.0)
    assert gpu == cpu


def test_bf16_training_steps_on_cuda_follow_fp32_on_cpu():
    """Five AdamW steps on one batch: bfloat16 autocast on CUDA against float32 on the
    CPU; losses agree to bf16's precision and both fall."""
    from attnkit.training import optim, precision

    def losses(device: torch.device, dtype: str) -> list[float]:
        model = _tiny_gpt().train().to(device)
        opt = optim.make_optimizer(model, 1e-2, 0.1, (0.9, 0.99), device)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 97, (8, 64), generator=g).to(device)  # learnt by heart
        out = []
        for _ in range(5):
            with precision.autocast(device, dtype):
                loss = model(ids, labels=ids).loss
            loss.backward()
            optim.clip_and_step(opt, model.parameters(), 1.0)
            opt.zero_grad(set_to_none=True)
            out.append(float(loss.detach()))
        return out

    ref = losses(torch.device("cpu"), "float32")
    got = losses(torch.device("cuda"), "bfloat16")
    assert got[-1] < got[0] and ref[-1] < ref[0]
    for a, b in zip(got, ref):
        assert abs(a - b) <= 0.02 * abs(b), (got, ref)
