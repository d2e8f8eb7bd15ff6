"""Outputs that cannot hurt inputs, have one writer, and appear only when complete.

Every command that writes (a dataset, a checkpoint, a predictions file) goes through `StagedOutput`:

- the output path is resolved and refused, before any work, when it is, contains or lies inside one
  of the command's inputs (`check_apart`);
- an existing output is replaced only with `overwrite`, and only when this library wrote it: a
  dataset (`dataset.json` and `schema.json`), a checkpoint (`checkpoint.json`) or a predictions file
  (parquet whose metadata says so); anything else is refused by name whatever the flag;
- an exclusive OS lock (`fcntl.flock` on `.NAME.lock` beside the output, released by the kernel when
  the process dies, so a crash leaves no stale lock) makes a second writer fail at once, naming
  the holder;
- the output is built at `.NAME.partial` beside its final path and moved in only when complete: a
  directory is swapped with the old one in one atomic `renameat2(RENAME_EXCHANGE)` where the
  kernel has it (two renames elsewhere), a file replaced with `os.replace`. A run killed at any
  instant leaves the old output intact or the new one complete, never a mix.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

KINDS = ("dataset", "checkpoint", "predictions", "artifact")
CHECKPOINT_MARKER = "checkpoint.json"  # written last into a checkpoint: its completeness marker
PREDICTIONS_KEY = b"rankers.kind"  # parquet schema metadata key of a predictions file
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def staging_path(final: str | Path) -> Path:
    """Where the output for `final` is built until it is complete."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def lock_path(final: str | Path) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}.lock")


def paths_of(inputs: str | Path | Iterable[str | Path | None] | None) -> list[Path]:
    """The paths among `inputs` (one path, several, or None) as a list."""
    if inputs is None:
        return []
    if isinstance(inputs, (str, Path)):
        return [Path(inputs)]
    return [Path(p) for p in inputs if p is not None]


def check_apart(out: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> None:
    """ValueError when `out` is, contains or lies inside any of `inputs` (compared resolved)."""
    target = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            how = "is"
        elif source in target.parents:
            how = "lies inside"
        elif target in source.parents:
            how = "contains"
        else:
            continue
        raise ValueError(
            f"{flag} {out} {how} the input {given}: an output must be apart from every input "
            "(choose another path)"
        )


def is_ours(path: Path, kind: str) -> bool:
    """Whether `path` holds an output of `kind` that this library wrote (so it may be replaced)."""
    if kind == "dataset":
        return path.is_dir() and (path / "dataset.json").is_file() and (path / "schema.json").is_file()
    if kind == "checkpoint":
        return path.is_dir() and ((path / CHECKPOINT_MARKER).is_file() or is_legacy_checkpoint(path))
    if kind == "predictions":
        return path.is_file() and _parquet_kind(path) == b"predictions"
    if kind == "artifact":
        return path.is_file() and _is_artifact(path)
    raise ValueError(f"output kind {kind!r}: expected one of {KINDS}")


def _is_artifact(path: Path) -> bool:
    """A TorchScript archive (a zip) that `rankers export` wrote: it holds rankers/export.json."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/extra/rankers/export.json") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_legacy_checkpoint(path: Path) -> bool:
    """A checkpoint written before checkpoint.json existed: then metrics.json was written last, so
    with it the directory is complete."""
    files = ("config.json", "schema.json", "metrics.json", "weights/.metadata")
    return not (path / CHECKPOINT_MARKER).exists() and all((path / f).is_file() for f in files)


def _parquet_kind(path: Path) -> bytes | None:
    import pyarrow.parquet as pq

    try:
        return (pq.read_schema(path).metadata or {}).get(PREDICTIONS_KEY)
    except (OSError, ValueError):
        return None


def check_replaceable(final: Path, kind: str, overwrite: bool, flag: str = "--out") -> None:
    """ValueError unless `final` is free, or is an output of `kind` this library wrote and
    `overwrite` is set."""
    if not os.path.lexists(final):
        return
    if not is_ours(final, kind):
        what = "a directory" if final.is_dir() else "a file"
        expected = {
            "dataset": "a dataset directory (with dataset.json and schema.json)",
            "checkpoint": f"a checkpoint directory (with {CHECKPOINT_MARKER})",
            "predictions": "a predictions file (parquet written by `rankers predict`)",
            "artifact": "an artifact written by `rankers export`",
        }[kind]
        raise ValueError(
            f"{flag} {final} is {what} that rankers did not write (expected {expected}); refusing to "
            "replace it, with or without --overwrite (choose another path)"
        )
    if not overwrite:
        raise ValueError(f"{final} already exists (pass --overwrite / overwrite=True to replace it)")


class OutputLock:
    """An exclusive `flock` on `.NAME.lock` beside `final`, held until `release` (or process exit).

    `release` removes the file while still holding the lock; a process that opened the file just
    before and locks it just after finds its inode gone from the path and tries again on the new
    file, so two writers never both hold a lock.
    """

    def __init__(self, final: Path) -> None:
        self.path = lock_path(final)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # named as the output the user asked for, not our lock file
            raise OSError(e.errno, e.strerror, str(final)) from None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(self.path)
                os.close(fd)
                raise ValueError(
                    f"{final} is being written by another rankers process ({holder}); wait for it to "
                    "end or choose another output path"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder released and removed this file meanwhile: lock the new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.fd: int | None = fd
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        me["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]
        os.ftruncate(fd, 0)  # a longer holder left by a killed process must not remain
        os.pwrite(fd, json.dumps(me).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _describe_holder(path: Path) -> str:
    holder: dict = {}
    for _ in range(20):  # the holder writes who it is just after it took the lock
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder:
            break
        time.sleep(0.01)
    if not holder:
        return "holder unknown"
    since, command = holder.get("since"), holder.get("command")
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since}: {command}"


def publish(staging: Path, final: Path) -> None:
    """Moves the complete `staging` to `final`: a file by `os.replace`; a directory by an atomic
    exchange with the old one (then removed), or by a rename where nothing is at `final`."""
    if staging.is_file():
        os.replace(staging, final)
        return
    if not os.path.lexists(final):
        os.rename(staging, final)
        return
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if _exchange(staging, final):
        # The old output is now at the staging path: moved on before it is removed, so a kill
        # during the removal never leaves a half-removed old output where a run is looked for.
        os.rename(staging, old)
    else:  # no atomic exchange here: two renames
        os.rename(final, old)
        os.rename(staging, final)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


class StagedOutput:
    """One output of `kind` at `final`, built at `staging` under an exclusive lock.

    Use as a context manager: leaving without `commit` (an exception, say) removes what was
    staged, unless `keep_on_error` says it must stay (an unfinished run that can be resumed).

    Args:
        final: the output path.
        kind: "dataset", "checkpoint", "predictions" or "artifact".
        overwrite: replace an existing output of this kind (only at commit).
        inputs: paths the command reads; `final` must be apart from each.
        flag: how the user named the output, for messages.
    """

    def __init__(
        self,
        final: str | Path,
        kind: str,
        overwrite: bool = False,
        inputs: str | Path | Iterable[str | Path | None] | None = (),
        flag: str = "--out",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"output kind {kind!r}: expected one of {KINDS}")
        self.final = Path(os.path.abspath(final))
        check_apart(self.final, paths_of(inputs), flag)
        self.kind, self.overwrite, self.flag = kind, overwrite, flag
        self.staging = staging_path(self.final)
        self.keep_on_error = False
        self.copied_progress: bytes | None = None  # set by a resumed run that continues a copy
        self._lock: OutputLock | None = OutputLock(self.final)  # then what is there cannot change
        self.committed = False
        try:
            check_replaceable(self.final, kind, overwrite, flag)
        except BaseException:
            self.release()
            raise

    def fresh_directory(self) -> Path:
        """An empty staging directory (whatever an earlier, dead writer left there is removed)."""
        remove(self.staging)
        self.staging.mkdir()
        return self.staging

    def commit(self) -> Path:
        """Publishes the staged output at `final` and releases the lock."""
        check_replaceable(self.final, self.kind, self.overwrite, self.flag)  # nothing else appeared
        publish(self.staging, self.final)
        self.committed = True
        self.release()
        return self.final

    def abort(self) -> None:
        if not self.keep_on_error:
            remove(self.staging)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            self.abort()
