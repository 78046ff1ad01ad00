"""The ``attnkit`` command line: the command table and :func:`main`.

Every command is one row of :data:`COMMANDS`: its words, the function that runs it, the
function that adds its options and a one-line help (see :class:`~attnkit.cli.dispatch.Command`).
A command's module is imported only when that command runs, so ``attnkit version`` does not
pay for the benchmarks, and a command whose module is missing or broken does not take the
others down. Adding a command is adding a row and its module under ``attnkit/cli/``.

Failures are one line on stderr (``attnkit: error: ...``): bad input (a missing input file
included) exits 2, a missing optional package (naming the extra to install) or any other
failure 1, Ctrl-C 130 and a closed pipe 141. ``ATTNKIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from attnkit.cli.dispatch import Command, log_to_stderr, run

__all__ = ["COMMANDS", "Command", "main"]


def _bench(name: str, help: str, example: str) -> Command:
    """``attnkit bench <name>``: its two functions are in attnkit/cli/bench.py."""
    return Command(
        f"bench {name}",
        f"attnkit.cli.bench:{name}_command",
        f"attnkit.cli.bench:{name}_arguments",
        help,
        examples=(example,),
    )


COMMANDS: tuple[Command, ...] = (
    _bench(
        "attention",
        "time and peak memory of every attention backend next to raw PyTorch SDPA",
        "attnkit bench attention --quick --sizes 1k,2k,4k --out bench-results",
    ),
    _bench(
        "variants",
        "speed, memory and error of the approximate attention variants",
        "attnkit bench variants --sizes 1k,4k,16k --out bench-results",
    ),
    _bench(
        "embed",
        "sentence-embedding throughput of attnkit next to sentence-transformers (MiniLM)",
        "attnkit bench embed --rounds 3 --out bench-results",
    ),
    _bench(
        "train",
        "training throughput (tokens/s) and MFU of a GPT on random tokens",
        "attnkit bench train --config gpt-shakespeare-char --iters 20",
    ),
    _bench(
        "generate",
        "KV-cached decoding speed of attnkit next to HF transformers (GPT-2 124M shape)",
        "attnkit bench generate --quick --out bench-results",
    ),
    _bench(
        "seq2seq",
        "translation training tokens/s, BLEU/chrF and beam-search speed next to HF and CTranslate2",
        "attnkit bench seq2seq --quick --out bench-results",
    ),
    _bench(
        "viewer",
        "size, first paint and head-switch time of the HTML attention viewer in Chromium",
        "attnkit bench viewer --quick --out bench-results",
    ),
    Command(
        "convert",
        "attnkit.cli.checkpoints:convert_command",
        "attnkit.cli.checkpoints:convert_arguments",
        "convert a checkpoint: --from-hf DIR OUT (HF -> attnkit) or --to-hf DIR OUT",
        examples=(
            "attnkit convert --from-hf gpt2-hf runs/gpt2",
            "attnkit convert --to-hf runs/char char-hf",
        ),
    ),
    Command(
        "models",
        "attnkit.cli.catalog:models_command",
        "attnkit.cli.catalog:models_arguments",
        "known model names and every GPT/BERT/encoder-decoder preset, with their sizes",
        examples=("attnkit models",),
    ),
    Command(
        "configs ls",
        "attnkit.cli.catalog:configs_ls_command",
        "attnkit.cli.catalog:configs_ls_arguments",
        "list the run configs shipped with attnkit (pretrain --config NAME)",
        examples=("attnkit configs ls",),
    ),
    Command(
        "configs show",
        "attnkit.cli.catalog:configs_show_command",
        "attnkit.cli.catalog:configs_show_arguments",
        "print a shipped run config",
        examples=("attnkit configs show gpt-shakespeare-char",),
    ),
    Command(
        "configs cp",
        "attnkit.cli.catalog:configs_cp_command",
        "attnkit.cli.catalog:configs_cp_arguments",
        "copy a shipped run config to a file to edit (refuses to overwrite without --force)",
        examples=("attnkit configs cp gpt-shakespeare-char my-run.toml",),
    ),
    Command(
        "embed",
        "attnkit.cli.embed:embed_command",
        "attnkit.cli.embed:embed_arguments",
        "sentence embeddings of texts (arguments, --file or stdin) -> .npy or .jsonl",
        examples=("attnkit embed 'he swung the bat' 'a bat flew out of the cave' --out bat.npy",),
    ),
    Command(
        "similarity",
        "attnkit.cli.embed:similarity_command",
        "attnkit.cli.embed:similarity_arguments",
        "cosine similarity of two texts, or of one word's contextual vectors in them",
        examples=("attnkit similarity 'he swung the bat' 'a bat flew out of the cave' --word bat",),
    ),
    Command(
        "pretrain",
        "attnkit.cli.train:pretrain_command",
        "attnkit.cli.train:pretrain_arguments",
        "pre-train a GPT (causal LM) or BERT (masked LM) from a TOML config on a corpus",
        rest=True,  # --section.key VALUE overrides of the config
        examples=(
            "attnkit pretrain --config gpt-shakespeare-char --data shakespeare --out runs/char",
            "attnkit pretrain --config gpt-shakespeare-bpe --out runs/bpe --train.max_iters 4000",
        ),
    ),
    Command(
        "generate",
        "attnkit.cli.generate:generate_command",
        "attnkit.cli.generate:generate_arguments",
        "generate text from a GPT checkpoint (attnkit or HF GPT-2 format), streaming tokens",
        examples=("attnkit generate --model runs/char --prompt 'ROMEO:' --max-new-tokens 300",),
    ),
    Command(
        "translate",
        "attnkit.cli.translate:translate_command",
        "attnkit.cli.translate:translate_arguments",
        "translate (or summarise) texts with an encoder-decoder checkpoint; --file streams",
        examples=(
            "attnkit translate --model runs/en-es 'In the beginning God created the heaven and the earth.'",
        ),
    ),
    Command(
        "sample",
        "attnkit.cli.generate:generate_command",
        "attnkit.cli.generate:sample_arguments",
        "the same as 'generate' with the old defaults of 'sample' (--top-k 200 --seed 1337)",
        examples=("attnkit sample --model runs/char --prompt 'ROMEO:'",),
    ),
    Command(
        "chat",
        "attnkit.cli.chat:chat_command",
        "attnkit.cli.chat:chat_arguments",
        "talk with a GPT checkpoint turn by turn; one KV cache for the whole conversation",
        examples=("attnkit chat --model runs/char --max-new-tokens 200",),
    ),
    Command(
        "finetune",
        "attnkit.cli.classify:finetune_command",
        "attnkit.cli.classify:finetune_arguments",
        "fine-tune a BERT-family checkpoint for sequence classification from CSV/JSONL",
        examples=(
            "attnkit finetune --model minilm --train train.csv --eval eval.csv --out runs/clf",
        ),
    ),
    Command(
        "classify",
        "attnkit.cli.classify:classify_command",
        "attnkit.cli.classify:classify_arguments",
        "classify texts with a fine-tuned checkpoint: label and probabilities",
        examples=("attnkit classify --model runs/clf 'To be, or not to be'",),
    ),
    Command(
        "genre",
        "attnkit.cli.genre:genre_command",
        "attnkit.cli.genre:genre_arguments",
        "build the Shakespeare genre data set (split by play), fine-tune MiniLM, print scores",
        examples=("attnkit genre --out runs/genre --epochs 3",),
    ),
    Command(
        "swap",
        "attnkit.cli.surgery:swap_command",
        "attnkit.cli.surgery:swap_arguments",
        "replace a loaded model's attention with a variant; report speed and output drift",
        examples=(
            "attnkit swap --model minilm --variant lsh --variant-param n_hashes=4 --text-file notes.txt",
        ),
    ),
    Command(
        "inspect",
        "attnkit.cli.inspect:inspect_command",
        "attnkit.cli.inspect:inspect_arguments",
        "attention maps, head statistics, rollout, heatmaps and an HTML viewer for a text",
        examples=("attnkit inspect --model minilm --text 'he swung the bat' --out maps",),
    ),
    Command(
        "eval perplexity",
        "attnkit.cli.eval:perplexity_command",
        "attnkit.cli.eval:perplexity_arguments",
        "perplexity of a GPT on a text file or corpus split, in training's windows (JSON)",
        examples=("attnkit eval perplexity --model runs/char --data shakespeare --split val",),
    ),
    Command(
        "eval classification",
        "attnkit.cli.eval:classification_command",
        "attnkit.cli.eval:classification_arguments",
        "accuracy, macro-F1 and confusion matrix of a classifier on a labelled file (JSON)",
        examples=("attnkit eval classification --model runs/clf --file eval.csv",),
    ),
    Command(
        "eval sts",
        "attnkit.cli.eval:sts_command",
        "attnkit.cli.eval:sts_arguments",
        "Spearman correlation of an encoder's cosine similarities on scored pairs (JSON)",
        examples=("attnkit eval sts --model minilm --file pairs.tsv",),
    ),
    Command(
        "serve",
        "attnkit.cli.serve:serve_command",
        "attnkit.cli.serve:serve_arguments",
        "an OpenAI-compatible HTTP server: /v1/embeddings, /v1/completions, /v1/chat/completions",
        examples=("attnkit serve --model minilm --port 8000",),
    ),
    Command(
        "sweep",
        "attnkit.cli.sweep:sweep_command",
        "attnkit.cli.sweep:sweep_arguments",
        "pre-train every point of a grid (or random draws) of config keys for one budget; "
        "table, plots, power-law fit, HTML report",
        examples=(
            "attnkit sweep --config gpt-shakespeare-char --budget seconds=90 --grid model.n_layer=2,4 --out runs/sweep",
        ),
    ),
    Command(
        "compare-attention",
        "attnkit.cli.sweep:compare_attention_command",
        "attnkit.cli.sweep:compare_attention_arguments",
        "pre-train one GPT with each attention variant at each length for one budget; loss, "
        "tokens/s, memory, frontier",
        examples=(
            "attnkit compare-attention --variants exact,local,performer --seq-len 256,1024 --budget seconds=60",
        ),
    ),
    Command(
        "explain",
        "attnkit.cli.explain:explain_command",
        "attnkit.cli.explain:explain_arguments",
        "say which backend attention() picks for given inputs, and why",
        examples=("attnkit explain --seq-len 16384 --causal --window 512 --grad",),
    ),
    Command(
        "version",
        "attnkit.cli.explain:version_command",
        "attnkit.cli.explain:no_arguments",
        "print the attnkit and torch versions",
        examples=("attnkit version",),
    ),
)


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Run the command line; returns the exit status."""
    # Large CPU tensors on transparent huge pages (PyTorch's own switch, read when torch first
    # allocates): tensors over glibc's 32 MiB mmap threshold are otherwise faulted in 4 KiB
    # pages at every allocation, which made long-sequence attention up to 1.8x slower here.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    log_to_stderr()
    return run(list(sys.argv[1:] if argv is None else argv), commands)


if __name__ == "__main__":
    sys.exit(main())
