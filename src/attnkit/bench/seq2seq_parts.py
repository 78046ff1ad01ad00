"""The parts of ``attnkit bench seq2seq`` (:mod:`attnkit.bench.seq2seq`): the data, the two
training sides and the three beam-search decoders.

* :func:`prepare_data`: a byte-level BPE trained on the training pairs (``</s>`` = 0,
  ``<unk>`` = 1, ``<pad>`` last, as in the opus-mt Marian models), the pairs as ids (each side
  ends with ``</s>``), length-bucketed batches of about ``batch_tokens`` padded tokens a side
  (:func:`attnkit.text.batching.token_batches`) and the held-out sources and references.
* :class:`TrainSide`: one model, its optimizer and one step of teacher-forced training.
  attnkit's side is the :class:`~attnkit.models.encdec.EncoderDecoder` with fused AdamW and
  :meth:`~attnkit.models.encdec.EncoderDecoder.loss` (the LM head on counted positions only);
  HF's is a ``MarianMTModel`` of the same shape and the same initial weights, trained by the
  plain loop (logits of every position, then the same label-smoothed cross-entropy) with
  ``torch.optim.AdamW``; both with the same learning-rate schedule and gradient clipping.
  The pad token's embedding stays zero on both sides (HF's ``padding_idx``; CTranslate2's
  Marian decoder starts from a zero embedding).
* :func:`attnkit_decode`, :func:`hf_decode`, :func:`ct2_decode`: beam search of a list of
  sources in batches, returning the generated ids of each (the eos and padding cut).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from attnkit._util.fs import atomic_write_json, atomic_write_text
from attnkit.models.encdec import EncoderDecoder
from attnkit.models.outputs import IGNORE_INDEX
from attnkit.text.batching import pad_batch, token_batches
from attnkit.text.tokenizers import train_bpe
from attnkit.training import optim

EOS, UNK, PAD = "</s>", "<unk>", "<pad>"


@dataclass
class Data:
    """Ids and batches of one run (see the module docstring)."""

    tokenizer: Tokenizer
    vocab_size: int
    pad: int
    eos: int
    train: list[tuple[list[int], list[int]]]
    batches: list[list[int]]  # indices into train, in training order
    sources: list[list[int]]  # held-out source ids (eos included)
    source_texts: list[str]
    references: list[str]


def prepare_data(
    pairs: dict[str, list[tuple[str, str]]],
    *,
    vocab: int,
    max_tokens: int,
    batch_tokens: int,
    sentences: int,
    seed: int,
) -> Data:
    """Tokenizer, ids and batches from the corpus' splits (module docstring); pairs with a
    side longer than ``max_tokens`` are left out of training, held-out sources longer than
    that are passed over."""
    train_pairs = pairs["train"]
    text = "\n".join(s + "\n" + t for s, t in train_pairs)
    tok = train_bpe(text, vocab - 1, specials=[EOS, UNK])
    tok.add_special_tokens([PAD])
    V = tok.get_vocab_size()
    pad, eos = tok.token_to_id(PAD), tok.token_to_id(EOS)
    if pad != V - 1 or eos != 0:
        raise RuntimeError(f"expected </s> = 0 and <pad> = {V - 1}, got {eos} and {pad}")

    def ids(texts: Sequence[str]) -> list[list[int]]:
        return [e.ids + [eos] for e in tok.encode_batch(list(texts))]

    src, tgt = ids([s for s, _ in train_pairs]), ids([t for _, t in train_pairs])
    train = [(s, t) for s, t in zip(src, tgt) if len(s) <= max_tokens and len(t) <= max_tokens]
    if not train:
        raise ValueError(f"no training pair has both sides within {max_tokens} tokens")
    g = torch.Generator().manual_seed(seed)
    batches = token_batches(
        [(len(s), len(t)) for s, t in train], batch_tokens, shuffle=True, generator=g
    )
    held = pairs["test"] or pairs["validation"]
    chosen = [(s, t, i) for (s, t), i in zip(held, ids([s for s, _ in held]))]
    chosen = [c for c in chosen if len(c[2]) <= max_tokens][:sentences]
    if not chosen:
        raise ValueError(f"no held-out source within {max_tokens} tokens")
    return Data(
        tokenizer=tok,
        vocab_size=V,
        pad=pad,
        eos=eos,
        train=train,
        batches=batches,
        sources=[c[2] for c in chosen],
        source_texts=[c[0] for c in chosen],
        references=[c[1] for c in chosen],
    )


def batch_tensors(data: Data, index: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """(source ids, source mask, labels) of the training pairs ``index``, right-padded."""
    src, mask = pad_batch([data.train[i][0] for i in index], data.pad, always_mask=True)
    labels, _ = pad_batch([data.train[i][1] for i in index], IGNORE_INDEX)
    assert mask is not None
    return src, mask, labels


def zero_pad_row(model: torch.nn.Module, weight: torch.Tensor, pad: int) -> None:
    """HF's ``padding_idx`` on ``weight`` (V, C), a token embedding: row ``pad`` zeroed now,
    and every ``nn.Embedding`` of ``model`` holding that weight given ``padding_idx=pad``, so
    looking the pad token up adds no gradient to its row; a tied LM head still trains it,
    as in ``MarianMTModel``."""
    with torch.no_grad():
        weight[pad].zero_()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight is weight:
            module.padding_idx = pad


@dataclass
class Schedule:
    lr: float
    warmup: int
    grad_clip: float
    label_smoothing: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)

    def at(self, step: int) -> float:
        """Linear warmup, then the inverse square root decay of Vaswani et al."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return self.lr * (self.warmup / (step + 1)) ** 0.5


class TrainSide:
    """One side of the training comparison: ``step()`` trains on the next batch and returns
    (real source + target tokens, seconds)."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        data: Data,
        schedule: Schedule,
    ):
        self.name = name
        self.model = model.train()
        self.optimizer = optimizer
        self.loss_fn = loss
        self.data = data
        self.schedule = schedule
        self.steps = 0
        self.step_tokens: list[int] = []
        self.step_seconds: list[float] = []
        self.losses: list[float] = []

    def step(self) -> float:
        data = self.data
        index = data.batches[self.steps % len(data.batches)]
        src, mask, labels = batch_tensors(data, index)
        tokens = int(mask.sum()) + int((labels != IGNORE_INDEX).sum())
        t0 = time.perf_counter()
        optim.set_lr(self.optimizer, self.schedule.at(self.steps))
        loss = self.loss_fn(src, mask, labels)
        loss.backward()
        optim.clip_and_step(self.optimizer, self.model.parameters(), self.schedule.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        self.losses.append(float(loss.detach()))
        self.steps += 1
        self.step_tokens.append(tokens)
        self.step_seconds.append(seconds)
        return seconds

    def train_for(self, seconds: float) -> None:
        """Steps until ``seconds`` of training time have passed (at least one)."""
        spent = 0.0
        while True:
            spent += self.step()
            if spent >= seconds:
                return


def attnkit_side(model: EncoderDecoder, data: Data, schedule: Schedule) -> TrainSide:
    opt = optim.make_optimizer(
        model, schedule.lr, schedule.weight_decay, schedule.betas, torch.device("cpu"), fused=True
    )

    def loss(src: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model.loss(src, mask, labels, label_smoothing=schedule.label_smoothing)

    return TrainSide("attnkit", model, opt, loss, data, schedule)


def hf_side(hf: Any, data: Data, schedule: Schedule, start: int) -> TrainSide:
    """The plain PyTorch loop around a ``MarianMTModel``: decoder inputs are the labels
    shifted right behind ``start``, logits of every position, label-smoothed cross-entropy."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in hf.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=schedule.lr,
        betas=schedule.betas,
    )
    V = data.vocab_size

    def loss(src: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dec = labels.new_full(labels.shape, start)
        dec[:, 1:] = labels[:, :-1]
        dec = dec.masked_fill(dec == IGNORE_INDEX, data.pad)
        logits = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        return F.cross_entropy(
            logits.reshape(-1, V).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=schedule.label_smoothing,
        )

    return TrainSide("HF", hf, opt, loss, data, schedule)


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _cut(row: list[int], eos: int, pad: int) -> list[int]:
    """Generated ids of one output row: the start token dropped, cut at eos or padding."""
    out = []
    for t in row[1:]:
        if t in (eos, pad):
            break
        out.append(t)
    return out


def attnkit_decode(
    model: EncoderDecoder, data: Data, batch: int, beams: int, max_new: int, ngram: int
) -> list[list[int]]:
    from attnkit.generation.seq2seq import generate_seq2seq

    out: list[list[int]] = []
    for part in _chunks(len(data.sources), batch):
        src, mask = pad_batch(data.sources[part], data.pad, always_mask=True)
        ids = generate_seq2seq(
            model,
            src,
            attention_mask=mask,
            num_beams=beams,
            max_new_tokens=max_new,
            no_repeat_ngram_size=ngram,
        )
        out += [_cut(r, data.eos, data.pad) for r in ids.tolist()]
    return out


def hf_decode(
    hf: Any, data: Data, batch: int, beams: int, max_new: int, ngram: int
) -> list[list[int]]:
    out: list[list[int]] = []
    cfg = hf.config
    for part in _chunks(len(data.sources), batch):
        src, mask = pad_batch(data.sources[part], data.pad, always_mask=True)
        with torch.inference_mode():
            ids = hf.generate(
                input_ids=src,
                attention_mask=mask,
                num_beams=beams,
                max_new_tokens=max_new,
                no_repeat_ngram_size=ngram,
                do_sample=False,
                early_stopping=False,
                length_penalty=1.0,
                pad_token_id=cfg.pad_token_id,
                eos_token_id=cfg.eos_token_id,
                decoder_start_token_id=cfg.decoder_start_token_id,
                forced_bos_token_id=None,
                forced_eos_token_id=None,
                bad_words_ids=None,
                repetition_penalty=1.0,
                min_length=0,
            )
        out += [_cut(r, data.eos, data.pad) for r in ids.tolist()]
    return out


def write_hf_tokenizer(data: Data, directory: Path) -> None:
    """tokenizer.json and tokenizer_config.json, so ``AutoTokenizer`` (CTranslate2's
    converter) reads the vocabulary and the special tokens."""
    atomic_write_text(directory / "tokenizer.json", data.tokenizer.to_str())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
    }
    atomic_write_json(directory / "tokenizer_config.json", config)


def ct2_translator(hf_dir: Path, out_dir: Path, threads: int) -> Any:
    """The CTranslate2 model converted from the HF directory with its Python converter."""
    from attnkit._util.optional import require

    ct2 = require("ctranslate2", "seq2seq", "the CTranslate2 reference")
    converter = ct2.converters.TransformersConverter(str(hf_dir))
    converter.convert(str(out_dir), force=True)
    return ct2.Translator(str(out_dir), device="cpu", inter_threads=1, intra_threads=threads)


def ct2_decode(
    translator: Any, data: Data, batch: int, beams: int, max_new: int, ngram: int
) -> list[list[int]]:
    tok = data.tokenizer
    tokens = [[tok.id_to_token(i) for i in s] for s in data.sources]
    results = translator.translate_batch(
        tokens,
        beam_size=beams,
        max_batch_size=batch,
        max_decoding_length=max_new,
        length_penalty=1.0,
        no_repeat_ngram_size=ngram,
    )
    vocab = tok.get_vocab()
    unk = vocab[UNK]
    return [[vocab.get(t, unk) for t in r.hypotheses[0]] for r in results]
