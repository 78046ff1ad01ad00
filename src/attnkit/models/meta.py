"""ModelMeta: what a loaded model carries besides its architecture and its weights.

The architecture (including the class labels, ``config.id2label``, and the pooling rule,
``config.pooling``) is the model's :class:`~attnkit.models.config.ModelConfig`. Everything else
a model picks up on its way from disk (its tokenizer, where it came from, the longest input its
tokenizer keeps, attention swaps applied to it, how it was fine-tuned) is one frozen
:class:`ModelMeta`, held as ``model.meta``. Only the loader (:func:`attnkit.load`) and the
functions that make a new model from an old one (fine-tuning, attention surgery) set it, and
they set a whole new value (:meth:`ModelMeta.replace`), never a field of the old one.

``config.json`` of an attnkit checkpoint keeps ``meta.to_dict()`` under ``"meta"``; the
tokenizer is saved beside it as ``tokenizer.json`` and the source is where it is read from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnkit._util.checks import fail, flag, optional_positive_int

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

__all__ = ["ModelMeta", "SwapRecord"]


@dataclass(frozen=True)
class SwapRecord:
    """One attention swap: the variant, its full parameters and the layers it replaced.

    Args:
        variant: the variant's name in ``attnkit.attention.variants`` (non-empty).
        params: its keyword arguments, all of them (copied into a plain dict).
        layers: the indices (>= 0) of the blocks whose attention it replaced.

    Raises:
        ValueError: a field of the wrong kind, naming it.

    Examples:
        >>> SwapRecord("lsh", {"n_hashes": 4}, layers=(0, 1)).layers
        (0, 1)
    """

    variant: str
    params: Mapping[str, Any] = field(default_factory=dict)
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant:
            fail("SwapRecord.variant", self.variant, "a variant name")
        if not isinstance(self.params, Mapping):
            fail("SwapRecord.params", self.params, "a mapping of parameter names to values")
        layers = tuple(self.layers)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
            fail("SwapRecord.layers", self.layers, "a sequence of layer indices >= 0")
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "layers", layers)

    def describe(self) -> str:
        """``"lsh(n_hashes=4, ...)"``: the variant with its parameters.

        Examples:
            >>> SwapRecord("lsh", {"n_hashes": 4}).describe()
            'lsh(n_hashes=4)'
        """
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.variant}({args})" if args else self.variant

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: ``variant``, ``params`` (a dict) and ``layers`` (a list).

        Examples:
            >>> SwapRecord("lsh", {"n_hashes": 4}, (0,)).to_dict()
            {'variant': 'lsh', 'params': {'n_hashes': 4}, 'layers': [0]}
        """
        return {"variant": self.variant, "params": dict(self.params), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SwapRecord:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: ``data`` is not a mapping or has a key other than ``variant``,
                ``params`` and ``layers``.

        Examples:
            >>> SwapRecord.from_dict({"variant": "lsh", "layers": [0]}).layers
            (0,)
        """
        if not isinstance(data, Mapping) or set(data) - {"variant", "params", "layers"}:
            raise ValueError(
                f"a swap record must be an object with keys variant, params, layers; got {data!r}"
            )
        return cls(
            variant=data.get("variant", ""),
            params=data.get("params", {}),
            layers=tuple(data.get("layers", ())),
        )


@dataclass(frozen=True)
class ModelMeta:
    """What a loaded model carries besides its config and weights.

    tokenizer: the ``tokenizers.Tokenizer`` that came with it (None if none did).
    source: the directory or known name it was loaded from (None for a model built in memory).
    max_length: the longest input, in tokens, its tokenizer keeps (sentence-transformers'
        ``max_seq_length``, or the length a classifier was fine-tuned with); None means the
        model's ``config.max_seq_len``.
    normalize: the sentence-transformers pipeline ends with L2 normalisation.
    swaps: the attention swaps applied to it, in order (see :mod:`attnkit.surgery`).
    finetune: how it was fine-tuned (base model, data, settings), or None.

    Every field is checked when the meta is made (a ValueError names a bad one).

    Examples:
        >>> ModelMeta(max_length=128, normalize=True).max_length
        128
    """

    tokenizer: Tokenizer | None = None
    source: str | None = None
    max_length: int | None = None
    normalize: bool = False
    swaps: tuple[SwapRecord, ...] = ()
    finetune: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.source is not None and not isinstance(self.source, str):
            fail("ModelMeta.source", self.source, "a str or None")
        optional_positive_int("ModelMeta.max_length", self.max_length)
        flag("ModelMeta.normalize", self.normalize)
        swaps = tuple(self.swaps)
        if not all(isinstance(s, SwapRecord) for s in swaps):
            fail("ModelMeta.swaps", self.swaps, "a sequence of SwapRecord")
        object.__setattr__(self, "swaps", swaps)
        if self.finetune is not None and not isinstance(self.finetune, Mapping):
            fail("ModelMeta.finetune", self.finetune, "a mapping or None")

    def replace(self, **changes: Any) -> ModelMeta:
        """A copy with ``changes`` applied (and checked).

        Examples:
            >>> ModelMeta().replace(normalize=True).normalize
            True
        """
        return dataclasses.replace(self, **changes)

    # the fields config.json keeps (the tokenizer has its own file; the source is the directory)
    _SAVED = ("max_length", "normalize", "swaps", "finetune")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready part: every field but ``tokenizer`` and ``source``.

        Examples:
            >>> ModelMeta(max_length=128).to_dict()["max_length"]
            128
        """
        return {
            "max_length": self.max_length,
            "normalize": self.normalize,
            "swaps": [s.to_dict() for s in self.swaps],
            "finetune": None if self.finetune is None else dict(self.finetune),
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        tokenizer: Tokenizer | None = None,
        source: str | None = None,
    ) -> ModelMeta:
        """The inverse of :meth:`to_dict`; an unknown key is a ValueError naming it.

        Args:
            data: what :meth:`to_dict` returned (``"meta"`` of a config.json).
            tokenizer: the tokenizer to attach (it is saved in its own file).
            source: where the model was loaded from.

        Raises:
            ValueError: ``data`` is not a mapping, has an unknown key, or its ``swaps`` is
                not a list.

        Examples:
            >>> ModelMeta.from_dict({"max_length": 128}, source="ckpt/").source
            'ckpt/'
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"model meta must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls._SAVED))
        if unknown:
            raise ValueError(
                f"unknown model meta key(s) {unknown}; expected only {list(cls._SAVED)}"
            )
        swaps = data.get("swaps") or []
        if not isinstance(swaps, list):
            raise ValueError(f"model meta 'swaps' must be a list, got {swaps!r}")
        return cls(
            tokenizer=tokenizer,
            source=source,
            max_length=data.get("max_length"),
            normalize=data.get("normalize", False),
            swaps=tuple(SwapRecord.from_dict(s) for s in swaps),
            finetune=data.get("finetune"),
        )
