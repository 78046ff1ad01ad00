"""The pretrain arguments of a tiny character-level GPT on tinyshakespeare (about 15k
parameters, one thread, no progress bar), shared by the fault and soak scripts."""

TINY_GPT = [
    "--config",
    "gpt-shakespeare-char",
    "--model.n_layer",
    "1",
    "--model.n_heads",
    "2",
    "--model.d_model",
    "32",
    "--model.max_seq_len",
    "32",
    "--train.batch_size",
    "8",
    "--train.block_size",
    "32",
    "--train.threads",
    "1",
    "--train.progress",
    "false",
    "--train.eval_iters",
    "4",
    "--train.warmup_iters",
    "0",
]
