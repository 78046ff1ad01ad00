"""Pre-train on many processes: the same script runs as one process or under torchrun, where
attnkit's training loop sets up the process group (gloo on CPU, NCCL on GPUs), wraps the model
in DDP, splits the batches and writes checkpoints from rank 0.

    torchrun --nproc_per_node 2 examples/torchrun.py --steps 100 --out runs/ddp
    python examples/torchrun.py --steps 20
"""

import argparse
import os
import tempfile

from attnkit.training import build, pretrain

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--out", default="", help="run directory, the same on every rank")
parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
args = parser.parse_args()

out = args.out or os.path.join(tempfile.gettempdir(), "attnkit-torchrun-example")
cfg = build(
    {
        "model": {"n_layer": 2, "n_heads": 2, "d_model": 32, "max_seq_len": 32},
        "data": {"corpus": "shakespeare", "tokenizer": "char"},
        "train": {
            "max_iters": args.steps,
            "batch_size": 4,  # per process: 2 processes train on 8 sequences a step
            "block_size": 32,
            "warmup_iters": min(10, args.steps // 2),
            "eval_interval": args.steps,
            "eval_iters": 2,
            "device": args.device,
        },
    },
    [],
)
summary = pretrain(cfg, out, overwrite=True)  # every rank calls it; rank 0 writes
if int(os.environ.get("RANK", "0")) == 0:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"{world} process(es), {args.steps} steps into {out}")
    print(f"best val loss {summary['best_val_loss']:.3f}")
