"""What attnkit knows by name: ``attnkit models`` (known model names and every preset, with
their sizes) and ``attnkit configs ls|show|cp`` (the run configs shipped in the package);
also the TOML that ``attnkit pretrain --print-config`` prints (:func:`config_toml`).

    attnkit models                       # known names, GPT/BERT and encoder-decoder presets
    attnkit models --json                # the same as JSON
    attnkit configs ls
    attnkit configs show gpt-shakespeare-char
    attnkit configs cp gpt-shakespeare-char my.toml [--force]

Parameter counts of the presets are those of the built model (tied weights counted once),
built on the meta device: shapes only, nothing allocated. A known name's count is that of the
checkpoint its package ships (read when the package is installed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnkit.cli.types import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from attnkit.training.config import RunConfig


def _size(n: int) -> str:
    """124439808 -> '124.4M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Aligned columns: ``columns`` is [(key, heading)]; numbers align right."""
    cells = [[heading for _, heading in columns]]
    cells += [["" if r.get(k) is None else str(r[k]) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = [all(isinstance(r.get(k), int) for r in rows) for k, _ in columns]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# attnkit models
# --------------------------------------------------------------------------------------------
def model_catalog() -> dict[str, list[dict[str, Any]]]:
    """``{"known": [...], "presets": [...], "encdec_presets": [...]}``: one row per known
    model (its names, package, whether installed and, if so, its shape and parameters) and
    per preset (shape and parameters, built on the meta device)."""
    import torch

    from attnkit.checkpoints import load
    from attnkit.checkpoints.registry import KNOWN_MODELS
    from attnkit.models import build_model
    from attnkit.models.encdec_config import ENCDEC_PRESETS
    from attnkit.models.presets import PRESETS

    presets, encdec = [], []
    for name in PRESETS:
        with torch.device("meta"):
            model = build_model(name)
        c = model.config
        presets.append(
            {
                "name": name,
                "arch": c.arch,
                "layers": c.n_layer,
                "width": c.d_model,
                "heads": c.n_heads,
                "kv_heads": c.n_kv_heads,
                "context": c.max_seq_len,
                "vocab": c.vocab_size,
                "parameters": model.num_parameters(),
            }
        )
    for name, make in ENCDEC_PRESETS.items():
        e = make()
        with torch.device("meta"):
            model = build_model(e)
        encdec.append(
            {
                "name": name,
                "arch": e.arch,
                "encoder_layers": e.n_encoder_layers,
                "decoder_layers": e.n_decoder_layers,
                "width": e.d_model,
                "heads": e.n_heads,
                "context": e.max_seq_len,
                "vocab": e.vocab_size,
                "parameters": model.num_parameters(),
            }
        )
    known: list[dict[str, Any]] = []
    for name, where in KNOWN_MODELS.items():
        same = next((row for row in known if row["package"] == where.pip_name), None)
        if same is not None:
            same["names"].append(name)
            continue
        row: dict[str, Any] = {"name": name, "names": [name], "package": where.pip_name}
        try:
            model = load(name)
        except Exception as e:  # noqa: BLE001 - not installed (or broken): say so, list the rest
            row.update(installed=False, note=str(e))
        else:
            c = model.config
            row.update(
                installed=True,
                arch=c.arch,
                layers=c.n_layer,
                width=c.d_model,
                heads=c.n_heads,
                context=c.max_seq_len,
                vocab=c.vocab_size,
                parameters=model.num_parameters(),
            )
        known.append(row)
    return {"known": known, "presets": presets, "encdec_presets": encdec}


def models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the catalogue as JSON")


def models_command(args: argparse.Namespace) -> int:
    cat = model_catalog()
    if args.json:
        print(json.dumps(cat, indent=2))
        return 0
    for rows in cat.values():
        for r in rows:
            if r.get("parameters") is not None:
                r["size"] = _size(r["parameters"])
    known = [
        {**r, "names": ", ".join(r["names"]), "installed": "yes" if r["installed"] else "no"}
        for r in cat["known"]
    ]
    print("known names (attnkit.load NAME; read from an installed Python package):")
    print(
        _table(
            known,
            [
                ("names", "names"),
                ("package", "package"),
                ("installed", "installed"),
                ("arch", "arch"),
                ("layers", "layers"),
                ("width", "width"),
                ("heads", "heads"),
                ("parameters", "parameters"),
                ("size", ""),
            ],
        )
    )
    print("\npresets (attnkit.models.build_model NAME):")
    print(
        _table(
            cat["presets"],
            [
                ("name", "name"),
                ("arch", "arch"),
                ("layers", "layers"),
                ("width", "width"),
                ("heads", "heads"),
                ("kv_heads", "kv heads"),
                ("context", "context"),
                ("vocab", "vocab"),
                ("parameters", "parameters"),
                ("size", ""),
            ],
        )
    )
    print("\nencoder-decoder presets (attnkit.models.build_model NAME):")
    print(
        _table(
            cat["encdec_presets"],
            [
                ("name", "name"),
                ("encoder_layers", "enc layers"),
                ("decoder_layers", "dec layers"),
                ("width", "width"),
                ("heads", "heads"),
                ("context", "context"),
                ("vocab", "vocab"),
                ("parameters", "parameters"),
                ("size", ""),
            ],
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# attnkit configs
# --------------------------------------------------------------------------------------------
def shipped_configs() -> dict[str, Path]:
    """Name -> file of every run config shipped in ``attnkit/configs``, by name."""
    from attnkit.training import config as run_config

    root = Path(run_config.__file__).resolve().parents[1] / "configs"
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def _find(name: str) -> Path:
    """A shipped config by name (``gpt-shakespeare-char`` or ``...char.toml``)."""
    found = shipped_configs()
    stem = name[: -len(".toml")] if name.endswith(".toml") else name
    if stem not in found:
        raise UsageError(f"no shipped config {name!r}; expected one of {sorted(found)}")
    return found[stem]


def _summary(path: Path) -> dict[str, Any]:
    """A config's first comment line and the model/data keys that say what it trains."""
    from attnkit.training import config as run_config

    text = path.read_text(encoding="utf-8")
    data = run_config.read_file(path)
    first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
    model, dat, train = data.get("model", {}), data.get("data", {}), data.get("train", {})
    return {
        "name": path.stem,
        "arch": model.get("arch", "gpt"),
        "layers": model.get("n_layer"),
        "width": model.get("d_model"),
        "tokenizer": dat.get("tokenizer"),
        "steps": train.get("max_iters"),
        "about": first,
    }


def configs_ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def configs_ls_command(args: argparse.Namespace) -> int:
    rows = [_summary(p) for p in shipped_configs().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        _table(
            rows,
            [
                ("name", "name"),
                ("arch", "arch"),
                ("layers", "layers"),
                ("width", "width"),
                ("tokenizer", "tokenizer"),
                ("steps", "steps"),
                ("about", "about"),
            ],
        )
    )
    print("\nattnkit configs show NAME | attnkit pretrain --config NAME --out DIR")
    return 0


def configs_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a shipped config (attnkit configs ls)")


def configs_show_command(args: argparse.Namespace) -> int:
    sys.stdout.write(_find(args.name).read_text(encoding="utf-8"))
    return 0


def configs_cp_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a shipped config (attnkit configs ls)")
    parser.add_argument("file", help="where to write the copy")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")


def configs_cp_command(args: argparse.Namespace) -> int:
    from attnkit._util.fs import atomic_write_text

    src = _find(args.name)
    dest = Path(args.file)
    if dest.is_dir():
        raise UsageError(f"{args.file!r} is a directory; expected a file name such as my.toml")
    if dest.exists() and not args.force:
        raise UsageError(f"{args.file!r} exists; pass --force to replace it")
    atomic_write_text(dest, src.read_text(encoding="utf-8"))
    print(f"wrote {dest} (a copy of {src.name})", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# pretrain --print-config
# --------------------------------------------------------------------------------------------
# model keys whose unset value is worked out from others when the model is built
DERIVED_FROM = {
    "n_kv_heads": "n_heads",
    "d_ff": "from d_model and mlp",
    "head_dim": "d_model // n_heads",
}


def config_toml(cfg: RunConfig) -> str:
    """``cfg`` as TOML that ``--config`` reads back to the same run: every data and train
    key; the model keys given, with comments naming the defaults of the others."""
    from attnkit._util import toml_out
    from attnkit.models import EncDecConfig, ModelConfig

    tree = cfg.to_dict()
    unset = []
    encdec = tree["model"].get("arch") == EncDecConfig.arch
    for f in dataclasses.fields(EncDecConfig if encdec else ModelConfig):
        if f.name in tree["model"] or not f.init:
            continue
        if f.name == "vocab_size":
            unset.append("vocab_size: from the tokenizer")
        elif f.name == "head" and tree["model"].get("arch") == "bert":
            unset.append('head = "mlm" (pre-training a BERT)')
        elif f.name == "pad_token_id" and tree["model"].get("arch") == "bert":
            unset.append("pad_token_id: the tokenizer's [PAD]")
        elif f.name == "max_seq_len":
            unset.append(f"max_seq_len: train.block_size ({cfg.train.block_size})")
        elif f.default is not dataclasses.MISSING and f.default is not None:
            unset.append(f"{f.name} = {toml_out.value(f.default)}")
        elif f.default_factory is not dataclasses.MISSING:
            unset.append(f"{f.name} = {toml_out.value(f.default_factory())}")
        elif f.name in DERIVED_FROM:
            unset.append(f"{f.name}: {DERIVED_FROM[f.name]}")
        else:
            unset.append(f"{f.name}: none")
    notes = {"model": ["not set here, so at their defaults:", *(f"  {u}" for u in unset)]}
    return toml_out.dumps(
        {"data": tree["data"], "model": tree["model"], "train": tree["train"]}, notes
    )
