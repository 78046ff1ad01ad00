"""Load Hugging Face weights into attnkit: build a small random GPT-2 with transformers, save
it, load it with ``attnkit.load`` and compare the logits of both on the same tokens.

    python examples/load_hf_weights.py --layers 2 --width 64
"""

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import attnkit

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--layers", type=int, default=2)
parser.add_argument("--width", type=int, default=64)
parser.add_argument("--seq-len", type=int, default=32)
args = parser.parse_args()

torch.manual_seed(0)
config = GPT2Config(
    vocab_size=500,
    n_positions=128,
    n_embd=args.width,
    n_layer=args.layers,
    n_head=4,
    bos_token_id=0,
    eos_token_id=0,
)
hf = GPT2LMHeadModel(config).eval()  # random weights: no download needed

with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)  # config.json + model.safetensors, as on the Hub
    model = attnkit.load(d).eval()

ids = torch.randint(0, config.vocab_size, (2, args.seq_len))  # (B, T)
with torch.no_grad():
    ours = model(ids).logits  # (B, T, V)
    theirs = hf(ids).logits
diff = (ours - theirs).abs().max().item()
print(f"loaded {type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters")
print(f"max abs logit diff vs transformers: {diff:.3e}")
assert diff <= 1e-4, diff
