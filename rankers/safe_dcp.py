"""Loading a checkpoint never runs code from it.

`torch.distributed.checkpoint`'s `FileSystemReader` reads `.metadata` with plain `pickle.load`, and
its default planner reads non-tensor entries with `torch.load(weights_only=False)`: a checkpoint
someone else wrote could run any command on load. Here the metadata goes through an unpickler that
builds only the classes DCP's metadata is made of (anything else is refused, naming the file and
the class), non-tensor entries through `torch.load(weights_only=True)`, and every shard file is
checked against the metadata's offsets before a byte is read, so a truncated or malformed file
gets a one-line error naming it.
"""

from __future__ import annotations

import errno
import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.planner import ReadItem

METADATA = ".metadata"
# (module, name) pairs DCP's metadata pickles reference; nothing else may be built.
_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "ChunkStorageMetadata",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"it references {module}.{name}, which is not part of a checkpoint's metadata"
        )


def read_metadata(path: Path) -> dcp_metadata.Metadata:
    """The DCP `Metadata` in file `path`, built by the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f, path).load()
    except FileNotFoundError:
        raise ValueError(f"{path}: missing (expected the weights' metadata written by rankers)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as e:
        raise ValueError(
            f"{path}: refused, not a checkpoint metadata file ({e or type(e).__name__})"
        ) from None
    if not isinstance(meta, dcp_metadata.Metadata):
        raise ValueError(f"{path}: refused, it holds a {type(meta).__name__}, not a checkpoint's Metadata")
    return meta


def check_shards(directory: Path, meta: dcp_metadata.Metadata) -> None:
    """ValueError naming the first shard file that is missing or shorter than the metadata says."""
    ends: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        if not isinstance(info, _StorageInfo):
            raise ValueError(f"{directory / METADATA}: refused, malformed storage entry {info!r}")
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(ends.items()):
        shard = directory / name
        if Path(name).name != name or not shard.is_file():
            raise ValueError(f"{shard}: missing (the checkpoint's metadata lists it)")
        size = shard.stat().st_size
        if size < end:
            raise ValueError(f"{shard}: truncated ({size:,} bytes; its metadata needs {end:,})")


def verify(directory: Path) -> None:
    """Reads what `load` would read of a DCP directory but the tensors: its metadata (restricted),
    its shards' sizes and any saved RNG states (CPU and GPU); ValueError naming the first bad file."""
    check_shards(directory, read_metadata(directory / METADATA))
    for rng in sorted([*directory.glob("rng-*.pt"), *directory.glob("cuda-rng-*.pt")]):
        load_rng(rng)


def _flat(state: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        out += _flat(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return out


def check_sizes(directory: Path, meta: dcp_metadata.Metadata, state: dict[str, Any]) -> None:
    """ValueError naming the first tensor of `state` whose saved size differs (a table by name);
    nested dicts (a resume state's model and optimizer) as DCP flattens them, keys joined by dots."""
    for key, value in _flat(state):
        saved = meta.state_dict_metadata.get(key)
        if not isinstance(value, torch.Tensor) or not isinstance(saved, dcp_metadata.TensorStorageMetadata):
            continue
        want, have = tuple(value.size()), tuple(saved.size)
        if want != have:
            parts = key.split(".")
            table = next(
                (parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("embedding_bags", "embeddings")),
                None,
            )
            what = f"table {table}" if table else f"parameter {key}"
            saved_size, model_size = (" x ".join(f"{n:,}" for n in size) for size in (have, want))
            raise ValueError(
                f"{directory}: {what} is {saved_size} in the saved weights but {model_size} in this model "
                "(its schema.json or config.json disagrees with the weights)"
            )


class SafeReader(FileSystemReader):
    """DCP's file reader with the restricted metadata unpickler and the shard-size check."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        directory = Path(self.path)
        rank = kwargs.get("rank")
        meta = read_metadata(directory / (METADATA if rank is None else f"__{rank}{METADATA}"))
        check_shards(directory, meta)
        storage_meta = getattr(meta, "storage_meta", None) or dcp_metadata.StorageMeta()
        storage_meta.load_id = self.load_id
        meta.storage_meta = storage_meta
        return meta


class SafePlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor entries with `weights_only=True`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            loaded = torch.load(value, weights_only=True)
        except Exception as e:  # torch raises UnpicklingError or RuntimeError on forbidden content
            raise ValueError(
                f"entry {read_item.dest_index.fqn!r}: refused, not plain data ({_first_line(e)})"
            ) from None
        # As DefaultLoadPlanner.load_bytes does with what it unpickled (there without weights_only).
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load(state: dict[str, Any], directory: Path, no_dist: bool = False) -> None:
    """`dcp.load` of `state` from `directory` through `SafeReader` and `SafePlanner`; the metadata
    and shard sizes are checked first, so a bad file fails here with its name (DCP would log a
    traceback and fall back to per-rank metadata, which rankers never writes)."""
    meta = read_metadata(directory / METADATA)
    check_shards(directory, meta)
    check_sizes(directory, meta, state)
    try:
        dcp.load(state, storage_reader=SafeReader(str(directory)), planner=SafePlanner(), no_dist=no_dist)
    except CheckpointException as e:  # DCP wraps each rank's error: report the first one
        cause = next(iter(e.failures.values()))[0]
        text = str(cause)
        # DCP tries the global metadata, then a per-rank one that rankers never writes: the first
        # failure is the one to report.
        if "global metadata read failed: " in text:
            text = text.split("global metadata read failed: ", 1)[1].split("; rank local metadata", 1)[0]
            raise ValueError(text) from None
        if isinstance(cause, ValueError):
            raise ValueError(text) from None
        raise ValueError(f"{directory}: cannot load the weights ({_first_line(cause)})") from None
    except (RuntimeError, OSError, AssertionError) as e:
        raise ValueError(f"{directory}: cannot load the weights ({_first_line(e)})") from None


def save(state: dict[str, Any], directory: Path) -> None:
    """`dcp.save` of `state` into `directory`; a failed write is an OSError naming the directory and
    its cause (a full disk said as such: torch's writer reports it only as "unexpected pos")."""
    try:
        dcp.save(state, checkpoint_id=str(directory))
    except CheckpointException as e:
        raise write_error(next(iter(e.failures.values()))[0], directory) from None
    except (OSError, RuntimeError) as e:
        raise write_error(e, directory) from None


def write_error(e: BaseException, path: Path) -> OSError:
    """An OSError for a failed write of `path`: the OS error itself, or ENOSPC where the disk is
    (nearly) full, else EIO with the writer's first line."""
    if isinstance(e, OSError) and e.errno is not None:
        return OSError(e.errno, e.strerror or str(e), e.filename or str(path))
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return OSError(errno.EIO, f"writing failed ({_first_line(e)})", str(path))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def save_rng(state: torch.Tensor, path: Path) -> None:
    """An RNG state (`torch.get_rng_state()`, `torch.cuda.get_rng_state(device)`) to `path`; a
    failed write is an OSError naming it (`write_error`)."""
    try:
        torch.save(state, path)
    except (OSError, RuntimeError) as e:
        raise write_error(e, path) from None


def load_rng(path: Path) -> torch.Tensor:
    """A saved torch RNG state (a uint8 tensor; the CPU's or a GPU's), read with `weights_only=True`."""
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing (expected a saved RNG state)") from None
    except Exception as e:  # torch raises UnpicklingError or RuntimeError on forbidden content
        raise ValueError(f"{path}: refused, not a saved RNG state ({_first_line(e)})") from None
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        raise ValueError(f"{path}: refused, not a saved RNG state (a {type(state).__name__})")
    return state
