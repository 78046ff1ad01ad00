"""attnkit checkpoint directories: round trips, atomic writes, and clear errors for corrupt,
truncated or mismatched files (never a half-loaded model)."""

import json
import os
from pathlib import Path

import pytest
import torch

import attnkit
from attnkit.checkpoints import CheckpointError, check_and_load
from attnkit.checkpoints import format as ckpt_format
from attnkit.models import build_model, get_preset


def word_tokenizer():
    from tokenizers.implementations import BertWordPieceTokenizer

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *"abcdefghijklmnopqrstuvwxyz",
        *("##" + c for c in "abcdefghijklmnopqrstuvwxyz"),
        "the",
        "bat",
        "he",
        "swung",
        "flew",
        "out",
        "of",
        "cave",
        "ball",
    ]
    return BertWordPieceTokenizer({w: i for i, w in enumerate(words)}, lowercase=True)._tokenizer


def tiny(arch: str):
    cfg = get_preset(
        "tiny-bert" if arch == "bert" else "tiny", vocab_size=80, d_model=32, n_heads=4
    )
    return build_model(cfg).eval()


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_save_load_round_trip(tmp_path, arch):
    model = tiny(arch)
    tok = word_tokenizer()
    attnkit.save(model, tmp_path, tokenizer=tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format"] == "attnkit" and meta["model"] == model.config.to_dict()
    loaded = attnkit.load(tmp_path)
    assert not loaded.training and loaded.config == model.config
    assert (
        loaded.meta.tokenizer.encode("he swung the bat").ids == tok.encode("he swung the bat").ids
    )
    ids = torch.randint(0, 80, (2, 9))
    with torch.no_grad():
        got, want = loaded(ids), model(ids)
        torch.testing.assert_close(got.hidden_states, want.hidden_states, atol=0, rtol=0)
        if arch == "gpt":
            torch.testing.assert_close(got.logits, want.logits, atol=0, rtol=0)
    if arch == "gpt":
        assert loaded.lm_head.proj.weight is loaded.embed.tok.weight
        assert "lm_head.proj.weight" not in ckpt_format.read_tensors(tmp_path / "model.safetensors")


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    model = tiny("gpt")
    attnkit.save(model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.torch as st

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", crash)
    other = tiny("gpt")
    with pytest.raises(OSError, match="disk full"):
        attnkit.save(other, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    attnkit.load(tmp_path)  # still the complete old checkpoint


def saved(tmp_path):
    attnkit.save(tiny("bert"), tmp_path)
    return tmp_path / "model.safetensors"


def test_truncated_weights_name_the_file_and_the_key(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError) as e:
        attnkit.load(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg and "key 'pooler.dense.weight'" in msg
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=f"{path}: truncated safetensors file"):
        attnkit.load(tmp_path)


def test_corrupt_bytes_and_header_name_the_file_and_the_key(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        attnkit.load(tmp_path)
    assert str(path) in str(e.value) and "key 'pooler.dense.weight' is corrupt" in str(e.value)
    data[8:12] = b"\x00\x01\x02\x03"  # garbage in the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}: corrupt safetensors header"):
        attnkit.load(tmp_path)


def set_model_fields(directory: Path, **fields: object) -> Path:
    """Overwrite fields of the model config in ``directory/config.json``; returns that path."""
    cfg_path = directory / "config.json"
    meta = json.loads(cfg_path.read_text())
    meta["model"].update(fields)
    cfg_path.write_text(json.dumps(meta))
    return cfg_path


def test_mismatched_config_and_keys_are_named(tmp_path):
    path = saved(tmp_path)
    set_model_fields(tmp_path, d_ff=100)
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: key 'blocks\.0\.mlp\.up\.weight' has "
        r"shape \(128, 32\), the model expects \(100, 32\)",
    ):
        attnkit.load(tmp_path)
    set_model_fields(tmp_path, d_ff=None)
    tensors = ckpt_format.read_tensors(path)
    tensors["blocks.9.extra"] = torch.zeros(1)
    del tensors["blocks.1.norm2.bias"]
    ckpt_format.save_tensors(path, tensors)
    with pytest.raises(CheckpointError) as e:
        attnkit.load(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "missing key(s) ['blocks.1.norm2.bias']" in msg
    assert "unexpected key(s) ['blocks.9.extra']" in msg


def test_bad_config_values_name_the_file_and_the_field(tmp_path):
    saved(tmp_path)
    cfg_path = set_model_fields(tmp_path, n_layer=0)
    with pytest.raises(
        CheckpointError,
        match=r"config\.json: bad model config: ModelConfig\.n_layer must be "
        r"a positive int, got 0",
    ):
        attnkit.load(tmp_path)
    cfg_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{cfg_path}: not valid JSON"):
        attnkit.load(tmp_path)


def test_failed_load_leaves_the_model_untouched():
    model = tiny("gpt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = {
        k: torch.ones_like(v) for k, v in model.state_dict().items() if k not in model.tied_keys()
    }
    good["norm.weight"] = torch.ones(7)  # one bad tensor among good ones
    with pytest.raises(CheckpointError, match=r"key 'norm\.weight' has shape \(7,\)"):
        check_and_load(model, good, "x.safetensors", skip=tuple(model.tied_keys()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    good["norm.weight"] = torch.full((32,), float("nan"))
    with pytest.raises(CheckpointError, match=r"key 'norm\.weight' holds NaN"):
        check_and_load(model, good, "x.safetensors", skip=tuple(model.tied_keys()))


def test_pickled_weights_are_read_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "x": Evil()}, path)
    with pytest.raises(CheckpointError, match=f"{path}: cannot be read as a PyTorch weights file"):
        ckpt_format.read_tensors(path)
    torch.save({"w": torch.zeros(2)}, path)
    assert set(ckpt_format.read_tensors(path)) == {"w"}


def test_meta_is_saved_and_loaded_with_the_labels_in_the_config(tmp_path):
    from attnkit.models.meta import ModelMeta, SwapRecord

    model = build_model(
        get_preset(
            "tiny-bert",
            vocab_size=80,
            head="classification",
            id2label=("neg", "pos"),
            attention="performer",
            attention_params={"nb_features": 8},
        )
    ).eval()
    model.meta = ModelMeta(
        tokenizer=word_tokenizer(),
        max_length=24,
        swaps=(SwapRecord("performer", {"nb_features": 8}, (0, 1)),),  # every layer
        finetune={"base_model": "x"},
    )
    attnkit.save(model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert sorted(data) == ["format", "format_version", "meta", "model"]
    assert data["model"]["id2label"] == ["neg", "pos"]
    loaded = attnkit.load(tmp_path)
    assert loaded.config.id2label == ("neg", "pos") and dict(loaded.config.label2id) == {
        "neg": 0,
        "pos": 1,
    }
    assert loaded.meta.source == str(tmp_path) and loaded.meta.max_length == 24
    assert loaded.meta.swaps == model.meta.swaps and loaded.meta.finetune == {"base_model": "x"}
    assert loaded.meta.tokenizer is not None


def test_a_swap_of_some_layers_is_not_claimed_after_loading(tmp_path, caplog):
    from attnkit.models.meta import ModelMeta, SwapRecord

    model = tiny("bert")
    model.meta = ModelMeta(swaps=(SwapRecord("performer", {"nb_features": 8}, (1,)),))
    attnkit.save(model, tmp_path)
    with caplog.at_level("WARNING", logger="attnkit.checkpoints"):
        loaded = attnkit.load(tmp_path)
    assert loaded.meta.swaps == () and loaded.config.attention == "exact"
    assert "performer(nb_features=8) on layers [1]" in caplog.text


def test_older_config_json_with_top_level_keys_still_loads(tmp_path):
    model = build_model(get_preset("tiny-bert", vocab_size=80, head="classification")).eval()
    attnkit.save(model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["meta"]
    del data["model"]["id2label"]
    data["format_version"] = 1
    data.update(
        labels=["a", "b"],
        max_length=16,
        classification={"pooling": "pooler"},
        sentence={"pooling": "mean", "normalize": True},
    )
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = attnkit.load(tmp_path)
    assert loaded.config.id2label == ("a", "b") and loaded.config.pooling == "mean"
    assert loaded.meta.max_length == 16 and loaded.meta.normalize
    assert loaded.meta.finetune == {"pooling": "pooler"}
    data["bogus"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"unknown top-level key\(s\) \['bogus'\]"):
        attnkit.load(tmp_path)
    data.pop("bogus")
    data["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported; expected 1..2"):
        attnkit.load(tmp_path)


def test_each_checkpoint_module_imports_first_on_its_own():
    """No import cycle: every module of the package can be the first one imported."""
    import importlib
    import sys

    modules = [
        "attnkit.checkpoints",
        "attnkit.checkpoints.format",
        "attnkit.checkpoints.registry",
        "attnkit.checkpoints.hf",
        "attnkit.checkpoints.hf.keymap",
        "attnkit.checkpoints.hf.bert",
        "attnkit.checkpoints.hf.gpt2",
        "attnkit.checkpoints.hf.convert",
        "attnkit.checkpoints.hf.directory",
    ]
    saved = {k: v for k, v in sys.modules.items() if k.startswith("attnkit.checkpoints")}
    try:
        for module in modules:
            for k in list(sys.modules):
                if k.startswith("attnkit.checkpoints"):
                    del sys.modules[k]
            importlib.import_module(module)
    finally:
        for k in list(sys.modules):
            if k.startswith("attnkit.checkpoints"):
                del sys.modules[k]
        sys.modules.update(saved)
        for name, mod in saved.items():  # parents point at the original submodules again
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, mod)


def test_config_json_with_the_old_head_names_loads(tmp_path):
    model = tiny("gpt")
    attnkit.save(model, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["model"]["n_head"] = data["model"].pop("n_heads")
    data["model"]["n_kv_head"] = data["model"].pop("n_kv_heads")
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert attnkit.load(tmp_path).config == model.config


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        CheckpointError, match=r"neither a checkpoint directory nor a known.*'minilm'"
    ):
        attnkit.load("no-such-model-here")
