"""Prepacked CPU linears (attnkit.models.packed): outputs against a float64 product, the
fallbacks (gradients, other dtypes), the layers restored afterwards, a shared layer packed
once, and a nested context left inert."""

import pytest
import torch
from torch import nn

from attnkit.models.packed import can_pack, packed_linears

pytestmark = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2)), reason="this PyTorch build has no oneDNN linear"
)


class Net(nn.Module):
    """Linear, GELU, a bias-free head also held under a second name (as a tied head is)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 24), nn.GELU())
        self.head = nn.Linear(24, 40, bias=False)
        self.tied = self.head

    def forward(self, x):
        return self.tied(self.body(x))


def model(seed=0):
    torch.manual_seed(seed)
    return Net()


def reference(net, x):
    """The same layers in float64, by hand."""
    h = x.double() @ net.body[0].weight.double().T + net.body[0].bias.double()
    h = torch.nn.functional.gelu(h)
    return h @ net.head.weight.double().T


@pytest.mark.parametrize("shape", [(1, 16), (7, 16), (3, 5, 16), (64, 16)])
def test_packed_outputs_equal_a_float64_product(shape):
    net = model()
    x = torch.randn(*shape)
    with torch.no_grad(), packed_linears(net, rows=8) as n:
        y = net(x)
    assert n == 2  # the tied head counted once
    assert y.shape == (*shape[:-1], 40)
    torch.testing.assert_close(y.double(), reference(net, x), atol=2e-5, rtol=1e-5)


def test_layers_are_restored_and_follow_new_weights():
    net = model()
    x = torch.randn(4, 16)
    with torch.no_grad(), packed_linears(net):
        assert "forward" in vars(net.body[0])
    assert all("forward" not in vars(m) for m in net.modules())
    with torch.no_grad():
        net.body[0].weight.mul_(2.0)  # changed after the context: no stale packed copy is used
        y = net(x)
    torch.testing.assert_close(y.double(), reference(net, x), atol=2e-5, rtol=1e-5)


def test_gradients_and_other_dtypes_fall_back_to_the_plain_layer():
    net = model()
    x = torch.randn(4, 16, requires_grad=True)
    with packed_linears(net):
        y = net(x)  # gradients on: F.linear, differentiable
        y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(y.detach().double(), reference(net, x), atol=2e-5, rtol=1e-5)
    half = nn.Linear(4, 4).to(torch.bfloat16)
    assert not can_pack(half) and not can_pack(nn.Conv1d(2, 2, 1))
    with torch.no_grad(), packed_linears(half) as n:
        assert n == 0


def test_a_nested_context_packs_nothing_and_undoes_nothing():
    net = model()
    x = torch.randn(2, 16)
    with torch.no_grad(), packed_linears(net):
        outer = vars(net.head)["forward"]
        with packed_linears(net) as n:
            assert n == 0
        assert vars(net.head)["forward"] is outer  # the outer context's layer is still packed
        y = net(x)
    assert all("forward" not in vars(m) for m in net.modules())
    torch.testing.assert_close(y.double(), reference(net, x), atol=2e-5, rtol=1e-5)
