"""Positional encodings against references written out here in float64."""

import math

import pytest
import torch

from attnkit.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    alibi_slopes,
    apply_rotary,
    sinusoidal_table,
)


# ------------------------------------------------------------------------------- references
def ref_sinusoidal(n, dim, base=10000.0):
    """Vaswani et al. 3.5, one entry at a time in float64."""
    out = torch.empty(n, dim, dtype=torch.float64)
    for pos in range(n):
        for c in range(dim):
            i2 = c - (c % 2)  # 2i
            angle = pos / base ** (i2 / dim)
            out[pos, c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    return out


def ref_rope_half(x, pos, base=10000.0):
    """HF Llama: x * cos + rotate_half(x) * sin with cos/sin of cat(freqs, freqs)."""
    x = x.double()
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(pos.double(), inv_freq)  # (T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rotate_half = torch.cat((-x2, x1), dim=-1)
    return x * emb.cos() + rotate_half * emb.sin()


def ref_rope_complex(x, pos, base=10000.0):
    """RoFormer/GPT-J: consecutive channel pairs as complex numbers times e^{i m theta}."""
    x = x.double()
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.outer(pos.double(), theta)  # (T, d/2)
    rot = torch.polar(torch.ones_like(angles), angles)  # (T, d/2) complex128
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(x.shape)


# ------------------------------------------------------------------------------- sinusoidal
@pytest.mark.parametrize("n,dim", [(7, 8), (5, 7), (3, 1), (50, 16)])
def test_sinusoidal_table_matches_formula(n, dim):
    table = sinusoidal_table(n, dim, dtype=torch.float64)
    assert table.shape == (n, dim)
    torch.testing.assert_close(table, ref_sinusoidal(n, dim), atol=1e-12, rtol=0)
    assert sinusoidal_table(n, dim).dtype == torch.float32


def test_sinusoidal_table_known_values():
    t = sinusoidal_table(2, 4, base=10000.0, dtype=torch.float64)
    # position 1: sin(1), cos(1), sin(1/100), cos(1/100)
    expected = torch.tensor(
        [[0.0, 1.0, 0.0, 1.0], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(t, expected, atol=1e-15, rtol=0)


def test_sinusoidal_module_offset_and_positions():
    emb = SinusoidalPositionalEmbedding(32, 6)
    ref = ref_sinusoidal(32, 6).float()
    torch.testing.assert_close(emb(4, offset=3), ref[3:7], atol=1e-6, rtol=0)
    pos = torch.tensor([[0, 5, 31], [2, 2, 1]])
    torch.testing.assert_close(emb(pos), ref[pos], atol=1e-6, rtol=0)
    assert "table" not in emb.state_dict()
    with pytest.raises(ValueError, match="position 32"):
        emb(4, offset=29)
    with pytest.raises(ValueError, match="position 40"):
        emb(torch.tensor([1, 40]))


def test_learned_embedding_rows_and_errors():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(10, 4)
    assert isinstance(emb, torch.nn.Embedding)
    torch.testing.assert_close(emb(3, offset=2), emb.weight[2:5])
    torch.testing.assert_close(emb(torch.tensor([9, 0])), emb.weight[[9, 0]])
    out = emb(5)
    out.sum().backward()
    assert emb.weight.grad[:5].eq(1).all() and emb.weight.grad[5:].eq(0).all()
    with pytest.raises(ValueError, match=r"position 11 .*max_len=10"):
        emb(4, offset=8)
    with pytest.raises(ValueError, match="offset"):
        emb(2, offset=-1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_sinusoidal_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        sinusoidal_table(4, bad)


# ------------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("layout,ref", [("half", ref_rope_half), ("interleaved", ref_rope_complex)])
def test_rope_matches_reference_float64(layout, ref):
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, layout=layout, base=500.0)
    q = torch.randn(2, 4, 9, 16, dtype=torch.float64)  # (B, Hq, T, D)
    k = torch.randn(2, 2, 9, 16, dtype=torch.float64)  # (B, Hkv, T, D)
    q_rot, k_rot = rope(q, k)
    pos = torch.arange(9)
    torch.testing.assert_close(q_rot, ref(q, pos, base=500.0), atol=1e-12, rtol=0)
    torch.testing.assert_close(k_rot, ref(k, pos, base=500.0), atol=1e-12, rtol=0)
    # a rotation keeps norms, and actually moves the vectors past position 0
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
    assert (q_rot[:, :, 1:] - q[:, :, 1:]).abs().max() > 1e-2
    torch.testing.assert_close(q_rot[:, :, 0], q[:, :, 0])


def test_rope_layouts_differ_and_relate_by_permutation():
    """'interleaved' on x equals 'half' on x with channels regrouped (evens, then odds)."""
    torch.manual_seed(1)
    x = torch.randn(1, 1, 5, 8, dtype=torch.float64)
    half = RotaryEmbedding(8, layout="half")
    inter = RotaryEmbedding(8, layout="interleaved")
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])
    out_i, _ = inter(x, x)
    out_h, _ = half(x[..., perm], x[..., perm])
    torch.testing.assert_close(out_i[..., perm], out_h, atol=1e-12, rtol=0)
    assert (out_i - half(x, x)[0]).abs().max() > 1e-2


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_scores_depend_only_on_relative_position(layout):
    torch.manual_seed(2)
    rope = RotaryEmbedding(8, layout=layout)
    T = 12
    qv = torch.randn(8, dtype=torch.float64)
    kv = torch.randn(8, dtype=torch.float64)
    q = qv.expand(1, 1, T, 8)  # the same vector at every position
    k = kv.expand(1, 1, T, 8)
    q_rot, k_rot = rope(q, k)
    s = (q_rot @ k_rot.transpose(-1, -2))[0, 0]  # (T, T): s[m, n] = <rope(q, m), rope(k, n)>
    # Toeplitz: constant along each diagonal m - n
    torch.testing.assert_close(s[1:, 1:], s[:-1, :-1], atol=1e-12, rtol=0)
    # and not constant overall: the score does depend on m - n
    assert (s[0] - s[0, 0]).abs().max() > 1e-3
    # shifting both positions by 1000 leaves the score unchanged
    q_far, k_far = rope(q[:, :, :1], k[:, :, :1], offset=1000)
    torch.testing.assert_close((q_far * k_far).sum(), s[0, 0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_offset_equals_slice_of_longer_sequence(layout):
    torch.manual_seed(3)
    rope = RotaryEmbedding(8, layout=layout)
    q = torch.randn(2, 2, 10, 8)
    k = torch.randn(2, 1, 10, 8)
    q_all, k_all = rope(q, k)
    q_part, k_part = rope(q[:, :, 6:9], k[:, :, 6:9], offset=6)
    torch.testing.assert_close(q_part, q_all[:, :, 6:9], atol=1e-6, rtol=0)
    torch.testing.assert_close(k_part, k_all[:, :, 6:9], atol=1e-6, rtol=0)
    # explicit positions give the same thing
    q_pos, k_pos = rope(q[:, :, 6:9], k[:, :, 6:9], positions=torch.arange(6, 9))
    torch.testing.assert_close(q_pos, q_part, atol=0, rtol=0)
    # fewer queries than keys: queries are the last positions
    q_last, k_full = rope(q[:, :, 7:], k)
    torch.testing.assert_close(q_last, q_all[:, :, 7:], atol=1e-6, rtol=0)
    torch.testing.assert_close(k_full, k_all, atol=0, rtol=0)


def test_rope_batched_positions_for_packed_sequences():
    """(B, T) positions: each row uses its own positions (documents restarting at 0)."""
    torch.manual_seed(4)
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2], [5, 6, 7, 8, 9, 10]])
    out, _ = rope(x, x, positions=positions)
    for b in range(2):
        torch.testing.assert_close(out[b], ref_rope_half(x[b], positions[b]), atol=1e-12, rtol=0)


def test_rope_positions_beyond_max_seq_len_grow_the_table():
    torch.manual_seed(5)
    rope = RotaryEmbedding(8, max_seq_len=16)
    x = torch.randn(1, 1, 4, 8)
    out, _ = rope(x, x, offset=5000)
    ref = ref_rope_half(x, torch.arange(5000, 5004)).float()
    # the table is built in float64, so large angles stay accurate in float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_rope_partial_rotary_dim():
    torch.manual_seed(6)
    rope = RotaryEmbedding(12, rotary_dim=4, layout="half")
    x = torch.randn(1, 2, 5, 12, dtype=torch.float64)
    out, _ = rope(x, x)
    torch.testing.assert_close(
        out[..., :4], ref_rope_half(x[..., :4], torch.arange(5)), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(out[..., 4:], x[..., 4:], atol=0, rtol=0)


def test_rope_low_precision_input_keeps_dtype():
    torch.manual_seed(7)
    rope = RotaryEmbedding(16)
    x = torch.randn(1, 2, 33, 16)
    out, _ = rope(x.bfloat16(), x.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = ref_rope_half(x.bfloat16().double(), torch.arange(33))
    # one bf16 rounding of the output (relative 2^-8) on values of size <= |x|
    assert (out.double() - ref).abs().max() <= 2**-8 * x.abs().max() * 2


def test_apply_rotary_matches_module():
    torch.manual_seed(8)
    rope = RotaryEmbedding(8, layout="interleaved")
    x = torch.randn(1, 1, 4, 8)
    cos, sin = rope.cos_sin(4)
    out = apply_rotary(x, cos[:4], sin[:4], "interleaved")
    torch.testing.assert_close(out, ref_rope_complex(x, torch.arange(4)).float(), atol=1e-6, rtol=0)


def test_rope_validation_errors_name_the_value():
    with pytest.raises(ValueError, match="head_dim=7"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="'sideways'"):
        RotaryEmbedding(8, layout="sideways")
    with pytest.raises(ValueError, match="rotary_dim=10"):
        RotaryEmbedding(8, rotary_dim=10)
    with pytest.raises(ValueError, match="base"):
        RotaryEmbedding(8, base=-1.0)
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match=r"\(1, 1, 3, 6\)"):
        rope(torch.randn(1, 1, 3, 6), x)
    with pytest.raises(ValueError, match="offset.*-2"):
        rope(x, x, offset=-2)
    with pytest.raises(TypeError, match="float32"):
        rope(x, x, positions=torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        rope(x, x, positions=torch.arange(4))
    with pytest.raises(ValueError, match="'bogus'"):
        apply_rotary(x, torch.ones(3, 4), torch.ones(3, 4), "bogus")


# ------------------------------------------------------------------------------- ALiBi
def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]


def test_alibi_slopes_non_power_of_two():
    # 12 heads: the 8 slopes of n=8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (every other of n=16)
    expected_12 = [
        0.5,
        0.25,
        0.125,
        0.0625,
        0.03125,
        0.015625,
        0.0078125,
        0.00390625,
        0.7071067811865476,
        0.3535533905932738,
        0.1767766952966369,
        0.08838834764831845,
    ]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected_12), atol=0, rtol=1e-6)
    # 6 heads: slopes of n=4 (2^-2 .. 2^-8), then 2^-1, 2^-3 (every other of n=8)
    expected_6 = [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected_6), atol=0, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_alibi_slopes_rejects_bad_head_count(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        alibi_slopes(bad)
