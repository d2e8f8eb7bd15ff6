"""A checkpoint directory: everything a Predictor needs, and nothing outside it.

    out/
      schema.json       the dataset's schema (features and tasks)
      config.json       {"ranker": RankerConfig, "train": TrainConfig, "data": path, "prior": {...}}
      weights/          torch.distributed.checkpoint files of the model's state dict
      metrics.json      training history and the final valid/test metrics
      state/            with --checkpoint-every: model and optimizer state, RNG, progress (resume)
      calibration.json  after `rankers calibrate`
      spec.json, vocabulary.parquet   trained on a dataset converted by spec: what maps raw rows
      checkpoint.json   written last: the completeness marker (what wrote it, when, how it ended)

A run builds its checkpoint at `.NAME.partial` beside `out` under an exclusive lock and swaps it in
only when complete (`features.outputs.StagedOutput`), so `out` is always a complete checkpoint or
absent, and `--overwrite` keeps the old one until the new one is whole. A run that fails or is
killed after saving resumable state leaves it at `.NAME.partial`, where `--resume out` finds it
(`rankers.staging` opens a run's directory; the progress a run saves is `rankers.run.RunState`'s,
opaque here).
Loading reads data only: DCP's metadata through a restricted unpickler, tensors and RNG states with
`weights_only=True`, JSON (`rankers.safe_dcp`).

Inside a directory, weights are written to a temporary sibling and renamed into place; a save
interrupted between the two renames leaves the previous weights as `.weights.old`, which loading
falls back to.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from features.outputs import CHECKPOINT_MARKER, is_legacy_checkpoint, staging_path
from features.rawinput import RawInput
from features.schema import SCHEMA_FILE, Schema
from features.strict import build, check_keys, check_value, read_json
from rankers import safe_dcp
from rankers.config import RankerConfig, TrainConfig
from rankers.devices import model_device

log = logging.getLogger(__name__)
CONFIG_FILE, WEIGHTS_DIR, METRICS_FILE = "config.json", "weights", "metrics.json"
OLD_WEIGHTS = f".{WEIGHTS_DIR}.old"
STATE_DIR, PROGRESS_FILE = "state", "progress.json"
FORMAT = 1  # of the checkpoint directory; in checkpoint.json


@dataclass(frozen=True)
class CheckpointConfig:
    """A checkpoint's config.json (`rankers.checkpoint.CheckpointDir.write_config`), checked."""

    ranker: RankerConfig
    train: TrainConfig
    data: str  # the dataset directory trained on
    prior: dict[str, float]  # task -> positive rate of the training rows


def checkpoint_config(config: object, where: str) -> CheckpointConfig:
    """The content of a checkpoint's config.json read strictly: exactly the keys ranker, train, data
    and prior; ranker by `RankerConfig.from_dict`, train against `TrainConfig`'s fields, data a
    string, prior a probability per task.

    Args:
        config: the parsed JSON (`CheckpointDir.config()`).
        where: the file, e.g. "runs/mlp/config.json".

    Raises:
        ValueError: naming `where`, the entry, the key and the value.
    """
    d = check_keys(config, where, required=("ranker", "train", "data", "prior"))
    ranker = RankerConfig.from_dict(d["ranker"], f"{where} [ranker]")
    train = build(TrainConfig, d["train"], f"{where} [train]")
    data = check_value(d["data"], str, f"{where} data")
    prior = check_value(d["prior"], dict[str, float], f"{where} prior")
    for task, p in prior.items():
        if not 0 <= p <= 1:  # NaN and infinities too
            raise ValueError(f"{where} prior.{task}: {p} is not a probability; expected a number in [0, 1]")
    return CheckpointConfig(ranker, train, data, prior)


class CheckpointDir:
    """Reads and writes the files of one checkpoint directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write_config(
        self,
        schema: Schema,
        ranker_config: RankerConfig,
        train_config: TrainConfig,
        data: Path,
        prior: dict[str, float],
    ) -> None:
        schema.save(self.path)
        RawInput.save(data, self.path)  # a dataset converted by spec: what maps raw rows to predict
        config = {
            "ranker": ranker_config.to_dict(),
            "train": asdict(train_config),
            "data": str(Path(data).resolve()),
            "prior": prior,
        }
        (self.path / CONFIG_FILE).write_text(json.dumps(config, indent=1))

    def save_weights(self, model: nn.Module) -> None:
        """Every rank writes its shards into a temporary directory; rank 0 then renames it into place
        (the previous weights stay complete until then)."""
        from rankers.distributed import barrier, is_main

        tmp = self.path / f".{WEIGHTS_DIR}.partial"
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        safe_dcp.save(model.state_dict(), tmp)
        self._publish(tmp, self.path / WEIGHTS_DIR)  # the previous weights as .weights.old meanwhile

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rank 0 renames the complete `tmp` to `final`, keeping the previous one until then."""
        from rankers.distributed import barrier, is_main

        barrier()
        if is_main():
            old = final.with_name(f".{final.name}.old")
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
        barrier()

    def save_state(
        self,
        model: nn.Module,
        optimizer: Any,
        progress: dict[str, Any],
        device: torch.device | None = None,
    ) -> None:
        """What `--resume` needs: model and optimizer state (every rank's shards, DCP), each rank's
        torch RNG state (`rng-RANK.pt`) and, where the run computes on a GPU, that GPU's RNG state
        (`cuda-rng-RANK.pt`), the learning rates and the loop's `progress` (JSON, with the number
        of processes added), in a temporary directory renamed into place, so a kill at any instant
        leaves the previous state or the new one.

        Args:
            device: the run's device (default: the model's, `rankers.devices.model_device`).
        """
        from rankers.distributed import barrier, is_main

        tmp = self.path / f".{STATE_DIR}.partial"
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        safe_dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp)
        rank = dist.get_rank() if dist.is_initialized() else 0
        device = model_device(model) if device is None else device
        safe_dcp.save_rng(torch.get_rng_state(), tmp / f"rng-{rank}.pt")
        if device.type == "cuda":
            safe_dcp.save_rng(torch.cuda.get_rng_state(device), tmp / f"cuda-rng-{rank}.pt")
        if is_main():
            world = dist.get_world_size() if dist.is_initialized() else 1
            # TorchRec's optimizers leave their param groups (the decayed learning rates) out of
            # state_dict(): they travel here.
            lrs = [group["lr"] for group in optimizer.param_groups]
            progress = progress | {"processes": world, "lrs": lrs}
            (tmp / PROGRESS_FILE).write_text(json.dumps(progress, indent=1, default=float))
        self._publish(tmp, self.path / STATE_DIR)

    def state_dir(self) -> Path | None:
        for name in (STATE_DIR, f".{STATE_DIR}.old"):
            if (self.path / name / PROGRESS_FILE).is_file():
                return self.path / name
        return None

    def load_state(
        self, model: nn.Module, optimizer: Any, device: torch.device | None = None
    ) -> dict[str, Any]:
        """Restores what `save_state` wrote and returns the progress, on the run's `device` (default:
        the model's, `rankers.devices.model_device`). The GPU's RNG state is restored where the
        run computes on a GPU and the state holds one; a GPU run's state resumes on CPU too (its
        GPU RNG state unused), and a CPU run's on a GPU (the GPU keeps its seeded state).

        A state saved at the end of an epoch loads with any number of processes: DCP re-shards the
        tables and their optimizer state, and a rank the saving run did not have takes rank 0's
        RNG state (every rank starts from the same seed anyway). A state saved partway through an
        epoch needs as many processes as saved it: each process reads its own contiguous share of
        the rows, so another count would repeat or skip rows of that epoch.
        """
        state_dir = self.state_dir()
        if state_dir is None:
            raise ValueError(f"{self.path}: no {STATE_DIR}/ to resume from (train with --checkpoint-every)")
        progress = read_json(state_dir / PROGRESS_FILE, "the progress of a resumable run")
        world = dist.get_world_size() if dist.is_initialized() else 1
        saved_by = progress.get("processes", 1)
        if saved_by != world and progress["step"]:
            raise ValueError(
                f"{self.path}: the run was saved by {saved_by} processes partway through epoch "
                f"{progress['epoch'] + 1} (step {progress['step']}); resume it with --nproc {saved_by}, "
                f"not {world} (each process reads its own rows). A state saved at the end of an epoch "
                "resumes with any number of processes."
            )
        for _, opt in optimizer.optimizers:  # lazily created state (Adam's moments) must exist first
            if not opt.state:
                opt.init_state()
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
        safe_dcp.load(state, state_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.set_rng_state(safe_dcp.load_rng(_rank_file(state_dir, "rng", rank)))
        device = model_device(model) if device is None else device
        cuda_rng = _rank_file(state_dir, "cuda-rng", rank)
        if device.type == "cuda" and cuda_rng.is_file():
            torch.cuda.set_rng_state(safe_dcp.load_rng(cuda_rng), device)
        for group, lr in zip(optimizer.param_groups, progress["lrs"], strict=True):
            group["lr"] = lr
        return progress

    def weights_dir(self) -> Path | None:
        """The complete weights: `weights/`, or `.weights.old` after a save cut between renames."""
        for name in (WEIGHTS_DIR, OLD_WEIGHTS):
            if (self.path / name / ".metadata").is_file():
                return self.path / name
        return None

    def load_weights(self, model: nn.Module, no_dist: bool = False) -> None:
        weights = self.weights_dir()
        if weights is None:
            raise ValueError(f"{self.path}: missing {WEIGHTS_DIR}/.metadata (no saved weights)")
        state = model.state_dict()
        safe_dcp.load(state, weights, no_dist=no_dist)
        model.load_state_dict(state)

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        """`name` in the directory, replaced whole (written beside it, then renamed)."""
        tmp = self.path / f".{name}.partial"
        tmp.write_text(json.dumps(content, indent=1, default=float))
        tmp.rename(self.path / name)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.write_json(METRICS_FILE, metrics)

    def write_marker(self, info: dict[str, Any]) -> None:
        """checkpoint.json: written last, it says the directory is complete."""
        from rankers import __version__

        marker = {"format": FORMAT, "written_by": f"rankers {__version__}", "git": git_sha(), **info}
        marker["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        self.write_json(CHECKPOINT_MARKER, marker)

    def marker(self) -> dict[str, Any] | None:
        path = self.path / CHECKPOINT_MARKER
        return read_json(path, "a checkpoint's marker") if path.is_file() else None

    def check(self) -> None:
        """ValueError naming the first file a complete checkpoint directory lacks."""
        if not self.path.is_dir():
            partial = unfinished_run(self.path)
            hint = (
                f" ({partial} holds an unfinished run: --resume {self.path} continues it)" if partial else ""
            )
            raise ValueError(f"{self.path}: not a directory (expected a checkpoint directory){hint}")
        if is_legacy_checkpoint(self.path):
            log.warning(
                "%s: written before %s existed; taken as complete because its metrics.json (then "
                "written last) is there",
                self.path,
                CHECKPOINT_MARKER,
            )
        elif not (self.path / CHECKPOINT_MARKER).is_file():
            raise ValueError(
                f"{self.path}: missing {CHECKPOINT_MARKER}, which `rankers train` writes last: not a "
                "complete checkpoint (the run did not finish, or this is not a checkpoint directory)"
            )
        for name in (SCHEMA_FILE, CONFIG_FILE):
            if not (self.path / name).is_file():
                raise ValueError(
                    f"{self.path}: missing {name} (expected a checkpoint written by `rankers train`)"
                )
        if self.weights_dir() is None:
            raise ValueError(f"{self.path}: missing {WEIGHTS_DIR}/.metadata (no saved weights)")

    def settings(self) -> CheckpointConfig:
        """config.json read strictly (`checkpoint_config`)."""
        return checkpoint_config(self.config(), str(self.path / CONFIG_FILE))

    def config(self) -> dict[str, Any]:
        config = read_json(self.path / CONFIG_FILE, "a checkpoint's config")
        if not isinstance(config, dict):
            what = type(config).__name__
            raise ValueError(f"{self.path / CONFIG_FILE}: expected a JSON object, got {what}")
        return config

    def metrics(self) -> dict[str, Any]:
        path = self.path / METRICS_FILE
        return read_json(path, "a checkpoint's metrics") if path.is_file() else {}


def _rank_file(state_dir: Path, name: str, rank: int) -> Path:
    """`NAME-RANK.pt` of `state_dir`, or rank 0's for a rank the saving run did not have."""
    path = state_dir / f"{name}-{rank}.pt"
    return path if path.is_file() else state_dir / f"{name}-0.pt"


def git_sha() -> str | None:
    """The commit of the source tree this library runs from, where it is a git checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def has_state(directory: Path) -> bool:
    """Whether `directory` holds state a run can resume from."""
    return any((directory / name / PROGRESS_FILE).is_file() for name in (STATE_DIR, f".{STATE_DIR}.old"))


def unfinished_run(final: Path) -> Path | None:
    """The staging directory of `final` when it holds a run that stopped before it was complete (and
    saved state to resume from); None otherwise. One holding a marker is what a swap left behind."""
    staging = staging_path(final)
    if staging.is_dir() and not (staging / CHECKPOINT_MARKER).is_file() and has_state(staging):
        return staging
    return None
