"""``torch.distributed.checkpoint`` (DCP) storage without pickles: the metadata as JSON.

DCP's own :class:`~torch.distributed.checkpoint.FileSystemWriter` stores the checkpoint's
metadata (which tensor chunk lives in which file at which offset) as a pickle, ``.metadata``,
and its reader unpickles it with :func:`pickle.load`; non-tensor values (an optimizer's
learning rate, betas) are stored with :func:`torch.save` and read back with
``torch.load(weights_only=False)``. Either would run code from a hostile checkpoint. Here:

* :class:`JsonWriter` writes the same metadata as ``metadata.json`` (no ``.metadata``);
* :class:`JsonReader` reads only that file, checking every field's type;
* :class:`SafeLoadPlanner` reads non-tensor values with ``torch.load(weights_only=True)``
  (plain numbers, strings, lists, dicts and tensors; anything else is refused unrun);
* tensor data, as in DCP itself, is read with ``torch.load(weights_only=True)``.

So a sharded checkpoint is as safe to read as a safetensors file plus ``state.pt``; the
SHA-256 manifest of :mod:`attnkit.training.checkpointing` still guards against damage, not
against a deliberately crafted file, which these readers refuse or read as data only.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem

from attnkit._util.fs import atomic_write_json

__all__ = [
    "METADATA_NAME",
    "JsonReader",
    "JsonWriter",
    "MetadataError",
    "SafeLoadPlanner",
    "load",
    "save",
]

METADATA_NAME = "metadata.json"
_FORMAT = "attnkit-dcp-metadata"
_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format,
}


class MetadataError(ValueError):
    """A ``metadata.json`` that is not what :class:`JsonWriter` writes (a ValueError), or a
    non-tensor value that is not plain data.

    Examples:
        >>> load(state, Path("step-000500/shards"))  # MetadataError if metadata.json is not ours
    """


def _torch_attr(text: Any, kind: type, what: str) -> Any:
    """``torch.<name>`` for ``text`` = "torch.<name>", if it is a ``kind`` (a dtype, a
    layout); never an arbitrary attribute."""
    if not isinstance(text, str) or not text.startswith("torch."):
        raise MetadataError(f"{what} is {text!r}; expected a name such as 'torch.float32'")
    value = getattr(torch, text[len("torch.") :], None)
    if not isinstance(value, kind):
        raise MetadataError(f"{what} is {text!r}, which is no torch {kind.__name__}")
    return value


def _ints(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise MetadataError(f"{what} is {value!r}; expected a list of integers")
    return value


def _str(value: Any, what: str, none: bool = False) -> Any:
    if (value is None and none) or isinstance(value, str):
        return value
    raise MetadataError(f"{what} is {value!r}; expected a string")


def _memory_format_name(fmt: torch.memory_format) -> str:
    for name, value in _MEMORY_FORMATS.items():
        if value == fmt:
            return name
    raise ValueError(f"memory format {fmt!r} has no name here; expected one of {_MEMORY_FORMATS}")


def _path_item(value: Any, what: str) -> str | int:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise MetadataError(f"{what} holds {value!r}; expected strings and integers")


def metadata_to_json(md: Metadata) -> dict[str, Any]:
    """A JSON-ready dict holding everything DCP's pickled ``.metadata`` would."""
    entries: dict[str, Any] = {}
    for fqn, item in md.state_dict_metadata.items():
        if isinstance(item, BytesStorageMetadata):
            entries[fqn] = {"kind": "bytes"}
            continue
        p = item.properties
        entries[fqn] = {
            "kind": "tensor",
            "dtype": str(p.dtype),
            "layout": str(p.layout),
            "requires_grad": bool(p.requires_grad),
            "memory_format": _memory_format_name(p.memory_format),
            "pin_memory": bool(p.pin_memory),
            "size": list(item.size),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in item.chunks],
        }
    storage = [
        {
            "fqn": index.fqn,
            "offset": None if index.offset is None else list(index.offset),
            "index": index.index,
            "path": info.relative_path,
            "start": info.offset,
            "length": info.length,
            "transforms": None
            if info.transform_descriptors is None
            else list(info.transform_descriptors),
        }
        for index, info in (md.storage_data or {}).items()
    ]
    planner = md.planner_data
    if planner is not None:  # the default planner's flattening: fqn -> path of keys
        planner = {k: list(v) for k, v in planner.items()}
    meta = md.storage_meta
    return {
        "format": _FORMAT,
        "version": md.version,
        "state_dict_metadata": entries,
        "storage_data": storage,
        "planner_data": planner,
        "storage_meta": None
        if meta is None
        else {
            "checkpoint_id": None if meta.checkpoint_id is None else str(meta.checkpoint_id),
            "save_id": meta.save_id,
            "modules": list(meta.modules),
        },
    }


def metadata_from_json(data: Any, where: str) -> Metadata:
    """The :class:`Metadata` that :func:`metadata_to_json` wrote; a MetadataError naming
    ``where`` and the field for anything else."""
    try:
        return _from_json(data)
    except MetadataError as e:
        raise MetadataError(f"{where}: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise MetadataError(f"{where}: malformed DCP metadata ({type(e).__name__}: {e})") from None


def _from_json(data: Any) -> Metadata:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise MetadataError(f"expected an object with format {_FORMAT!r}")
    entries: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    for fqn, e in data["state_dict_metadata"].items():
        if e["kind"] == "bytes":
            entries[fqn] = BytesStorageMetadata()
            continue
        if e["kind"] != "tensor":
            raise MetadataError(f"entry {fqn!r} has kind {e['kind']!r}; expected tensor or bytes")
        if e["memory_format"] not in _MEMORY_FORMATS:
            raise MetadataError(f"entry {fqn!r} has memory format {e['memory_format']!r}")
        props = TensorProperties(
            dtype=_torch_attr(e["dtype"], torch.dtype, f"entry {fqn!r} dtype"),
            layout=_torch_attr(e["layout"], torch.layout, f"entry {fqn!r} layout"),
            requires_grad=bool(e["requires_grad"]),
            memory_format=_MEMORY_FORMATS[e["memory_format"]],
            pin_memory=bool(e["pin_memory"]),
        )
        chunks = [
            ChunkStorageMetadata(
                offsets=torch.Size(_ints(c["offsets"], f"entry {fqn!r} chunk offsets")),
                sizes=torch.Size(_ints(c["sizes"], f"entry {fqn!r} chunk sizes")),
            )
            for c in e["chunks"]
        ]
        entries[fqn] = TensorStorageMetadata(
            properties=props,
            size=torch.Size(_ints(e["size"], f"entry {fqn!r} size")),
            chunks=chunks,
        )
    storage: dict[MetadataIndex, _StorageInfo] = {}
    for s in data["storage_data"]:
        fqn = _str(s["fqn"], "a storage entry's fqn")
        path = _str(s["path"], f"the file of {fqn!r}")
        if Path(path).name != path or path.startswith("."):
            raise MetadataError(f"the file of {fqn!r} is {path!r}; expected a plain file name")
        offset = None if s["offset"] is None else _ints(s["offset"], f"the offset of {fqn!r}")
        index = s["index"]
        if index is not None and not isinstance(index, int):
            raise MetadataError(f"the index of {fqn!r} is {index!r}; expected an integer")
        start, length = _ints([s["start"], s["length"]], f"the byte range of {fqn!r}")
        transforms = s["transforms"]
        if transforms is not None:
            transforms = [_str(t, f"a transform of {fqn!r}") for t in transforms]
        storage[MetadataIndex(fqn, offset, index)] = _StorageInfo(path, start, length, transforms)
    planner = data["planner_data"]
    if planner is not None:
        planner = {
            _str(k, "a planner key"): tuple(_path_item(p, f"planner entry {k!r}") for p in v)
            for k, v in planner.items()
        }
    sm = data["storage_meta"]
    storage_meta = (
        None
        if sm is None
        else StorageMeta(
            checkpoint_id=_str(sm["checkpoint_id"], "checkpoint_id", none=True),
            save_id=_str(sm["save_id"], "save_id", none=True),
            modules=[_str(m, "a module name") for m in sm["modules"]],
        )
    )
    return Metadata(
        state_dict_metadata=entries,
        planner_data=planner,
        storage_data=storage,
        storage_meta=storage_meta,
        version=_str(data["version"], "version", none=True),
    )


class JsonWriter(FileSystemWriter):
    """DCP's file-system writer, with the metadata written as ``metadata.json`` (atomically)
    instead of a pickle. Takes ``FileSystemWriter``'s arguments (the directory first).

    Examples:
        >>> dcp.save(state, storage_writer=JsonWriter(Path("step-000500/shards")))
    """

    def finish(self, metadata: Metadata, results: list[list[Any]]) -> None:
        """Complete ``metadata`` with the storage of every written chunk and write it as
        ``metadata.json``; DCP calls this on the coordinator once all ranks have written.

        Args:
            metadata: the global plan's metadata.
            results: each rank's list of ``WriteResult`` (where each item landed).

        Examples:
            >>> writer.finish(metadata, results)  # called by dcp.save
        """
        metadata.version = CURRENT_DCP_VERSION
        storage_md = {}
        for wr_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in wr_list})
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        atomic_write_json(Path(os.fspath(self.path)) / METADATA_NAME, metadata_to_json(metadata))


class JsonReader(FileSystemReader):
    """DCP's file-system reader, reading the metadata only from ``metadata.json`` (a pickled
    ``.metadata`` beside it is never opened). Takes ``FileSystemReader``'s arguments (the
    directory first).

    Examples:
        >>> dcp.load(state, storage_reader=JsonReader(Path("step-000500/shards")))
    """

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The checkpoint's metadata, read from ``metadata.json`` with every field's type
        checked (arguments as DCP passes them, unused).

        Returns:
            The DCP ``Metadata``, with this reader's load id.

        Raises:
            MetadataError: the file is missing, not JSON, or not what :class:`JsonWriter` writes.

        Examples:
            >>> JsonReader(Path("step-000500/shards")).read_metadata().state_dict_metadata.keys()
        """
        path = Path(os.fspath(self.path)) / METADATA_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MetadataError(f"{path}: not found (a sharded checkpoint holds one)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MetadataError(f"{path}: not valid JSON: {e}") from None
        md = metadata_from_json(data, str(path))
        if md.storage_meta is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor values read by
    ``torch.load(weights_only=True)``.

    Examples:
        >>> dcp.load(state, storage_reader=JsonReader(path), planner=SafeLoadPlanner())
    """

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Read one non-tensor value with ``torch.load(weights_only=True)`` and put it in the
        state dict at its place.

        Args:
            read_item: DCP's description of the item (its destination key).
            value: the stored bytes.

        Raises:
            MetadataError: the value is not plain data (numbers, strings, lists, dicts,
                tensors), naming its key.

        Examples:
            >>> planner.load_bytes(read_item, io.BytesIO(data))  # called by dcp.load
        """
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:  # an UnpicklingError that names the refused global
            raise MetadataError(
                f"sharded checkpoint value {read_item.dest_index.fqn!r} is not plain data "
                f"(numbers, strings, lists, dicts, tensors): {e}"
            ) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def save(state: dict[str, Any], path: Path, no_dist: bool = False) -> None:
    """``dcp.save`` of ``state`` into the directory ``path`` with :class:`JsonWriter`
    (collective unless ``no_dist``).

    Args:
        state: the state dict to save (tensors, DTensor shards and plain values).
        path: the directory to write.
        no_dist: save from this process alone, without the process group.

    Examples:
        >>> save({"model": model.state_dict()}, Path("shards"), no_dist=True)
    """
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=JsonWriter(path), no_dist=no_dist)


def load(state: dict[str, Any], path: Path, no_dist: bool = False) -> None:
    """``dcp.load`` into ``state`` (in place) from ``path`` with :class:`JsonReader` and
    :class:`SafeLoadPlanner` (collective unless ``no_dist``). A refused file raises its
    :class:`MetadataError` (DCP would wrap it in a ``CheckpointException``, a BaseException).

    Args:
        state: the state dict to fill, holding tensors of the saved shapes (or shards).
        path: the directory :func:`save` wrote.
        no_dist: load in this process alone, without the process group.

    Raises:
        MetadataError: the metadata or a non-tensor value is refused.

    Examples:
        >>> sd = model.state_dict(); load({"model": sd}, Path("shards"), no_dist=True)
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=JsonReader(path), planner=SafeLoadPlanner(), no_dist=no_dist)
    except CheckpointException as e:
        for failure in e.failures.values():
            exc = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(exc, MetadataError):
                raise MetadataError(str(exc)) from None
        raise
