"""Self-attention from scratch on real MiniLM weights (docs/learn/from-scratch.md).

    python examples/from_scratch.py [--out DIR]

Every step prints the real tensors and writes the PNG the page shows; every number the page
states is checked by an ``check(...)`` below, and the script ends with "N assertions passed".
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: it may choose the backend (the library never does)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attnkit  # noqa: E402
from attnkit.attention import attention  # noqa: E402

torch.set_printoptions(precision=3, sci_mode=False, linewidth=100)
PASSED = 0


def check(cond: bool, message: str) -> None:
    global PASSED
    assert cond, message
    PASSED += 1


def heatmap(path: Path, m: torch.Tensor, rows: list[str], cols: list[str], title: str) -> None:
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(cols), 1 + 0.45 * len(rows)))
    im = ax.imshow(m.detach().numpy(), cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, rotation=60)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


SPORT = [
    "he swung the bat",
    "she gripped the bat and hit a home run",
    "the bat cracked as the ball flew over the fence",
    "he bought a new bat for the cricket season",
]
ANIMAL = [
    "a bat flew out of the cave",
    "the bat hung upside down from the branch",
    "a bat hunts insects at night",
    "the bat spread its wings in the dark",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: temp)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="from_scratch_"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)

    enc = attnkit.Encoder.load("minilm")
    model, tok = enc.model, enc.tokenizer
    block = model.blocks[0]
    H, C = block.attn.n_heads, block.attn.d_model
    D = C // H

    # 1. tokenize ------------------------------------------------------------------------
    a, b = "he swung the bat", "a bat flew out of the cave"
    ea, eb = tok.encode(a), tok.encode(b)
    print("1. tokens a:", ea.tokens, ea.ids)
    print("   tokens b:", eb.tokens, eb.ids)
    check(ea.tokens == ["[CLS]", "he", "swung", "the", "bat", "[SEP]"], "tokens of a")
    check(len(eb.tokens) == 9, "b is 9 tokens with [CLS] and [SEP]")
    check(ea.ids[4] == eb.ids[2], "'bat' is the same id in both sentences")

    # 2. embed: word + position + type, LayerNorm ------------------------------------------
    ids = torch.tensor([ea.ids])  # (1, T)
    T = ids.shape[1]
    with torch.no_grad():
        word = model.embed.tok.weight[ids[0]]  # (T, C)
        pos = model.embed.pos.weight[:T]  # (T, C)
        typ = model.embed.types.weight[0]  # (C,)
        x = model.embed.norm(word + pos + typ)  # (T, C)
        ref = model.embed(ids)[0]
    print("2. embeddings x[:, :6]\n", x[:, :6])
    check(float((x - ref).abs().max()) < 1e-6, "hand-made embeddings equal model.embed")
    heatmap(
        out / "embeddings.png",
        x[:, :32],
        ea.tokens,
        [str(i) for i in range(32)],
        "embeddings (first 32 of 384 dims)",
    )

    # 3. Q/K/V with layer 0's weights -----------------------------------------------------
    with torch.no_grad():
        W, bias = block.attn.qkv_proj.weight, block.attn.qkv_proj.bias  # (3C, C), (3C,)
        q, k, v = (x @ W.T + bias).split(C, dim=-1)  # (T, C) each
        qh, kh, vh = (t.view(T, H, D).transpose(0, 1) for t in (q, k, v))  # (H, T, D)
    print("3. q head 0 [:, :6]\n", qh[0, :, :6])
    check(tuple(W.shape) == (1152, 384), "one (1152, 384) matrix makes q, k and v")
    check(model.embed.pos.weight.shape[0] == 512, "one learned row per position 0..511")
    check(tuple(qh.shape) == (12, 6, 32), "12 heads of 32 dims over 6 tokens")

    # 4-6. scores, scaling, softmax --------------------------------------------------------
    scores = qh @ kh.transpose(-1, -2)  # (H, T, T)
    scaled = scores / math.sqrt(D)
    weights = scaled.softmax(dim=-1)
    print("4. raw scores head 0\n", scores[0])
    print("5. scaled by 1/sqrt(32)\n", scaled[0])
    print("6. softmax weights head 0\n", weights[0])
    check(abs(1 / math.sqrt(D) - 0.1768) < 1e-4, "1/sqrt(32) is 0.1768")
    check(bool(torch.allclose(weights.sum(-1), torch.ones(H, T), atol=1e-6)), "rows sum to 1")
    ent_raw = -(scores.softmax(-1) * scores.log_softmax(-1)).sum(-1).mean()
    ent_scaled = -(weights * scaled.log_softmax(-1)).sum(-1).mean()
    print(f"   mean entropy unscaled {ent_raw:.3f} nats, scaled {ent_scaled:.3f} nats")
    check(float(ent_scaled) > float(ent_raw), "scaling makes the softmax less peaked")
    heatmap(out / "scores.png", scaled[0], ea.tokens, ea.tokens, "scaled scores, layer 0 head 0")
    heatmap(out / "weights.png", weights[0], ea.tokens, ea.tokens, "softmax weights, head 0")

    # 7. weighted sum, multi-head, output projection ---------------------------------------
    heads = weights @ vh  # (H, T, D)
    concat = heads.transpose(0, 1).reshape(T, C)  # (T, C)
    with torch.no_grad():
        attn_out = block.attn.out_proj(concat)  # (T, C)
        model_attn = block.attn(x[None])[0]
    print("7. attention output [:, :6]\n", attn_out[:, :6])
    diff_mod = float((attn_out - model_attn).abs().max())
    check(diff_mod <= 1e-5, f"by hand vs the model's attention layer: {diff_mod:.2e}")
    fig, axs = plt.subplots(2, 6, figsize=(13, 4.6))
    for h, ax in enumerate(axs.flat):
        ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h}", fontsize=8)
        ax.set_xticks(range(T), ea.tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(T), ea.tokens, fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=80)
    plt.close(fig)

    # 8. masking: the two sentences batched, a is padded ------------------------------------
    Tb = len(eb.ids)
    pad = enc.pad_id
    batch = torch.tensor([ea.ids + [pad] * (Tb - T), eb.ids])  # (2, Tb)
    valid = batch != pad  # (2, Tb) True = real token
    with torch.no_grad():
        xb = model.embed(batch)
        qb, kb, vb = (xb @ W.T + bias).split(C, dim=-1)
        qb, kb, vb = (t.view(2, Tb, H, D).transpose(1, 2) for t in (qb, kb, vb))  # (2,H,Tb,D)
    sb = (qb @ kb.transpose(-1, -2)) / math.sqrt(D)  # (2, H, Tb, Tb)
    sb = sb.masked_fill(~valid[:, None, None, :], float("-inf"))
    wb = sb.softmax(-1)
    print("8. masked weights, sentence a padded to 9, head 0\n", wb[0, 0])
    check(float(wb[0, :, :, T:].abs().max()) == 0.0, "padding gets exactly zero weight")
    ob = wb @ vb
    check(float((ob[0, :, :T] - heads).abs().max()) <= 1e-5, "padding changes no real output")
    heatmap(
        out / "mask.png",
        wb[0, 0],
        batch_tokens(tok, batch[0]),
        batch_tokens(tok, batch[0]),
        "a padded to 9 tokens: masked keys get 0",
    )

    # 9. the fast backend ------------------------------------------------------------------
    fast = attention(qb, kb, vb, valid_key_mask=valid, backend="sdpa")
    slow = attention(qb, kb, vb, valid_key_mask=valid, backend="math")
    d_fast = float((fast - ob).masked_fill(~valid[:, None, :, None], 0).abs().max())
    d_math = float((slow - ob).masked_fill(~valid[:, None, :, None], 0).abs().max())
    with torch.no_grad():
        layer = block(model.embed(ids))[0]
        by_hand = block.norm1(x + attn_out)
        by_hand = block.norm2(by_hand + block.mlp(by_hand))
    d_layer = float((layer - by_hand).abs().max())
    print(
        f"9. max |sdpa - by hand| {d_fast:.2e}, |math - by hand| {d_math:.2e}, "
        f"|layer 0 - by hand| {d_layer:.2e}"
    )
    check(d_fast <= 1e-5, f"SDPA equals the hand computation ({d_fast:.2e})")
    check(d_math <= 1e-5, f"math backend equals the hand computation ({d_math:.2e})")
    check(d_layer <= 1e-5, f"the model's layer 0 equals the hand computation ({d_layer:.2e})")

    # 10. positions -------------------------------------------------------------------------
    with torch.no_grad():
        no_pos = model.embed.norm(word + typ)
        perm = torch.tensor([0, 3, 2, 1, 4, 5])  # swap "he" and "the"
        shuffled = model.embed.norm(word[perm] + pos + typ)
        hn = block(no_pos[None])[0]
        hp = block(shuffled[None])[0][perm.argsort()]
        hx = block(x[None])[0]
    cos_np = float(F.cosine_similarity(hx[4], hn[4], dim=0))
    cos_pp = float(F.cosine_similarity(hx[4], hp[4], dim=0))
    print(
        f"10. 'bat' after layer 0: cos(with, without positions) {cos_np:.3f}, "
        f"cos(with, words permuted) {cos_pp:.3f}"
    )
    check(cos_np < 0.999 and cos_pp < 0.999, "positions change the layer's output")
    with torch.no_grad():  # without positions, attention is blind to order
        hq = block(no_pos[perm][None])[0]
    eq = float((hq - hn[perm]).abs().max())
    check(eq <= 1e-5, f"no positions: permuted input gives permuted output ({eq:.1e})")
    heatmap(
        out / "positions.png",
        pos[:T, :32],
        [f"pos {i}" for i in range(T)],
        [str(i) for i in range(32)],
        "learned position embeddings (first 32 dims)",
    )

    # 11. word sense layer by layer ---------------------------------------------------------
    vecs = torch.stack([enc.word_vectors_by_layer(s, "bat") for s in SPORT + ANIMAL])
    L1 = vecs.shape[1]
    unit = F.normalize(vecs, dim=-1)  # (8, L+1, C)
    sims = torch.einsum("ilc,jlc->lij", unit, unit)  # (L+1, 8, 8)
    n = len(SPORT)
    same, cross = [], []
    for li in range(L1):
        s = sims[li]
        off = ~torch.eye(n, dtype=torch.bool)
        same.append(float((s[:n, :n][off].mean() + s[n:, n:][off].mean()) / 2))
        cross.append(float(s[:n, n:].mean()))
    gaps = [s - c for s, c in zip(same, cross)]
    print("11. layer   same    cross   gap")
    for li in range(L1):
        print(f"    {li:>5}  {same[li]:.3f}  {cross[li]:.3f}  {gaps[li]:+.3f}")
    best = max(range(L1), key=lambda i: gaps[i])
    print(f"    largest gap at layer {best}")
    check(gaps[0] < 0.02, "after the embeddings the senses are not apart yet")
    check(all(g > 0 for g in gaps[1:]), "same sense is closer than cross sense at every layer")
    check(gaps[best] > gaps[-1], "the senses part most in a middle layer, not the last")
    check(min(cross) > 0.8, "every pair has a high cosine, cross-sense ones included")
    with torch.no_grad():  # depth 0: the word's row plus the row of its position, no context
        e0 = model.embed.norm(model.embed.tok.weight[ea.ids[4]] + pos[4] + typ)
    d0 = float((vecs[0, 0] - e0).abs().max())
    check(d0 <= 1e-5, f"depth 0 of 'bat' is its word + position + type embedding ({d0:.1e})")
    check(0 < best < L1 - 1, "the largest gap is in a middle layer")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(L1), same, "o-", label="same sense")
    ax.plot(range(L1), cross, "s-", label="cross sense")
    ax.plot(range(L1), gaps, "^-", label="gap")
    ax.set_xlabel("depth (0 = embeddings)")
    ax.set_ylabel("mean cosine of 'bat'")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sense_by_layer.png", dpi=90)
    plt.close(fig)

    # 12. the cost: an N x N score matrix per head ------------------------------------------
    print("12. float32 score matrix of one head:")
    for nk in (1, 4, 16, 64):
        nbytes = (nk * 1024) ** 2 * 4
        print(f"    N={nk}k: {nbytes / 2**20:,.0f} MiB")
    check((64 * 1024) ** 2 * 4 == 16 * 2**30, "N=64k: 16 GiB for one head's scores")
    check((1024) ** 2 * 4 == 4 * 2**20, "N=1k: 4 MiB")

    elapsed = time.perf_counter() - t0
    print(f"PNGs in {out}; {elapsed:.1f} s")
    print(f"{PASSED} assertions passed")


def batch_tokens(tok, ids: torch.Tensor) -> list[str]:
    return [tok.id_to_token(int(i)) for i in ids]


if __name__ == "__main__":
    main()
