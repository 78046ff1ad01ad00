"""Sharded-checkpoint storage without pickles (attnkit.training.dcp_storage), in one process.

The metadata written as JSON is checked against the pickle that DCP's own writer makes for
the same state; a pickle planted beside it is never opened, and a non-tensor value that is not
plain data is refused unrun (where DCP's default planner runs it).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

from attnkit.training import dcp_storage, fsdp
from attnkit.training.dcp_storage import (
    METADATA_NAME,
    JsonReader,
    JsonWriter,
    MetadataError,
    metadata_to_json,
)
from attnkit.training.distributed import Dist
from attnkit.training.parallelism import Parallel

pytestmark = pytest.mark.filterwarnings("ignore:.*single process:UserWarning")


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "w": torch.randn(3, 4, generator=g),
            "h": torch.randn(5, generator=g, dtype=torch.float64),
            "ids": torch.arange(6, dtype=torch.int32),
        },
        "optim": {"step": torch.tensor(3.0), "lr": 0.01, "betas": (0.9, 0.99), "names": ["a"]},
    }


def _template() -> dict:
    return {
        "model": {
            "w": torch.zeros(3, 4),
            "h": torch.zeros(5, dtype=torch.float64),
            "ids": torch.zeros(6, dtype=torch.int32),
        },
        "optim": {"step": torch.tensor(0.0), "lr": 0.0, "betas": (0.0, 0.0), "names": []},
    }


def _save(path, state, writer=JsonWriter) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, storage_writer=writer(path), no_dist=True)


def _load(path, state) -> None:
    dcp_storage.load(state, path, no_dist=True)


def test_round_trip_with_json_metadata_and_no_pickle(tmp_path):
    _save(tmp_path / "j", _state())
    names = sorted(p.name for p in (tmp_path / "j").iterdir())
    assert METADATA_NAME in names and ".metadata" not in names, names
    json.loads((tmp_path / "j" / METADATA_NAME).read_text())
    got = _template()
    _load(tmp_path / "j", got)
    want = _state()
    for k in want["model"]:
        assert got["model"][k].dtype == want["model"][k].dtype
        assert torch.equal(got["model"][k], want["model"][k]), k
    assert float(got["optim"]["step"]) == 3.0
    assert got["optim"]["lr"] == 0.01 and tuple(got["optim"]["betas"]) == (0.9, 0.99)
    assert got["optim"]["names"] == ["a"]


def test_json_metadata_holds_what_dcps_pickle_holds(tmp_path):
    """The reference: DCP's own writer's ``.metadata`` for the same state (a file this test
    wrote, so unpickling it is safe)."""
    _save(tmp_path / "j", _state())
    _save(tmp_path / "p", _state(), writer=FileSystemWriter)
    with open(tmp_path / "p" / ".metadata", "rb") as f:
        reference = metadata_to_json(pickle.load(f))
    ours = json.loads((tmp_path / "j" / METADATA_NAME).read_text())
    for side in (reference, ours):
        side.pop("storage_meta")  # the path and a random save id differ
    assert ours == reference
    # and it reads back into the same Metadata the pickle gives
    md = JsonReader(tmp_path / "j").read_metadata()
    with open(tmp_path / "p" / ".metadata", "rb") as f:
        pickled = pickle.load(f)
    assert md.state_dict_metadata == pickled.state_dict_metadata
    assert md.storage_data == pickled.storage_data
    assert md.planner_data == pickled.planner_data


class _Planted:
    """Unpickling this creates the file ``path`` (as a hostile payload would run code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_metadata_pickle_is_never_opened(tmp_path):
    _save(tmp_path / "j", _state())
    ran = tmp_path / "ran"
    (tmp_path / "j" / ".metadata").write_bytes(pickle.dumps(_Planted(ran)))
    got = _template()
    _load(tmp_path / "j", got)
    assert not ran.exists()
    assert torch.equal(got["model"]["w"], _state()["model"]["w"])
    # the same directory through DCP's own reader runs the payload: the check can fail
    FileSystemReader(tmp_path / "j").read_metadata()
    assert ran.exists()


def test_a_value_that_is_not_plain_data_is_refused_unrun(tmp_path):
    ran = tmp_path / "ran"
    state = {"x": torch.ones(2), "obj": _Planted(ran)}
    _save(tmp_path / "j", state)
    with pytest.raises(MetadataError, match="'obj' is not plain data"):
        _load(tmp_path / "j", {"x": torch.zeros(2), "obj": None})
    assert not ran.exists()
    # DCP's default planner runs it
    dcp.load(
        {"x": torch.zeros(2), "obj": None}, storage_reader=JsonReader(tmp_path / "j"), no_dist=True
    )
    assert ran.exists()


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: m["storage_data"][0].update(path="../../elsewhere"), "plain file name"),
        (
            lambda m: next(iter(m["state_dict_metadata"].values())).update(dtype="torch.nn"),
            "'torch.nn', which is no torch dtype",
        ),
        (lambda m: m.update(format="other"), "format 'attnkit-dcp-metadata'"),
        (lambda m: m["storage_data"][0].update(length="9"), "byte range"),
    ],
)
def test_malformed_metadata_is_refused_with_the_field_named(tmp_path, edit, needle):
    _save(tmp_path / "j", _state())
    path = tmp_path / "j" / METADATA_NAME
    md = json.loads(path.read_text())
    md["storage_data"].sort(key=lambda s: s["fqn"])
    edit(md)
    path.write_text(json.dumps(md))
    with pytest.raises(MetadataError, match=needle) as e:
        JsonReader(tmp_path / "j").read_metadata()
    assert str(path) in str(e.value)


def test_parallel_refusals():
    with pytest.raises(ValueError, match=r"train.parallel must be 'ddp' or 'fsdp', got 'zero3'"):
        Parallel("zero3", Dist())
    with pytest.raises(ValueError, match="single process.*torchrun"):
        Parallel("fsdp", Dist())
    two = Dist(rank=0, world_size=2)
    with pytest.raises(ValueError, match="train.compile=true with train.parallel='fsdp'"):
        Parallel("fsdp", two, compile=True)
    assert fsdp.available()  # torch 2.13: FSDP2 is there
    assert Parallel("ddp", Dist()).wrap(model := torch.nn.Linear(2, 2)) is model


def test_fsdp_on_a_torch_without_fsdp2_is_refused(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_fully_shard(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "torch.distributed.fsdp" and "fully_shard" in (fromlist or ()):
            raise ImportError("cannot import name 'fully_shard'")  # as torch < 2.6 says
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", without_fully_shard)
    assert not fsdp.available()
    version = re.escape(torch.__version__)
    with pytest.raises(ValueError, match=rf"PyTorch >= 2.6\); this is torch {version}"):
        Parallel("fsdp", Dist(rank=0, world_size=2))


def test_consolidate_refuses_a_normal_checkpoint(tmp_path):
    (tmp_path / "step-000001").mkdir()
    with pytest.raises(ValueError, match="not a sharded checkpoint"):
        fsdp.consolidate(tmp_path / "step-000001", tmp_path / "out")
