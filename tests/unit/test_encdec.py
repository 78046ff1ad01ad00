"""The encoder-decoder: a float64 reference forward written here from the state dict (no attnkit
code in it), cached decoding against the full forward, padding, the loss, the encoder variant,
the config's checks, the presets and the attnkit checkpoint format."""

import math

import pytest
import torch

import attnkit
from attnkit.models import build_model
from attnkit.models.encdec import EncoderDecoder, seq2seq_loss, shift_right
from attnkit.models.encdec_config import EncDecConfig, encdec_preset_names, get_encdec_preset

SMALL = dict(vocab_size=53, d_model=32, n_heads=4, d_ff=40, n_encoder_layers=2, n_decoder_layers=3)

CONFIGS = {
    "marian": get_encdec_preset("tiny-marian", **SMALL, pad_token_id=52, decoder_start_token_id=52),
    "bart": get_encdec_preset("tiny-bart", **SMALL),
    "t5": get_encdec_preset(
        "tiny-t5", **SMALL, head_dim=6, relative_buckets=8, relative_max_distance=10
    ),
    # pre-norm LayerNorm with final norms, separate token tables and an untied head
    "pre-untied": get_encdec_preset(
        "tiny-bart",
        **SMALL,
        norm_placement="pre",
        final_norm=True,
        embed_norm=False,
        share_embeddings=False,
        tie_embeddings=False,
        mlp="relu",
        scale_embedding=True,
    ),
}


# --------------------------------------------------------------------------------------------
# the float64 reference
# --------------------------------------------------------------------------------------------
def ref_buckets(rel: torch.Tensor, bidirectional: bool, n: int, max_distance: int):
    out = torch.zeros_like(rel)
    if bidirectional:
        n //= 2
        out += (rel > 0).long() * n
        d = rel.abs()
    else:
        d = torch.where(rel < 0, -rel, torch.zeros_like(rel))
    exact = n // 2
    far = [
        min(
            n - 1,
            exact + int(math.log(max(x, 1) / exact) / math.log(max_distance / exact) * (n - exact)),
        )
        for x in d.flatten().tolist()
    ]
    far = torch.tensor(far).view_as(d)
    return out + torch.where(d < exact, d, far)


def reference_logits(model, src, mask, dec):
    """The model's logits computed from its state dict with plain tensor operations."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    C, H, D = cfg.d_model, cfg.n_heads, cfg.head_dim

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if cfg.bias else y

    def norm(x, name):
        w = sd[name + ".weight"]
        if cfg.norm == "layernorm":
            mu = x.mean(-1, keepdim=True)
            var = ((x - mu) ** 2).mean(-1, keepdim=True)
            y = (x - mu) / torch.sqrt(var + cfg.norm_eps) * w
            return y + sd[name + ".bias"] if cfg.bias else y
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def act(x):
        return {
            "relu": torch.relu,
            "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
            "silu": lambda t: t / (1 + torch.exp(-t)),
        }[cfg.mlp](x)

    def split(t):  # (B, T, H*D) -> (B, H, T, D)
        return t.view(t.shape[0], t.shape[1], H, D).transpose(1, 2)

    def attend(q, k, v, allowed, bias):
        s = q @ k.transpose(-1, -2) * (1 / math.sqrt(D) if cfg.scale_attention else 1.0)
        s = (s + bias).masked_fill(~allowed, -math.inf)
        y = torch.softmax(s, -1) @ v  # (B, H, Tq, D)
        return y.transpose(1, 2).reshape(q.shape[0], q.shape[2], H * D)

    def rel_bias(stack, T, S, bidirectional):
        if cfg.positional != "relative":
            return torch.zeros(())
        rel = torch.arange(S)[None, :] - torch.arange(T)[:, None]
        idx = ref_buckets(rel, bidirectional, cfg.relative_buckets, cfg.relative_max_distance)
        return sd[f"{stack}.rel_bias.weight"][idx].permute(2, 0, 1)[None]  # (1, H, T, S)

    def embed(stack, ids):
        tok = sd[
            f"{stack}.embed.tok.weight" if not cfg.share_embeddings else "encoder.embed.tok.weight"
        ]
        x = tok[ids] * (math.sqrt(C) if cfg.scale_embedding else 1.0)
        T = ids.shape[1]
        if cfg.positional == "learned":
            x = x + sd[f"{stack}.embed.pos.weight"][torch.arange(T) + cfg.position_offset]
        elif cfg.positional == "sinusoidal":
            half = (C + 1) // 2
            p = torch.arange(T, dtype=torch.float64)[:, None]
            sin = torch.sin(p / 10000 ** (2 * torch.arange(half, dtype=torch.float64) / C))
            cos = torch.cos(p / 10000 ** (2 * torch.arange(C - half, dtype=torch.float64) / C))
            x = x + torch.cat([sin, cos], dim=1).float().double()  # the table is float32
        return norm(x, f"{stack}.embed.norm") if cfg.embed_norm else x

    def sublayer(x, f, name):
        if cfg.norm_placement == "pre":
            return x + f(norm(x, name))
        return norm(x + f(x), name)

    B, S = src.shape
    T = dec.shape[1]
    keys = mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    x = embed("encoder", src)
    enc_bias = rel_bias("encoder", S, S, True)
    for i in range(cfg.n_encoder_layers):
        p = f"encoder.blocks.{i}"

        def self_attn(h, p=p):
            q, k, v = lin(h, f"{p}.attn.qkv_proj").split(H * D, -1)
            return lin(attend(split(q), split(k), split(v), keys, enc_bias), f"{p}.attn.out_proj")

        x = sublayer(x, self_attn, f"{p}.norm1")
        x = sublayer(
            x, lambda h, p=p: lin(act(lin(h, f"{p}.mlp.up")), f"{p}.mlp.down"), f"{p}.norm2"
        )
    memory = norm(x, "encoder.norm") if cfg.final_norm else x

    y = embed("decoder", dec)
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    dec_bias = rel_bias("decoder", T, T, False)
    for i in range(cfg.n_decoder_layers):
        p = f"decoder.blocks.{i}"

        def self_attn(h, p=p):
            q, k, v = lin(h, f"{p}.self_attn.qkv_proj").split(H * D, -1)
            out = attend(split(q), split(k), split(v), causal, dec_bias)
            return lin(out, f"{p}.self_attn.out_proj")

        def cross(h, p=p):
            q = lin(h, f"{p}.cross_attn.q_proj")
            k, v = lin(memory, f"{p}.cross_attn.kv_proj").split(H * D, -1)
            return lin(attend(split(q), split(k), split(v), keys, 0.0), f"{p}.cross_attn.out_proj")

        y = sublayer(y, self_attn, f"{p}.norm1")
        y = sublayer(y, cross, f"{p}.norm2")
        y = sublayer(
            y, lambda h, p=p: lin(act(lin(h, f"{p}.mlp.up")), f"{p}.mlp.down"), f"{p}.norm3"
        )
    if cfg.final_norm:
        y = norm(y, "decoder.norm")
    if cfg.scale_decoder_output:
        y = y * C**-0.5
    head = (
        sd["lm_head.proj.weight"]
        if not cfg.tie_embeddings
        else (
            sd["encoder.embed.tok.weight"]
            if cfg.share_embeddings
            else sd["decoder.embed.tok.weight"]
        )
    )
    logits = y @ head.T
    return logits + sd["logits_bias"] if cfg.logits_bias else logits


def make(name, seed=0):
    torch.manual_seed(seed)
    model = EncoderDecoder(CONFIGS[name]).double().eval()
    with torch.no_grad():  # away from the small initialisation, norms included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def batch(cfg, B=3, S=10, T=8):
    src = torch.randint(3, cfg.vocab_size - 1, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    src[mask == 0] = cfg.pad_token_id
    dec = torch.randint(3, cfg.vocab_size - 1, (B, T))
    return src, mask, dec


@pytest.fixture(params=sorted(CONFIGS))
def name(request):
    return request.param


def test_forward_matches_the_float64_reference(name):
    model = make(name)
    src, mask, dec = batch(model.config)
    with torch.no_grad():
        got = model(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    want = reference_logits(model, src, mask, dec)
    assert got.shape == (3, 8, model.config.vocab_size)
    assert want.abs().max() > 1.0
    assert (got - want).abs().max().item() < 1e-10


def test_cached_decoding_equals_the_full_forward(name):
    model = make(name)
    src, mask, dec = batch(model.config)
    with torch.no_grad():
        full = model(src, mask, decoder_input_ids=dec).logits
        cache = model.new_cache(model.encode(src, mask), mask)
        steps = [model.decode_step(dec[:, :3], cache)]
        steps += [model.decode_step(dec[:, t : t + 1], cache) for t in range(3, 8)]
    assert cache.length == 8
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-10


def test_cross_attention_keys_are_computed_once_per_source():
    model = make("t5")
    src, mask, dec = batch(model.config)
    calls = []
    for blk in model.decoder.blocks:
        blk.cross_attn.kv_proj.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        cache = model.new_cache(model.encode(src, mask), mask)
        for t in range(8):
            model.decode_step(dec[:, t : t + 1], cache)
    assert len(calls) == model.config.n_decoder_layers


def test_padding_does_not_change_a_rows_logits(name):
    model = make(name)
    src, mask, dec = batch(model.config)
    with torch.no_grad():
        padded = model(src, mask, decoder_input_ids=dec).logits
        alone = model(src[1:2, :6], decoder_input_ids=dec[1:2]).logits
    assert (padded[1:2] - alone).abs().max().item() < 1e-10


def test_decoder_padding_mask_left_padded_rows():
    model = make("bart")
    src, mask, dec = batch(model.config)
    dmask = torch.ones_like(dec)
    dmask[0, :3] = 0  # row 0's first 3 decoder tokens are padding
    with torch.no_grad():
        out = model(src, mask, decoder_input_ids=dec, decoder_attention_mask=dmask).logits
        cache = model.new_cache(model.encode(src, mask), mask)
        steps = [model.decode_step(dec[:, t : t + 1], cache, dmask[:, : t + 1]) for t in range(8)]
    assert (torch.cat(steps, 1) - out)[:, 3:].abs().max().item() < 1e-10
    assert (torch.cat(steps, 1)[1:] - out[1:]).abs().max().item() < 1e-10


def test_labels_loss_and_shift_right():
    model = make("marian")
    cfg = model.config
    src, mask, labels = batch(cfg)
    labels[1, 5:] = -100
    dec = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
    assert dec[:, 0].tolist() == [cfg.decoder_start_token_id] * 3
    assert torch.equal(dec[:, 1:][labels[:, :-1] != -100], labels[:, :-1][labels[:, :-1] != -100])
    assert dec[1, 6:].tolist() == [cfg.pad_token_id] * 2  # ignored labels became pads
    out = model(src, mask, labels=labels)
    with torch.no_grad():
        same = model(src, mask, decoder_input_ids=dec).logits
    assert torch.equal(out.logits, same)
    logp = torch.log_softmax(out.logits.double(), -1)
    keep = labels != -100
    want = -logp[keep].gather(-1, labels[keep][:, None]).mean()
    assert abs(out.loss.item() - want.item()) < 1e-6  # the loss is computed in float32
    smooth = seq2seq_loss(out.logits, labels, label_smoothing=0.1)
    uniform = -logp[keep].mean(-1).mean()
    assert abs(smooth.item() - (0.9 * want + 0.1 * uniform).item()) < 1e-6


def test_every_parameter_gets_a_gradient(name):
    model = make(name).float().train()
    src, mask, labels = batch(model.config)
    model(src, mask, labels=labels).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_reorder_expands_and_selects_cache_rows():
    model = make("t5")
    src, mask, dec = batch(model.config)
    with torch.no_grad():
        cache = model.new_cache(model.encode(src, mask), mask)
        model.decode_step(dec[:, :2], cache)
        cache.reorder(torch.tensor([2, 2, 0]))
        got = model.decode_step(dec[[2, 2, 0], 2:4], cache)
        full = model(src[[2, 2, 0]], mask[[2, 2, 0]], decoder_input_ids=dec[[2, 2, 0], :4]).logits
    assert cache.batch_size == 3
    assert (got - full[:, 2:]).abs().max().item() < 1e-10


def test_encoder_variant_runs_and_local_covering_all_keys_is_exact():
    cfg = CONFIGS["bart"]
    exact = EncoderDecoder(cfg).double().eval()
    local = EncoderDecoder(
        cfg.replace(encoder_attention="local", encoder_attention_params={"block_size": 64})
    ).double()
    local.load_state_dict(exact.state_dict())
    kernels = {type(b.attn.kernel).__name__ for b in local.encoder.blocks}
    assert kernels == {"LocalAttention"}
    src, mask, dec = batch(cfg)
    with torch.no_grad():
        a = exact(src, mask, decoder_input_ids=dec).logits
        b = local.eval()(src, mask, decoder_input_ids=dec).logits
    assert (a - b).abs().max().item() < 1e-10  # one block of 64 covers every key
    # the same through attention surgery on the encoder's layers (the kernel seam)
    from attnkit.surgery import swap_attention

    swapped = swap_attention(exact, "local", layers=range(cfg.n_encoder_layers), block_size=64)
    assert swapped.meta.swaps[0].layers == tuple(range(cfg.n_encoder_layers))
    with torch.no_grad():
        c = swapped(src, mask, decoder_input_ids=dec).logits
    assert (a - c).abs().max().item() < 1e-10
    performer = EncoderDecoder(
        cfg.replace(encoder_attention="performer", encoder_attention_params={"nb_features": 16})
    ).eval()
    with torch.no_grad():
        out = performer(src, mask, decoder_input_ids=dec).logits
    assert out.shape == a.shape and torch.isfinite(out).all()


def test_transformer_base_has_the_papers_shape():
    with torch.device("meta"):
        model = build_model("transformer-base")
    cfg = model.config
    assert (cfg.n_encoder_layers, cfg.n_decoder_layers, cfg.d_model, cfg.n_heads, cfg.d_ff) == (
        6,
        6,
        512,
        8,
        2048,
    )
    C, F_ = 512, 2048
    attn = 4 * C * C + 4 * C
    mlp = 2 * C * F_ + F_ + C
    enc = attn + mlp + 2 * 2 * C
    dec = 2 * attn + mlp + 3 * 2 * C
    assert model.num_parameters() == 6 * enc + 6 * dec + 37000 * C  # 63,082,496: "65M"
    assert model.num_parameters() == 63_082_496


def test_presets_build_and_run():
    for preset in encdec_preset_names():
        if preset == "transformer-base":
            continue
        model = build_model(preset).eval()
        ids = torch.randint(3, 100, (2, 5))
        out = model(input_ids=ids, labels=ids)
        assert out.logits.shape == (2, 5, model.config.vocab_size)
        assert math.isfinite(out.loss.item())


def test_save_and_load_round_trip(tmp_path):
    model = make("pre-untied").float()
    attnkit.save(model, tmp_path / "m")
    back = attnkit.load(tmp_path / "m")
    assert isinstance(back, EncoderDecoder) and back.config == model.config
    src, mask, dec = batch(model.config)
    with torch.no_grad():
        assert torch.equal(
            back(src, mask, decoder_input_ids=dec).logits,
            model(src, mask, decoder_input_ids=dec).logits,
        )
    tied = make("t5").float()
    attnkit.save(tied, tmp_path / "t")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "encoder.embed.tok.weight" in keys and "lm_head.proj.weight" not in keys
    assert "decoder.embed.tok.weight" not in keys


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"d_model": 30}, r"EncDecConfig.d_model must be a multiple of n_heads=4, got 30"),
        ({"positional": "rope"}, r"EncDecConfig.positional must be one of"),
        ({"position_offset": 2, "positional": "sinusoidal"}, r"position_offset must be 0 unless"),
        ({"pad_token_id": 512}, r"pad_token_id must be an int in \[0, vocab_size=512\)"),
        ({"encoder_attention": "nope"}, r"encoder_attention must be 'exact' or one of"),
        ({"encoder_attention_params": {"block_size": 8}}, r"empty when encoder_attention='exact'"),
        ({"dropout": 1.0}, r"EncDecConfig.dropout must be"),
        (
            {"positional": "relative", "position_offset": 0, "relative_buckets": 2},
            r"relative_buckets must be an int >= 4",
        ),
        (
            {"positional": "relative", "position_offset": 0, "relative_max_distance": 16},
            r"relative_max_distance must be an int > relative_buckets // 2 = 16, got 16",
        ),
    ],
)
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        get_encdec_preset("tiny-bart", **changes)


def test_config_refuses_a_variant_with_relative_positions_and_unknown_keys():
    with pytest.raises(
        ValueError, match="encoder_attention must be 'exact' with positional='relative'"
    ):
        get_encdec_preset("tiny-t5", encoder_attention="local")
    with pytest.raises(ValueError, match=r"unknown EncDecConfig field\(s\) \['n_layers'\]"):
        EncDecConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="unknown encoder-decoder preset 'tiny-x'"):
        get_encdec_preset("tiny-x")


def test_bad_calls_are_named():
    model = make("marian")
    src, mask, dec = batch(model.config)
    with pytest.raises(ValueError, match="give decoder_input_ids"):
        model(src, mask)
    with pytest.raises(ValueError, match="batch size 2 but the memory has 3"):
        model(src, mask, decoder_input_ids=dec[:2])
    with pytest.raises(ValueError, match="source of 300 tokens exceeds max_seq_len=256"):
        model.encode(torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match=r"encoder_states must be \(B, S, d_model=32\)"):
        model.new_cache(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="cache must be a DecoderCache"):
        model.decode(dec, cache=[])


def test_flops_per_token_counts_weights_and_attention_by_hand():
    model = EncoderDecoder(CONFIGS["bart"])  # C = H*D = 32, d_ff 40, V 53, 2 + 3 layers
    enc = 3 * 32 * 32 + 32 * 32 + 2 * 40 * 32  # qkv, out, MLP
    dec = 4 * 32 * 32 + (32 + 64 + 32) * 32 + 2 * 40 * 32  # self, cross (q, kv, out), MLP
    matmul = 2 * enc + 3 * dec + 53 * 32  # + the (tied) LM head, once
    attn = 4 * 32 * (10 * 2 + (10 / 2 + 10) * 3)  # encoder keys, decoder self + cross keys
    assert model.flops_per_token(seq_len=10) == 2 * matmul + attn
    assert model.flops_per_token(seq_len=10, training=True) == 3 * (2 * matmul + attn)
