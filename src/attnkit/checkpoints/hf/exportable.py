"""Which HF architecture can hold a model, and a refusal that says what to change when none can.

Each :class:`~attnkit.checkpoints.hf.keymap.Architecture` declares the config values it holds
(``exportable``: a value, or a tuple of the values allowed). :func:`choose` returns the first
architecture of the model's ``arch`` that holds every field; when none does, the ValueError
names each field that stands in the way with its value and what every architecture needs,
the fewest changes that would make each architecture fit, and the shipped config
(``attnkit/configs/*.toml``) nearest to the model that exports, e.g.::

    this model has no HF form: config field mlp='relu2' has no HF form; GPT-2 needs one of
    ['gelu_tanh', 'gelu', 'relu'], Llama needs 'swiglu'; config field positional='rope': GPT-2
    needs 'learned' (Llama holds it); ... the shipped config gpt-shakespeare-char exports (as
    HF gpt2)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit.checkpoints.hf.keymap import Architecture
from attnkit.models.config import ModelConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["choose", "misses", "nearest_shipped_config"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _allowed(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def misses(arch: Architecture, cfg: ModelConfig) -> dict[str, tuple[Any, ...]]:
    """Fields of ``cfg`` that ``arch`` cannot hold -> the values it can (with ``n_kv_heads``
    held to ``n_heads`` unless the architecture is grouped-query).

    Args:
        arch: the HF architecture.
        cfg: the model's config.

    Examples:
        >>> misses(llama.ARCHITECTURE, get_preset("tiny"))["positional"]  # ('rope',)
    """
    need = {k: _allowed(v) for k, v in arch.exportable.items()}
    if not arch.grouped_kv:
        need["n_kv_heads"] = (cfg.n_heads,)
    return {k: allowed for k, allowed in need.items() if getattr(cfg, k) not in allowed}


def _needs(allowed: tuple[Any, ...]) -> str:
    return repr(allowed[0]) if len(allowed) == 1 else f"one of {list(allowed)}"


def _label(arch: Architecture) -> str:
    return arch.name or arch.model_type


def _exports(cfg: ModelConfig, archs: Sequence[Architecture]) -> Architecture | None:
    for arch in archs:
        if arch.arch == cfg.arch and not misses(arch, cfg):
            return arch
    return None


def _shipped_configs(vocab_size: int) -> dict[str, tuple[ModelConfig, set[str]]]:
    """name -> (its model config, the fields its file sets) for each shipped run config
    (``vocab_size`` stands in where the tokenizer decides it)."""
    out: dict[str, tuple[ModelConfig, set[str]]] = {}
    for path in sorted(CONFIG_DIR.glob("*.toml"), key=lambda p: p.stem):
        try:
            data = tomllib.loads(path.read_text())
            fields = dict(data.get("model", {}))
            given = set(fields) | {"max_seq_len"}
            fields.setdefault("max_seq_len", data.get("train", {}).get("block_size", 64))
            if data.get("data", {}).get("vocab_size"):
                fields["vocab_size"] = data["data"]["vocab_size"]
                given.add("vocab_size")
            else:
                fields["vocab_size"] = vocab_size
            if fields.get("arch", "gpt") == "bert":
                fields.setdefault("head", "mlm")
            out[path.stem] = (ModelConfig.from_dict(fields), given)
        except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError):
            continue  # a file that is no run config is no suggestion
    return out


def nearest_shipped_config(
    cfg: ModelConfig, archs: Sequence[Architecture]
) -> tuple[str, Architecture] | None:
    """(name, architecture) of the shipped config of ``cfg.arch`` that exports and differs
    from ``cfg`` in the fewest fields (ties: the first name); None when none exports.

    Args:
        cfg: the model's config.
        archs: the architectures an export may use.

    Examples:
        >>> nearest_shipped_config(get_preset("tiny"), archs)[0]  # 'gpt-shakespeare-char'
    """
    best: tuple[int, str, Architecture] | None = None
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    for name, (other, _given) in _shipped_configs(cfg.vocab_size).items():
        arch = _exports(other, archs)
        if arch is None or other.arch != cfg.arch:
            continue
        distance = sum(getattr(other, f) != getattr(cfg, f) for f in names)
        if best is None or distance < best[0]:
            best = (distance, name, arch)
    return None if best is None else (best[1], best[2])


def choose(cfg: ModelConfig, archs: Sequence[Architecture]) -> Architecture:
    """The first of ``archs`` that holds ``cfg``; else a ValueError saying, field by field,
    why none does and what exports instead.

    Args:
        cfg: the model's config.
        archs: the architectures to try, in order.

    Raises:
        ValueError: if none holds ``cfg`` (the message is the module docstring's).

    Examples:
        >>> choose(get_preset("tiny-llama"), list(ARCHITECTURES.values())).model_type  # 'llama'
    """
    found = _exports(cfg, archs)
    if found is not None:
        return found
    candidates = [a for a in archs if a.arch == cfg.arch]
    if not candidates:
        raise ValueError(
            f"this model cannot be exported to HF: no HF architecture holds "
            f"config.arch={cfg.arch!r}; expected one of {sorted({a.arch for a in archs})}"
        )
    per_arch = {a.model_type: misses(a, cfg) for a in candidates}
    fields: list[str] = []
    for bad in per_arch.values():
        fields += [f for f in bad if f not in fields]
    # the fields no architecture holds first: they are what stands in the way
    fields.sort(key=lambda f: not all(f in bad for bad in per_arch.values()))
    clauses = []
    for f in fields:
        value = getattr(cfg, f)
        missing = [a for a in candidates if f in per_arch[a.model_type]]
        needs = ", ".join(f"{_label(a)} needs {_needs(per_arch[a.model_type][f])}" for a in missing)
        if len(missing) == len(candidates):
            clauses.append(f"config field {f}={value!r} has no HF form; {needs}")
        else:
            holds = ", ".join(_label(a) for a in candidates if a not in missing)
            clauses.append(f"config field {f}={value!r}: {needs} ({holds} holds it)")
    each = " nor ".join(
        f"as HF {a.model_type} (config fields "
        f"{ {k: getattr(cfg, k) for k in per_arch[a.model_type]} } must be "
        f"{{{', '.join(f'{k}: {_needs(v)}' for k, v in per_arch[a.model_type].items())}}})"
        for a in candidates
    )
    fixes = "; ".join(
        f"as HF {a.model_type} set "
        + ", ".join(f"{k}={v[0]!r}" for k, v in per_arch[a.model_type].items())
        for a in sorted(candidates, key=lambda a: len(per_arch[a.model_type]))
    )
    message = (
        f"this model has no HF form: {'; '.join(clauses)}. It cannot be exported {each}. "
        f"Nearest that exports: {fixes}"
    )
    shipped = nearest_shipped_config(cfg, archs)
    if shipped is not None:
        message += f"; the shipped config {shipped[0]} exports (as HF {shipped[1].model_type})"
    raise ValueError(message)
