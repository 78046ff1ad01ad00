"""Hostile and broken files are refused with one clear error, before anything is materialised.

Every case checks three things: the error is a ValueError (a CheckpointError) whose message
names the file and the problem; no other file on disk changed (their bytes are compared); and,
where a pickle holds a ``__reduce__`` payload, the payload did not run (the file it would
create does not exist). The command line turns each refusal into exit 2 and one stderr line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_checkpoints import word_tokenizer

import attnkit
from attnkit.checkpoints import CheckpointError, read_tensors
from attnkit.checkpoints import format as ckpt_format
from attnkit.checkpoints.hf import export_hf
from attnkit.cli import main
from attnkit.models import build_model, get_preset
from attnkit.training import optim
from attnkit.training.checkpointing import (
    MANIFEST_NAME,
    STATE_NAME,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

VOCAB = 80  # the word tokenizer's ids are 0..65


def digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip("\n").splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("attnkit: error: "), err
    return err[0]


def bert_dir(path: Path, **overrides) -> Path:
    cfg = get_preset("tiny-bert", vocab_size=VOCAB, d_model=32, n_layer=1, **overrides)
    torch.manual_seed(0)
    attnkit.save(build_model(cfg).eval(), path, tokenizer=word_tokenizer())
    return path


def gpt_dir(path: Path) -> Path:
    cfg = get_preset("tiny", vocab_size=VOCAB, d_model=32, n_layer=1, n_heads=2, max_seq_len=16)
    torch.manual_seed(0)
    attnkit.save(build_model(cfg).eval(), path, tokenizer=word_tokenizer())
    return path


def craft(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file written byte by byte: length field, JSON header, data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def library_refuses(path: Path) -> bool:
    """The safetensors library's own verdict (an independent reference)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:
        return True
    return False


# --------------------------------------------------------------------------------------------
# safetensors layout
# --------------------------------------------------------------------------------------------
def test_a_crafted_file_with_a_right_header_reads_back_exactly(tmp_path):
    """The control for the cases below: ``craft`` writes files the library and attnkit read."""
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.tensor([7, -8], dtype=torch.int64)
    header = {
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
    }
    path = craft(tmp_path / "ok.safetensors", header, a.numpy().tobytes() + b.numpy().tobytes())
    got = read_tensors(path)
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b)
    assert not library_refuses(path)


def _two_tensors(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "model.safetensors"
    save_file(
        {"a": torch.arange(12, dtype=torch.float32), "b": torch.ones(3, 5, dtype=torch.float16)},
        str(path),
    )
    return path, path.read_bytes()


BAD_HEADERS = {
    "overlap": (
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        },
        24,
        r"key 'b' \(data bytes 8\.\.24\) overlaps key 'a'",
    ),
    "beyond the data": (
        {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}},
        16,
        r"truncated safetensors file: key 'a' needs bytes 0\.\.32 .* only 16 bytes",
    ),
    "a gap": (
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
        },
        24,
        r"key 'b' starts at data byte 16, leaving bytes 8\.\.16 after key 'a' unused",
    ),
    "shape vs bytes": (
        {"a": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}},
        16,
        r"key 'a': shape \[3, 3\] of F32 needs 36 bytes but data_offsets \[0, 16\] span 16",
    ),
    "dtype vs bytes": (
        {"a": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}},
        16,
        r"key 'a': shape \[4\] of F64 needs 32 bytes",
    ),
    "unknown dtype": (
        {"a": {"dtype": "F7", "shape": [4], "data_offsets": [0, 16]}},
        16,
        r"key 'a' has dtype 'F7'; expected one of \['BOOL'",
    ),
    "negative dim": (
        {"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}},
        16,
        r"key 'a' has shape \[-4\]; expected a list of ints >= 0",
    ),
    "bool dim": (
        {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
        4,
        r"key 'a' has shape \[True\]",
    ),
    "reversed offsets": (
        {"a": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}},
        16,
        r"key 'a' has data_offsets \[16, 0\]; expected \[begin, end\]",
    ),
    "string offsets": (
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}},
        16,
        r"key 'a' has data_offsets \['0', '16'\]",
    ),
    "missing field": (
        {"a": {"dtype": "F32", "shape": [4]}},
        16,
        r"key 'a' has header entry \['dtype', 'shape'\]; expected an object with exactly",
    ),
    "entry not an object": ({"a": [1, 2]}, 0, r"key 'a' has header entry list"),
    "trailing bytes": (
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
        12,
        r"the data section holds 12 bytes but its tensors account for 8",
    ),
    "metadata not str": (
        {"__metadata__": {"x": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
        4,
        r"__metadata__ is \{'x': 1\}; expected an object of str -> str",
    ),
    "not an object": ([1, 2, 3], 0, r"corrupt safetensors header: a JSON list; expected an object"),
    "not JSON": (b"{not json at all}", 0, r"corrupt safetensors header: not valid JSON"),
    "not UTF-8": (b'{"\xff\xfe": 1}', 0, r"corrupt safetensors header: not UTF-8 text"),
    "duplicate key": (
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
        4,
        r"key 'a' appears twice in the header",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_a_header_the_bytes_cannot_back_is_refused_naming_the_file(tmp_path, case):
    header, data_len, needle = BAD_HEADERS[case]
    path = craft(tmp_path / "w.safetensors", header, bytes(range(256))[:data_len])
    with pytest.raises(CheckpointError, match=needle) as e:
        read_tensors(path)
    assert str(e.value).startswith(f"{path}: ")
    if case not in ("duplicate key", "a gap"):  # the library's verdict where it has one
        assert library_refuses(path), case


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 100_000_001])
def test_an_absurd_header_length_is_refused_before_reading_it(tmp_path, length):
    path = craft(tmp_path / "w.safetensors", b"{}", length=length)
    with pytest.raises(CheckpointError, match=rf"{path}: .*length field says {length} bytes"):
        read_tensors(path)


def test_a_header_length_past_the_end_is_truncation(tmp_path):
    path, data = _two_tensors(tmp_path)
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", len(data) - 7) + data[8:])
    with pytest.raises(
        CheckpointError, match=rf"{path}: truncated safetensors file \(or not one\)"
    ):
        read_tensors(path)


def test_truncation_at_any_offset_is_refused_before_a_tensor_is_read(tmp_path, monkeypatch):
    """Many cut points (seeded): inside the length field, the header and the data."""
    directory = bert_dir(tmp_path / "m")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = random.Random(15)
    cuts = sorted(
        {*range(10), 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1}
        | {rng.randrange(9, 8 + n) for _ in range(12)}
        | {rng.randrange(8 + n, len(data)) for _ in range(30)}
    )
    others = {k: v for k, v in digests(directory).items() if k != "model.safetensors"}

    opened: list[str] = []

    def no_materialising(path, *args, **kwargs):
        opened.append(path)  # the library opened the file: tensors could be read
        raise AssertionError("a tensor was read from a file whose header failed")

    monkeypatch.setattr("safetensors.safe_open", no_materialising)
    where = {"length": 0, "header": 0, "data": 0}
    for cut in cuts:
        weights.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            attnkit.load(directory)
        msg = str(e.value)
        assert msg.startswith(f"{weights}: truncated safetensors file"), (cut, msg)
        if cut >= 8 + n:  # inside the data: the first tensor cut is named
            assert "key '" in msg, (cut, msg)
        where["length" if cut < 8 else "header" if cut < 8 + n else "data"] += 1
        assert {k: v for k, v in digests(directory).items() if k != "model.safetensors"} == others
    assert where["length"] == 8 and min(where.values()) >= 8, where
    assert not opened
    monkeypatch.undo()
    weights.write_bytes(data)
    attnkit.load(directory)  # the untouched bytes load


def test_every_single_byte_flip_in_the_data_is_caught(tmp_path):
    """The CRC-32 of each tensor names the one whose bytes changed (seeded positions)."""
    directory = bert_dir(tmp_path / "m")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = ckpt_format.read_header(weights)
    rng = random.Random(7)
    for pos in rng.sample(range(8 + n, len(data)), 25):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(flipped))
        owner = next(k for k, t in header.tensors.items() if t.begin <= pos - 8 - n < t.end)
        with pytest.raises(CheckpointError, match=rf"key '{owner}' is corrupt: its bytes"):
            attnkit.load(directory)
    weights.write_bytes(data)


def test_shapes_that_do_not_fit_the_config_are_refused_before_the_model_is_built(
    tmp_path, monkeypatch
):
    """A config asking for 10**12 embeddings next to a small file: refused from the header
    (the model is built on the meta device only), naming the key and both shapes."""
    directory = bert_dir(tmp_path / "m")
    cfg_path = directory / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["vocab_size"] = 10**12
    cfg_path.write_text(json.dumps(data))
    before = digests(directory)
    monkeypatch.setattr(ckpt_format, "read_tensors", lambda *a: pytest.fail("tensors read"))
    with pytest.raises(
        CheckpointError,
        match=rf"{directory / 'model.safetensors'}: key 'embed.tok.weight' has shape "
        rf"\({VOCAB}, 32\), the model expects \(1000000000000, 32\)",
    ):
        attnkit.load(directory)
    assert digests(directory) == before


# --------------------------------------------------------------------------------------------
# config.json and tokenizer.json
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("n_layer", "1", r"ModelConfig\.n_layer must be a positive int, got '1'"),
        ("n_layer", -1, r"ModelConfig\.n_layer must be a positive int, got -1"),
        ("n_layer", True, r"ModelConfig\.n_layer must be a positive int, got True"),
        ("n_layer", 1.0, r"ModelConfig\.n_layer must be a positive int, got 1\.0"),
        ("d_model", None, r"ModelConfig\.d_model must be a positive int, got None"),
        ("dropout", "0.1", r"ModelConfig\.dropout must be a float in \[0, 1\), got '0\.1'"),
        ("norm_eps", float("nan"), r"ModelConfig\.norm_eps must be a finite number > 0"),
        ("bias", 1, r"ModelConfig\.bias must be a bool, got 1"),
        ("backend", "fast", r"ModelConfig\.backend must be one of \['auto'"),
        ("positional", ["rope"], r"ModelConfig\.positional must be one of"),
        ("n_layers", 2, r"unknown ModelConfig field\(s\) \['n_layers'\]; valid fields: \['arch'"),
    ],
)
def test_a_config_json_with_a_bad_field_is_refused_naming_it(tmp_path, field, value, needle):
    directory = bert_dir(tmp_path / "m")
    cfg_path = directory / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"][field] = value
    cfg_path.write_text(json.dumps(data))
    before = digests(directory)
    with pytest.raises(CheckpointError, match=rf"{cfg_path}: bad model config: {needle}"):
        attnkit.load(directory)
    assert digests(directory) == before


def test_old_field_names_in_config_json_still_load(tmp_path):
    directory = bert_dir(tmp_path / "m")
    cfg_path = directory / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["n_head"] = data["model"].pop("n_heads")  # the name before the rename
    cfg_path.write_text(json.dumps(data))
    assert attnkit.load(directory).config.n_heads == data["model"]["n_head"]


def test_a_config_json_with_wrong_types_is_exit_2_from_the_cli(tmp_path, capsys):
    directory = bert_dir(tmp_path / "m")
    cfg_path = directory / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["n_layer"] = "two"
    cfg_path.write_text(json.dumps(data))
    assert exit_status(["embed", "hello", "--model", str(directory)]) == 2
    line = one_line_error(capsys)
    assert str(cfg_path) in line and "ModelConfig.n_layer must be a positive int" in line


def test_a_tokenizer_json_with_ids_past_the_vocabulary_is_refused(tmp_path, capsys):
    directory = bert_dir(tmp_path / "m", max_seq_len=32)
    small = get_preset("tiny-bert", vocab_size=40, d_model=32, n_layer=1)
    attnkit.save(build_model(small), directory, tokenizer=word_tokenizer())  # ids up to 65
    before = digests(directory)
    tok_path = directory / "tokenizer.json"
    with pytest.raises(
        CheckpointError,
        match=rf"{tok_path}: the tokenizer gives ids up to 65 \(token '.*'\) but the model's "
        r"vocab_size is 40; expected every id < 40",
    ):
        attnkit.load(directory)
    assert exit_status(["embed", "hello", "--model", str(directory)]) == 2
    assert str(tok_path) in one_line_error(capsys)
    assert digests(directory) == before


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01garbage", b"[1, 2, 3]", b'{"version": "1.0", "model": {"type": "Nope"}}', b'{"ver'],
)
def test_a_tokenizer_json_that_is_not_a_tokenizer_is_refused(tmp_path, content):
    directory = bert_dir(tmp_path / "m")
    tok_path = directory / "tokenizer.json"
    tok_path.write_bytes(content)
    before = digests(directory)
    with pytest.raises(CheckpointError, match=rf"{tok_path}: cannot be read as a tokenizer\.json"):
        attnkit.load(directory)
    assert digests(directory) == before


def test_an_hf_tokenizer_that_does_not_fit_is_refused(tmp_path):
    cfg = get_preset("tiny-bert", vocab_size=40, d_model=32, n_layer=1, head="mlm")
    model = build_model(cfg).eval()
    model.meta = model.meta.replace(tokenizer=word_tokenizer())
    hf = export_hf(model, tmp_path / "hf")
    with pytest.raises(CheckpointError, match=rf"{hf / 'tokenizer.json'}: the tokenizer gives"):
        attnkit.load(hf)


# --------------------------------------------------------------------------------------------
# pickles: state.pt and pytorch_model.bin
# --------------------------------------------------------------------------------------------
class Payload:
    """Unpickled unsafely, this creates its sentinel file."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_the_payload_runs_when_unpickled_unsafely(tmp_path):
    """The control: the sentinel appears when the pickle is trusted, so its absence below
    proves the payload did not run."""
    sentinel = tmp_path / "ran"
    blob = pickle.dumps({"optimizer": Payload(sentinel)})
    pickle.loads(blob)
    assert sentinel.exists()


def _training_checkpoint(out: Path):
    cfg = get_preset("tiny", vocab_size=VOCAB, d_model=32, n_layer=1, n_heads=2, max_seq_len=16)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = optim.make_optimizer(model, 1e-3, 0.0, (0.9, 0.95), torch.device("cpu"))
    model(
        torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)
    ).loss.backward()
    opt.step()
    state = {
        "step": 10,
        "best_val_loss": 1.0,
        "tokens": 40,
        "elapsed": 0.1,
        "data_rng": torch.get_rng_state(),
    }
    directory = save_checkpoint(out, model, None, opt, state, keep=3)
    return model, opt, directory


def _rewrite_manifest(directory: Path) -> None:
    """What a hostile file's author would do: make the manifest match the new bytes."""
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


WRITERS = {  # how the hostile state.pt is written; what torch.load's refusal names
    "torch.save": (lambda obj, f: torch.save(obj, f), r"GLOBAL io\.open was not an allowed global"),
    "pickle protocol 2": (lambda obj, f: pickle.dump(obj, f, protocol=2), r"GLOBAL io\.open"),
    "pickle protocol 5": (lambda obj, f: pickle.dump(obj, f, protocol=5), r"Unsupported"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_payload_in_state_pt_is_refused_unrun_and_nothing_is_loaded(tmp_path, writer):
    model, opt, directory = _training_checkpoint(tmp_path / "run")
    sentinel = tmp_path / "payload-ran"
    write, reason = WRITERS[writer]
    with open(directory / STATE_NAME, "wb") as f:
        write({"step": 10, "optimizer": Payload(sentinel), "rng_cpu": torch.get_rng_state()}, f)
    _rewrite_manifest(directory)
    assert latest_checkpoint(tmp_path / "run") == directory  # the manifest vouches for it
    before = digests(directory)
    torch.manual_seed(1)
    fresh = build_model(model.config)
    weights = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh_opt = optim.make_optimizer(fresh, 1e-3, 0.0, (0.9, 0.95), torch.device("cpu"))
    with pytest.raises(
        CheckpointError,
        match=rf"{directory / STATE_NAME}: cannot be read as a PyTorch weights file: "
        rf"torch\.load\(weights_only=True\).*refused it \(.*{reason}.*\); nothing in it was run",
    ):
        load_checkpoint(directory, fresh, fresh_opt)
    assert not sentinel.exists()
    for k, v in fresh.state_dict().items():  # no half-loaded model: its weights are untouched
        assert torch.equal(v, weights[k]), k
    assert not fresh_opt.state_dict()["state"]
    assert digests(directory) == before


@pytest.mark.parametrize(
    "state, needle",
    [
        ([1, 2], r"holds a list; expected a dict with 'optimizer' \(dict\)"),
        ({"step": 10, "rng_cpu": torch.zeros(2)}, r"missing key\(s\) \['optimizer'\]"),
        (
            {"step": "10", "optimizer": {}, "rng_cpu": torch.zeros(2)},
            r"key 'step' is a str; expected int",
        ),
    ],
)
def test_a_state_pt_of_the_wrong_shape_is_refused(tmp_path, state, needle):
    _, _, directory = _training_checkpoint(tmp_path / "run")
    torch.save(state, directory / STATE_NAME)
    model = build_model(
        get_preset("tiny", vocab_size=VOCAB, d_model=32, n_layer=1, n_heads=2, max_seq_len=16)
    )
    opt = optim.make_optimizer(model, 1e-3, 0.0, (0.9, 0.95), torch.device("cpu"))
    with pytest.raises(CheckpointError, match=rf"{directory / STATE_NAME}: {needle}"):
        load_checkpoint(directory, model, opt)


def test_a_flipped_byte_in_a_training_checkpoint_is_caught_by_the_manifest(tmp_path, caplog):
    model, opt, first = _training_checkpoint(tmp_path / "run")
    state = {
        "step": 20,
        "best_val_loss": 1.0,
        "tokens": 80,
        "elapsed": 0.2,
        "data_rng": torch.get_rng_state(),
    }
    second = save_checkpoint(tmp_path / "run", model, None, opt, state, keep=3)
    weights = second / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    before = digests(tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run") == first
    assert (
        f"skipping checkpoint {second}: model.safetensors does not match its SHA-256" in caplog.text
    )
    # even past the manifest, the weights' own CRC-32 refuses the flipped byte
    with pytest.raises(CheckpointError, match=rf"{weights}: key '.*' is corrupt"):
        load_checkpoint(second, build_model(model.config), opt)
    assert digests(tmp_path / "run") == before


def test_an_hf_directory_with_a_pickle_payload_is_refused_asking_for_safetensors(tmp_path, capsys):
    cfg = get_preset("tiny-bert", vocab_size=VOCAB, d_model=32, n_layer=1, head="mlm")
    hf = export_hf(build_model(cfg).eval(), tmp_path / "hf")
    tensors = read_tensors(hf / "model.safetensors")
    (hf / "model.safetensors").unlink()
    sentinel = tmp_path / "payload-ran"
    torch.save({**tensors, "bert.embeddings.extra": Payload(sentinel)}, hf / "pytorch_model.bin")
    before = digests(hf)
    path = hf / "pytorch_model.bin"
    with pytest.raises(
        CheckpointError,
        match=rf"{path}: cannot be read as a PyTorch weights file: .*nothing in it was run\. "
        r"Expected a dict of name -> tensor \(or the weights as model\.safetensors\)",
    ):
        attnkit.load(hf)
    assert not sentinel.exists()
    assert exit_status(["embed", "hello", "--model", str(hf)]) == 2
    line = one_line_error(capsys)
    assert str(path) in line and "safetensors" in line and "GLOBAL" in line
    assert "add_safe_globals" not in line and "`False`" not in line  # no advice to trust it
    assert not sentinel.exists()
    assert digests(hf) == before
    torch.save(tensors, path)  # the same tensors without the payload load as before
    assert attnkit.load(hf).config.head == "mlm"


def test_a_broken_weights_file_from_generate_is_exit_2_and_one_line(tmp_path, capsys):
    directory = gpt_dir(tmp_path / "g")
    weights = directory / "model.safetensors"
    craft(weights, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 8)
    before = digests(directory)
    assert exit_status(["generate", "--model", str(directory), "--max-new-tokens", "2"]) == 2
    line = one_line_error(capsys)
    assert str(weights) in line and "truncated safetensors file: key 'a'" in line
    assert digests(directory) == before
    assert not os.path.exists(directory / "model.safetensors.tmp")


def test_resume_from_a_checkpoint_with_a_payload_is_exit_2_and_changes_nothing(
    tmp_path, capsys, monkeypatch
):
    """`attnkit pretrain --resume` on a run whose latest state.pt holds a payload (with a
    manifest rewritten to match): one line naming state.pt, exit 2, the payload unrun and
    every file of the run unchanged."""
    from attnkit.text.corpora import tinyshakespeare_path

    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tinyshakespeare_path().read_text()[:20_000])
    out = tmp_path / "run"
    tiny = ["--model.n_layer", "1", "--model.n_heads", "2", "--model.d_model", "32"]
    tiny += ["--model.max_seq_len", "32", "--train.block_size", "32", "--train.batch_size", "4"]
    tiny += ["--train.max_iters", "4", "--train.eval_interval", "2", "--train.eval_iters", "1"]
    tiny += ["--train.checkpoint_interval", "2", "--train.progress", "false"]
    tiny += ["--train.warmup_iters", "0", "--train.threads", "1"]
    threads = torch.get_num_threads()
    try:
        args = ["pretrain", "--config", "gpt-shakespeare-char", "--data", str(corpus)]
        assert exit_status([*args, "--out", str(out), *tiny]) == 0
        capsys.readouterr()
        latest = out / "checkpoints" / "step-000004"
        sentinel = tmp_path / "payload-ran"
        torch.save(
            {"step": 4, "optimizer": Payload(sentinel), "rng_cpu": torch.get_rng_state()},
            latest / STATE_NAME,
        )
        _rewrite_manifest(latest)
        before = digests(out)
        assert exit_status(["pretrain", "--out", str(out), "--resume"]) == 2
    finally:
        torch.set_num_threads(threads)
    line = one_line_error(capsys)
    assert line.startswith(f"attnkit: error: {latest / STATE_NAME}: cannot be read"), line
    assert "GLOBAL io.open" in line and "nothing in it was run" in line
    assert not sentinel.exists()
    assert digests(out) == before


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("num_hidden_layers", "1", r"ModelConfig\.n_layer must be a positive int, got '1'"),
        ("num_hidden_layers", True, r"ModelConfig\.n_layer must be a positive int, got True"),
        ("hidden_size", 32.0, r"ModelConfig\.d_model must be a positive int, got 32\.0"),
        ("vocab_size", -5, r"ModelConfig\.vocab_size must be a positive int, got -5"),
    ],
)
def test_an_hf_config_json_with_wrong_types_is_refused_naming_it(tmp_path, field, value, needle):
    """HF configs carry many fields attnkit does not use, so unknown keys there are ignored
    (as transformers does); a used field of the wrong type is refused, naming config.json."""
    cfg = get_preset("tiny-bert", vocab_size=VOCAB, d_model=32, n_layer=1, head="mlm")
    hf = export_hf(build_model(cfg).eval(), tmp_path / "hf")
    data = json.loads((hf / "config.json").read_text())
    data[field] = value
    (hf / "config.json").write_text(json.dumps(data))
    before = digests(hf)
    with pytest.raises(
        CheckpointError, match=rf"{hf / 'config.json'}: config cannot be converted: {needle}"
    ):
        attnkit.load(hf)
    assert digests(hf) == before
