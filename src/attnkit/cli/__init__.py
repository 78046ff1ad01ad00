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


def _bench(name: str, help: str) -> Command:
    """``attnkit bench <name>``: its two functions are in attnkit/cli/bench.py."""
    return Command(
        f"bench {name}",
        f"attnkit.cli.bench:{name}_command",
        f"attnkit.cli.bench:{name}_arguments",
        help,
    )


COMMANDS: tuple[Command, ...] = (
    _bench("attention", "time and peak memory of every attention backend next to raw PyTorch SDPA"),
    _bench("variants", "speed, memory and error of the approximate attention variants"),
    _bench(
        "embed", "sentence-embedding throughput of attnkit next to sentence-transformers (MiniLM)"
    ),
    _bench("train", "training throughput (tokens/s) and MFU of a GPT on random tokens"),
    _bench(
        "generate", "KV-cached decoding speed of attnkit next to HF transformers (GPT-2 124M shape)"
    ),
    _bench(
        "seq2seq",
        "translation training tokens/s, BLEU/chrF and beam-search speed next to HF and CTranslate2",
    ),
    _bench(
        "viewer", "size, first paint and head-switch time of the HTML attention viewer in Chromium"
    ),
    Command(
        "convert",
        "attnkit.cli.checkpoints:convert_command",
        "attnkit.cli.checkpoints:convert_arguments",
        "convert a checkpoint: --from-hf DIR OUT (HF -> attnkit) or --to-hf DIR OUT",
    ),
    Command(
        "models",
        "attnkit.cli.catalog:models_command",
        "attnkit.cli.catalog:models_arguments",
        "known model names and every GPT/BERT/encoder-decoder preset, with their sizes",
    ),
    Command(
        "configs ls",
        "attnkit.cli.catalog:configs_ls_command",
        "attnkit.cli.catalog:configs_ls_arguments",
        "list the run configs shipped with attnkit (pretrain --config NAME)",
    ),
    Command(
        "configs show",
        "attnkit.cli.catalog:configs_show_command",
        "attnkit.cli.catalog:configs_show_arguments",
        "print a shipped run config",
    ),
    Command(
        "configs cp",
        "attnkit.cli.catalog:configs_cp_command",
        "attnkit.cli.catalog:configs_cp_arguments",
        "copy a shipped run config to a file to edit (refuses to overwrite without --force)",
    ),
    Command(
        "embed",
        "attnkit.cli.embed:embed_command",
        "attnkit.cli.embed:embed_arguments",
        "sentence embeddings of texts (arguments, --file or stdin) -> .npy or .jsonl",
    ),
    Command(
        "similarity",
        "attnkit.cli.embed:similarity_command",
        "attnkit.cli.embed:similarity_arguments",
        "cosine similarity of two texts, or of one word's contextual vectors in them",
    ),
    Command(
        "pretrain",
        "attnkit.cli.train:pretrain_command",
        "attnkit.cli.train:pretrain_arguments",
        "pre-train a GPT (causal LM) or BERT (masked LM) from a TOML config on a corpus",
        rest=True,  # --section.key VALUE overrides of the config
    ),
    Command(
        "generate",
        "attnkit.cli.generate:generate_command",
        "attnkit.cli.generate:generate_arguments",
        "generate text from a GPT checkpoint (attnkit or HF GPT-2 format), streaming tokens",
    ),
    Command(
        "translate",
        "attnkit.cli.translate:translate_command",
        "attnkit.cli.translate:translate_arguments",
        "translate (or summarise) texts with an encoder-decoder checkpoint; --file streams",
    ),
    Command(
        "sample",
        "attnkit.cli.generate:generate_command",
        "attnkit.cli.generate:sample_arguments",
        "the same as 'generate' with the old defaults of 'sample' (--top-k 200 --seed 1337)",
    ),
    Command(
        "chat",
        "attnkit.cli.chat:chat_command",
        "attnkit.cli.chat:chat_arguments",
        "talk with a GPT checkpoint turn by turn; one KV cache for the whole conversation",
    ),
    Command(
        "finetune",
        "attnkit.cli.classify:finetune_command",
        "attnkit.cli.classify:finetune_arguments",
        "fine-tune a BERT-family checkpoint for sequence classification from CSV/JSONL",
    ),
    Command(
        "classify",
        "attnkit.cli.classify:classify_command",
        "attnkit.cli.classify:classify_arguments",
        "classify texts with a fine-tuned checkpoint: label and probabilities",
    ),
    Command(
        "genre",
        "attnkit.cli.classify:genre_command",
        "attnkit.cli.classify:genre_arguments",
        "build the Shakespeare genre data set (split by play), fine-tune MiniLM, print scores",
    ),
    Command(
        "swap",
        "attnkit.cli.surgery:swap_command",
        "attnkit.cli.surgery:swap_arguments",
        "replace a loaded model's attention with a variant; report speed and output drift",
    ),
    Command(
        "inspect",
        "attnkit.cli.inspect:inspect_command",
        "attnkit.cli.inspect:inspect_arguments",
        "attention maps, head statistics, rollout, heatmaps and an HTML viewer for a text",
    ),
    Command(
        "eval perplexity",
        "attnkit.cli.eval:perplexity_command",
        "attnkit.cli.eval:perplexity_arguments",
        "perplexity of a GPT on a text file or corpus split, in training's windows (JSON)",
    ),
    Command(
        "eval classification",
        "attnkit.cli.eval:classification_command",
        "attnkit.cli.eval:classification_arguments",
        "accuracy, macro-F1 and confusion matrix of a classifier on a labelled file (JSON)",
    ),
    Command(
        "eval sts",
        "attnkit.cli.eval:sts_command",
        "attnkit.cli.eval:sts_arguments",
        "Spearman correlation of an encoder's cosine similarities on scored pairs (JSON)",
    ),
    Command(
        "serve",
        "attnkit.cli.serve:serve_command",
        "attnkit.cli.serve:serve_arguments",
        "an OpenAI-compatible HTTP server: /v1/embeddings, /v1/completions, /v1/chat/completions",
    ),
    Command(
        "sweep",
        "attnkit.cli.sweep:sweep_command",
        "attnkit.cli.sweep:sweep_arguments",
        "pre-train every point of a grid (or random draws) of config keys for one budget; "
        "table, plots, power-law fit, HTML report",
    ),
    Command(
        "compare-attention",
        "attnkit.cli.sweep:compare_attention_command",
        "attnkit.cli.sweep:compare_attention_arguments",
        "pre-train one GPT with each attention variant at each length for one budget; loss, "
        "tokens/s, memory, frontier",
    ),
    Command(
        "explain",
        "attnkit.cli.explain:explain_command",
        "attnkit.cli.explain:explain_arguments",
        "say which backend attention() picks for given inputs, and why",
    ),
    Command(
        "version",
        "attnkit.cli.explain:version_command",
        "attnkit.cli.explain:no_arguments",
        "print the attnkit and torch versions",
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
