"""``train.init_from``: start a run from the weights of a checkpoint (the nanoGPT habit).

    attnkit pretrain --config gpt-shakespeare-char --out runs/more \\
        --train.init_from runs/char --data my-text.txt

``init_from`` is an attnkit checkpoint directory (a run's output, or ``attnkit convert``'s), a
Hugging Face GPT-2, Llama or BERT directory, or a known name (``minilm``). The run then takes

* **the weights**: step 0 is the checkpoint's model (its eval loss on the same windows is the
  run's step-0 loss); the optimizer, the schedule and the data order start afresh;
* **the tokenizer that came with them**: the corpus is tokenized with it, and the config's
  ``data.tokenizer``/``data.vocab_size`` are overridden (a log line says so). A checkpoint
  without a tokenizer is refused;
* **the model config of the checkpoint**: a ``[model]`` key of the run config that differs
  from it is an error naming both values (``model.d_model=256 but the checkpoint at DIR has
  128``), except the training-time fields in :data:`OVERRIDABLE` (dropout, the attention
  backend), which the run config may change. ``train.block_size`` must fit the checkpoint's
  ``max_seq_len``.

A run that resumes (``--resume`` on a directory with a complete checkpoint) continues from
that checkpoint and ignores ``init_from``. Fine-tuning a GPT on new text is this: a pre-training
run with ``init_from`` and ``--data``. (``attnkit finetune --model DIR`` is the same for
classifiers: its ``--model`` is where it starts from.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnkit.checkpoints import CheckpointError, load, resolve
from attnkit.models.config import ModelConfig
from attnkit.training.config import RunConfig

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

    from attnkit.models.common import ModelBase

__all__ = ["OVERRIDABLE", "WarmStart", "model_config", "warm_start"]

logger = logging.getLogger(__name__)

# model fields a run config may change on top of the checkpoint's (they change no weight)
OVERRIDABLE = ("dropout", "attn_dropout", "backend")
HEAD_FOR = {"gpt": "lm", "bert": "mlm"}  # the head pre-training trains


@dataclass
class WarmStart:
    """What a run takes from ``init_from``: the source model, its tokenizer (truncation off:
    it tokenizes whole corpora) and the model config the run builds. Made by
    :func:`warm_start`.

    Examples:
        >>> m = load("runs/char")
        >>> warm = WarmStart(Path("runs/char"), m, m.meta.tokenizer, m.config)
    """

    source: Path
    model: ModelBase
    tokenizer: Tokenizer
    config: ModelConfig

    def load_into(self, model: ModelBase) -> None:
        """Copy the checkpoint's weights into ``model`` (built from :attr:`config`).

        Args:
            model: the run's freshly built model.

        Examples:
            >>> warm.load_into(build_model(warm.config))
        """
        model.load_state_dict(self.model.state_dict())


def model_config(cfg: RunConfig, source: ModelConfig, where: Path) -> ModelConfig:
    """The checkpoint's config with the run config's :data:`OVERRIDABLE` fields applied; any
    other ``[model]`` key that differs is a ValueError naming the key and both values.

    Args:
        cfg: the run config (its ``[model]`` keys and ``train.block_size``).
        source: the checkpoint's model config.
        where: the checkpoint's directory, for messages.

    Returns:
        The config the run builds.

    Raises:
        ValueError: a ``[model]`` key differs from the checkpoint outside :data:`OVERRIDABLE`,
            the checkpoint lacks the pre-training head (lm for GPT, mlm for BERT), or
            ``train.block_size`` exceeds its ``max_seq_len``.

    Examples:
        >>> model_config(build({"model": {"dropout": 0.1}}, []), ckpt.config, where).dropout
        0.1
    """
    changes = {}
    wrong: list[tuple[str, object, object]] = []
    for key, value in cfg.model.items():
        have = getattr(source, key)
        if key == "id2label" and value is not None:
            value = tuple(value)
        if value == have:
            continue
        if key in OVERRIDABLE:
            changes[key] = value
        else:
            wrong.append((key, value, have))
    if wrong:
        said = "; ".join(
            f"model.{k}={v!r} but the checkpoint at {where} has {h!r}"
            if i == 0
            else f"model.{k}={v!r} but it has {h!r}"
            for i, (k, v, h) in enumerate(wrong)
        )
        expected = (
            f"model.{wrong[0][0]} unset or {wrong[0][2]!r}"
            if len(wrong) == 1
            else "those keys unset or as the checkpoint has them"
        )
        raise ValueError(
            f"{said}; expected {expected} (train.init_from takes the model config from the "
            f"checkpoint; only {', '.join(f'model.{k}' for k in OVERRIDABLE)} may differ)"
        )
    want = HEAD_FOR[source.arch]
    if source.head != want:
        raise ValueError(
            f"the checkpoint at {where} is a {source.arch} with head={source.head!r}; "
            f"pre-training from it needs head={want!r} (a {'language' if want == 'lm' else 'masked LM'}"
            f" head), expected a checkpoint with one"
        )
    if cfg.train.block_size > source.max_seq_len:
        raise ValueError(
            f"train.block_size={cfg.train.block_size} exceeds max_seq_len="
            f"{source.max_seq_len} of the checkpoint at {where}; expected at most "
            f"{source.max_seq_len}"
        )
    return source.replace(**changes) if changes else source


def warm_start(cfg: RunConfig, resuming: bool) -> WarmStart | None:
    """The checkpoint named by ``train.init_from``, or None when it is empty or the run
    resumes from a checkpoint of its own (``resuming``).

    Args:
        cfg: the run config (``train.init_from`` and the ``[model]`` keys).
        resuming: the run resumes from its own checkpoint, so ``init_from`` is ignored.

    Returns:
        The :class:`WarmStart`, or None.

    Raises:
        TypeError: ``train.init_from`` is not a string.
        ValueError: the checkpoint cannot be found, has no tokenizer, or does not fit the run
            config (:func:`model_config`).

    Examples:
        >>> warm_start(build({}, [("train.init_from", "runs/char")]), resuming=False).source
    """
    name = cfg.train.init_from
    if not isinstance(name, str):
        raise TypeError(f"train.init_from must be a str (a directory), got {name!r}")
    if not name:
        return None
    if resuming:
        logger.info(
            "attnkit: train.init_from=%s is ignored: the run resumes from its own checkpoint",
            name,
        )
        return None
    try:
        where = resolve(name)
    except CheckpointError as e:
        raise ValueError(f"train.init_from: {e}") from None
    model = load(where)
    tok = model.meta.tokenizer
    if tok is None:
        raise ValueError(
            f"train.init_from={name!r}: the checkpoint at {where} has no tokenizer "
            f"(tokenizer.json, vocab.txt, or vocab.json + merges.txt); expected one, the run "
            f"tokenizes its data with it"
        )
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok.to_str())  # a copy, without the truncation set for prompts
    tok.no_truncation()
    tok.no_padding()
    config = model_config(cfg, model.config, where)
    logger.info(
        "attnkit: train.init_from=%s: starting from its weights (%s, %d layers x %d, %s "
        "parameters); the data is tokenized with its tokenizer (vocab %d), overriding "
        "data.tokenizer=%r%s",
        where,
        config.arch,
        config.n_layer,
        config.d_model,
        f"{model.num_parameters():,}",
        tok.get_vocab_size(),
        cfg.data.tokenizer,
        f" and data.vocab_size={cfg.data.vocab_size}" if cfg.data.vocab_size else "",
    )
    return WarmStart(where, model, tok, config)
