"""Train a tiny encoder-decoder from scratch, then decode with greedy and beam search.

The "language pair" is made up so the script runs anywhere in seconds: the target is the
source's letters in reverse order. For real verse pairs use the shipped config:
``attnkit pretrain --config translate-bible-en-es`` then ``attnkit translate``.

    python examples/translate.py --steps 300
"""

import argparse
import random

import torch

import attnkit
from attnkit.models.encdec import EncoderDecoder
from attnkit.models.encdec_config import get_encdec_preset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--beams", type=int, default=4)
args = parser.parse_args()

PAD, EOS, START = 0, 1, 2  # token ids; letters a..z are 3..28
rng = random.Random(0)
torch.manual_seed(0)


def ids(word: str) -> list[int]:
    return [3 + ord(c) - ord("a") for c in word] + [EOS]


def batch(words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [ids(w) for w in words]
    width = max(map(len, rows))
    padded = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    return padded, padded != PAD  # ids (B, S) and the attention mask, True at real tokens


def random_word() -> str:
    return "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))


config = get_encdec_preset(
    "tiny-marian", vocab_size=29, d_model=64, n_heads=4, d_ff=128, n_encoder_layers=2,
    n_decoder_layers=2, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START,
)  # fmt: skip
model = EncoderDecoder(config)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
for step in range(args.steps):
    words = [random_word() for _ in range(32)]
    src, mask = batch(words)
    labels, _ = batch([w[::-1] for w in words])
    loss = model(
        input_ids=src, attention_mask=mask, labels=labels.masked_fill(labels == PAD, -100)
    ).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == args.steps - 1:
        print(f"step {step}: loss {loss.item():.3f}")

model.eval()
tests = ["abcd", "hgfedc", "bead"]
src, mask = batch(tests)
for beams in (1, args.beams):
    out = attnkit.generate(model, src, attention_mask=mask, num_beams=beams, max_new_tokens=8)
    decoded = ["".join(chr(ord("a") + t - 3) for t in row if t > 2) for row in out.tolist()]
    right = sum(d == w[::-1] for d, w in zip(decoded, tests))
    print(f"beams={beams}: {decoded} ({right}/{len(tests)} reversed exactly)")
