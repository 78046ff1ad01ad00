"""The data of an encoder-decoder run: (source ids, target ids) examples and their batches.

Two objectives feed the same batches:

* ``seq2seq``: a parallel corpus (:func:`attnkit.text.parallel.load_pairs`: ``bible:en-es``, a
  ``.tsv``/``.jsonl`` of pairs, e.g. documents and their summaries). A joint byte-level BPE
  tokenizer (``<pad>`` = 0, ``</s>`` = 1) is trained on the training split's sources and
  targets; each side is its tokens then ``</s>``. Training pairs longer than
  ``data.max_source_len`` / ``data.max_target_len`` are left out; held-out pairs are cut to the
  caps for the loss and decoded whole for BLEU/chrF.
* ``denoise``: a plain corpus (:func:`attnkit.text.corpora.load_corpus`) cut into windows of
  ``train.block_size`` tokens, each corrupted by T5's span corruption
  (:mod:`attnkit.text.denoise`) when its batch is drawn; the BPE tokenizer has 100 sentinels
  ``<extra_id_0>`` ... after ``<pad>`` and ``</s>``.

:class:`ExampleBatches` cuts an epoch into batches of at most ``train.batch_tokens`` padded
tokens (:func:`attnkit.text.batching.token_batches`, items of like lengths together), in an
order drawn from ``seed + epoch``; its position is (epoch, cursor), two ints a checkpoint holds,
so a resumed run draws the same batches. Under torchrun every rank knows the whole order and
takes its own batches of each step, and every rank can count the step's target tokens.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from attnkit.models.encdec import IGNORE_INDEX
from attnkit.text.batching import pad_batch, token_batches

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.training.config import RunConfig

logger = logging.getLogger(__name__)

PAD, EOS = "<pad>", "</s>"
SENTINELS = tuple(f"<extra_id_{i}>" for i in range(100))
Example = tuple[list[int], list[int]]


@dataclass
class Seq2SeqData:
    """Tokenizer, examples and held-out texts of an encoder-decoder run, made by
    :func:`prepare`.

    ``objective`` is "seq2seq" (pairs) or "denoise" (span corruption); ``train`` and ``val``
    are (source ids, target ids) examples, eos included (for "denoise", ``train`` holds each
    window twice, for its lengths, and the windows to corrupt are in ``windows``); ``texts``
    holds the held-out (source, reference) texts by split ("validation", "test") for
    BLEU/chrF; ``left_out`` counts the training pairs over the length caps; ``name`` is the
    corpus's.

    Examples:
        >>> Seq2SeqData("seq2seq", tok, train=[([5, 9, 1], [7, 1])], val=[]).left_out
        0
    """

    objective: str  # "seq2seq" | "denoise"
    tok: Tokenizer
    train: list[Example]
    val: list[Example]
    # held-out (source, reference) texts for BLEU/chrF ("validation", "test")
    texts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    windows: list[list[int]] = field(default_factory=list)  # denoise: the training windows
    left_out: int = 0  # training pairs over the length caps
    name: str = ""


def special_id(tok: Tokenizer, token: str) -> int:
    """The id of a special token the run's tokenizer must have.

    Args:
        tok: the run's tokenizer.
        token: the token, e.g. ``"</s>"``.

    Returns:
        Its id.

    Raises:
        ValueError: the tokenizer has no such token.

    Examples:
        >>> special_id(data.tok, EOS)
        1
    """
    tid = tok.token_to_id(token)
    if tid is None:
        raise ValueError(f"the tokenizer has no {token!r} token; expected one made for this run")
    return int(tid)


def sentinel_ids(tok: Tokenizer) -> list[int]:
    """The ids of the 100 span-corruption sentinels ``<extra_id_0>`` ... ``<extra_id_99>``.

    Args:
        tok: a tokenizer made for a "denoise" run.

    Returns:
        The ids, in sentinel order.

    Raises:
        ValueError: the tokenizer lacks a sentinel.

    Examples:
        >>> sentinel_ids(data.tok)[:2]  # [2, 3]: right after <pad> and </s>
    """
    return [special_id(tok, s) for s in SENTINELS]


def is_pairs(spec: str) -> bool:
    """True for a parallel corpus (``bible:...``, a .tsv, a .jsonl of source/target objects);
    False for plain text (a corpus name, .txt, a .jsonl of "text" objects, a directory).
    A .jsonl file is judged by its first object; a missing one counts as pairs.

    Args:
        spec: ``data.corpus``.

    Examples:
        >>> is_pairs("bible:en-es"), is_pairs("shakespeare")
        (True, False)
    """
    return spec.startswith("bible:") or (spec.endswith((".tsv", ".jsonl")) and _has_pairs(spec))


def _has_pairs(spec: str) -> bool:
    """A .jsonl file is pairs when its first object has 'source' and 'target'."""
    if spec.endswith(".tsv"):
        return True
    import json
    from pathlib import Path

    path = Path(spec).expanduser()
    if not path.is_file():
        return True  # load_pairs names the missing file
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return True
                return isinstance(obj, dict) and "source" in obj
    return True


def caps(cfg: RunConfig) -> tuple[int, int]:
    """(max source, max target) tokens, eos included: ``data.max_source_len`` and
    ``data.max_target_len``, 0 meaning ``model.max_seq_len`` (512 when unset).

    Args:
        cfg: the run config.

    Examples:
        >>> caps(build({"model": {"max_seq_len": 128}}, [("data.max_target_len", 64)]))
        (128, 64)
    """
    limit = int(cfg.model.get("max_seq_len", 512))
    return cfg.data.max_source_len or limit, cfg.data.max_target_len or limit


def _ids(tok: Tokenizer, texts: list[str], eos: int) -> list[list[int]]:
    return [e.ids + [eos] for e in tok.encode_batch(texts, add_special_tokens=False)]


def _cut(ids: list[int], cap: int) -> list[int]:
    return ids if len(ids) <= cap else ids[: cap - 1] + [ids[-1]]


def prepare(cfg: RunConfig, cache: Any) -> Seq2SeqData:
    """Load and tokenise the corpus of ``cfg`` (tokenizer cached under ``cache``): pairs for
    "seq2seq", windows of ``train.block_size`` tokens for "denoise" (see the module docstring).

    Args:
        cfg: the run config (``data.*``, ``model.max_seq_len``, ``train.block_size``).
        cache: the cache directory for the trained tokenizer.

    Returns:
        The :class:`Seq2SeqData`.

    Raises:
        ValueError: ``data.tokenizer`` is not "bpe", no training pair fits the caps, the
            windows do not fit ``max_source_len`` once corrupted, or the corpus is too short.

    Examples:
        >>> data = prepare(build(read_file(find_config("translate-bible-en-es")), []), cache_dir())
    """
    from attnkit.text.tokenizers import build_tokenizer

    if cfg.data.tokenizer != "bpe":
        raise ValueError(
            f"an encoder-decoder run trains a joint BPE tokenizer; data.tokenizer is "
            f"{cfg.data.tokenizer!r}, expected 'bpe'"
        )
    vocab = cfg.data.vocab_size or 8000
    max_src, max_tgt = caps(cfg)
    spec = cfg.data.corpus
    if is_pairs(spec):
        from attnkit.text.parallel import load_pairs

        corpus = load_pairs(spec)
        train_pairs = corpus.splits["train"]
        text = "\n".join(f"{s}\n{t}" for s, t in train_pairs) + "\n"
        key = hashlib.sha256(f"{corpus.checksum}-train-joint".encode()).hexdigest()
        tok = build_tokenizer("bpe", text, key, vocab, cache, specials=[PAD, EOS])
        eos = special_id(tok, EOS)
        src = _ids(tok, [s for s, _ in train_pairs], eos)
        tgt = _ids(tok, [t for _, t in train_pairs], eos)
        train = [(s, t) for s, t in zip(src, tgt) if len(s) <= max_src and len(t) <= max_tgt]
        held = corpus.splits["validation"]
        val = [
            (_cut(s, max_src), _cut(t, max_tgt))
            for s, t in zip(
                _ids(tok, [s for s, _ in held], eos), _ids(tok, [t for _, t in held], eos)
            )
        ]
        if not train:
            raise ValueError(
                f"no training pair of {spec!r} fits max_source_len={max_src} and "
                f"max_target_len={max_tgt} tokens; expected larger caps"
            )
        data = Seq2SeqData("seq2seq", tok, train, val, name=corpus.name)
        data.texts = {k: list(corpus.splits[k]) for k in ("validation", "test")}
        data.left_out = len(train_pairs) - len(train)
        if data.left_out:
            logger.info(
                "attnkit: %d of %d training pairs are over the length caps (%d, %d) and left out",
                data.left_out,
                len(train_pairs),
                max_src,
                max_tgt,
            )
        return data
    from attnkit.text.corpora import load_corpus, split_text

    plain = load_corpus(spec)
    train_text, val_text = split_text(plain.text, cfg.data.val_fraction)
    tok = build_tokenizer(
        "bpe", plain.text, plain.checksum, vocab, cache, specials=[PAD, EOS, *SENTINELS]
    )
    n = cfg.train.block_size
    if n + 2 > max_src:
        raise ValueError(
            f"train.block_size={n} windows do not fit max_source_len={max_src} once corrupted; "
            f"expected block_size <= max_source_len - 2"
        )

    def windows(text: str) -> list[list[int]]:
        from attnkit.text.tokenizers import encode

        ids = encode(tok, text)
        return [ids[i : i + n] for i in range(0, len(ids) - n + 1, n)]

    train_windows, val_windows = windows(train_text), windows(val_text)
    if not train_windows or not val_windows:
        raise ValueError(
            f"corpus {spec!r} is too short for windows of train.block_size={n} tokens in both "
            f"splits; expected a longer corpus or a smaller block_size"
        )
    eos = special_id(tok, EOS)
    sentinels = sentinel_ids(tok)
    gen = torch.Generator().manual_seed(cfg.train.seed + 2)
    val = [_corrupt(w, sentinels, eos, gen, cfg) for w in val_windows[: 64 * cfg.train.eval_iters]]
    data = Seq2SeqData("denoise", tok, [], val, windows=train_windows, name=plain.name)
    data.train = [(w, w) for w in train_windows]  # lengths for batching; corrupted when drawn
    return data


def _corrupt(window: list[int], sentinels: list[int], eos: int, gen, cfg: RunConfig) -> Example:
    from attnkit.text.denoise import span_corruption

    return span_corruption(
        window, sentinels, eos, gen, cfg.data.noise_density, cfg.data.mean_span_length
    )


def make_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Source ids and mask (B, S) and labels (B, T), -100 on padding.

    Args:
        examples: (source ids, target ids) pairs.
        pad_id: the id that pads the sources.

    Returns:
        ``{"input_ids": (B, S), "attention_mask": (B, S), "labels": (B, T)}``, with S and T
        the longest source and target.

    Examples:
        >>> make_batch([([5, 6, 1], [7, 1]), ([5, 1], [8, 9, 1])], pad_id=0)["labels"]
        tensor([[   7,    1, -100],
                [   8,    9,    1]])
    """
    ids, mask = pad_batch([s for s, _ in examples], pad_id, always_mask=True)
    labels, _ = pad_batch([t for _, t in examples], IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}  # type: ignore[dict-item]


class ExampleBatches:
    """Token-count batches of ``data.train``, epoch after epoch, from a resumable position.

    Each epoch's batches (at most ``max_tokens`` padded tokens, like lengths together) are
    drawn in an order seeded by ``seed`` and the epoch; a step takes ``per_step`` of them and
    an epoch's leftover batches, fewer than a step, are skipped.

    Args:
        data: the run's data.
        max_tokens: the padded-token cap of a batch (``train.batch_tokens``).
        seed: the seed of the batch order (and of span corruption).
        per_step: batches per step (processes x ``train.grad_accum``).
        cfg: the run config, needed for "denoise" (its span corruption settings).

    Raises:
        ValueError: an epoch makes fewer than ``per_step`` batches.

    Examples:
        >>> batches = ExampleBatches(data, max_tokens=4096, seed=1, per_step=1)
    """

    def __init__(
        self,
        data: Seq2SeqData,
        max_tokens: int,
        seed: int,
        per_step: int,
        cfg: RunConfig | None = None,
    ) -> None:
        self.data, self.max_tokens, self.seed, self.per_step = data, max_tokens, seed, per_step
        self.cfg = cfg
        self.lengths = [(len(s), len(t)) for s, t in data.train]
        self.epoch, self.cursor = 0, 0
        self._order: list[list[int]] | None = None
        if len(self._batches()) < per_step:
            raise ValueError(
                f"{len(data.train)} training examples make {len(self._batches())} batches of "
                f"train.batch_tokens={max_tokens}; a step takes {per_step} (processes x "
                f"grad_accum); expected more data or smaller batches"
            )

    def _batches(self) -> list[list[int]]:
        if self._order is None:
            gen = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
            self._order = token_batches(self.lengths, self.max_tokens, True, gen)
        return self._order

    @property
    def position(self) -> list[int]:
        """``[epoch, cursor]``: where the next step starts, as a checkpoint saves it.

        Examples:
            >>> ExampleBatches(data, 4096, seed=1, per_step=1).position
            [0, 0]
        """
        return [self.epoch, self.cursor]

    def seek(self, position: list[int]) -> None:
        """Continue from ``position`` (a saved :attr:`position`): the same batches follow.

        Args:
            position: ``[epoch, cursor]``.

        Examples:
            >>> batches.seek(state["data_position"])
        """
        self.epoch, self.cursor = int(position[0]), int(position[1])
        self._order = None

    def next_step(self) -> list[list[Example]]:
        """The ``per_step`` batches of the next step (all ranks' micro-batches, in order);
        "denoise" windows are corrupted now.

        Returns:
            ``per_step`` lists of (source ids, target ids) examples.

        Examples:
            >>> batch = make_batch(batches.next_step()[0], pad_id=0)
        """
        if self.cursor + self.per_step > len(self._batches()):
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        picked = self._batches()[self.cursor : self.cursor + self.per_step]
        self.cursor += self.per_step
        return [self._examples(b, k) for k, b in enumerate(picked)]

    def _examples(self, index: list[int], k: int) -> list[Example]:
        if self.data.objective == "seq2seq":
            return [self.data.train[i] for i in index]
        assert self.cfg is not None
        from attnkit.text.denoise import span_corruption

        tok = self.data.tok
        sentinels = sentinel_ids(tok)
        gen = torch.Generator().manual_seed(
            self.seed + 1_000_003 * self.epoch + 101 * (self.cursor - self.per_step + k)
        )
        d = self.cfg.data
        eos = special_id(tok, EOS)
        return [
            span_corruption(
                self.data.windows[i], sentinels, eos, gen, d.noise_density, d.mean_span_length
            )
            for i in index
        ]
