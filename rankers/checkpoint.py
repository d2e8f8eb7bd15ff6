"""A checkpoint directory: everything a Predictor needs, and nothing outside it.

    out/
      schema.json     the dataset's schema (features and tasks)
      config.json     {"ranker": RankerConfig, "train": TrainConfig, "data": path, "prior": {...}}
      weights/        torch.distributed.checkpoint files of the model's state dict
      metrics.json    training history and the final valid/test metrics

Weights are written to a temporary sibling and renamed into place; a save interrupted between
the two renames leaves the previous weights as `.weights.old`, which loading falls back to.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from features.schema import SCHEMA_FILE, Schema

if TYPE_CHECKING:
    from rankers.ranker import RankerConfig
    from rankers.train import TrainConfig

CONFIG_FILE, WEIGHTS_DIR, METRICS_FILE = "config.json", "weights", "metrics.json"
OLD_WEIGHTS = f".{WEIGHTS_DIR}.old"
STATE_DIR, PROGRESS_FILE = "state", "progress.json"


class CheckpointDir:
    """Reads and writes the files of one checkpoint directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> CheckpointDir:
        """An empty checkpoint directory at `path`; an existing non-empty one only with `overwrite`."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if not overwrite:
                raise ValueError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def write_config(
        self,
        schema: Schema,
        ranker_config: RankerConfig,
        train_config: TrainConfig,
        data: Path,
        prior: dict[str, float],
    ) -> None:
        schema.save(self.path)
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
        dcp.save(model.state_dict(), checkpoint_id=str(tmp))
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

    def save_state(self, model: nn.Module, optimizer: Any, progress: dict[str, Any]) -> None:
        """What `--resume` needs: model and optimizer state (every rank's shards, DCP), each rank's
        torch RNG state and the loop's progress, in a temporary directory renamed into place, so a
        kill at any instant leaves the previous state or the new one."""
        from rankers.distributed import barrier, is_main

        tmp = self.path / f".{STATE_DIR}.partial"
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(tmp))
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(torch.get_rng_state(), tmp / f"rng-{rank}.pt")
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

    def load_state(self, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        """Restores what `save_state` wrote and returns the progress.

        A state saved at the end of an epoch loads with any number of processes: DCP re-shards the
        tables and their optimizer state, and a rank the saving run did not have takes rank 0's
        RNG state (every rank starts from the same seed anyway). A state saved partway through an
        epoch needs as many processes as saved it: each process reads its own contiguous share of
        the rows, so another count would repeat or skip rows of that epoch.
        """
        state_dir = self.state_dir()
        if state_dir is None:
            raise ValueError(f"{self.path}: no {STATE_DIR}/ to resume from (train with --checkpoint-every)")
        progress = json.loads((state_dir / PROGRESS_FILE).read_text())
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
        dcp.load(state, checkpoint_id=str(state_dir))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        rank = dist.get_rank() if dist.is_initialized() else 0
        rng = state_dir / f"rng-{rank}.pt"
        torch.set_rng_state(torch.load(rng if rng.is_file() else state_dir / "rng-0.pt"))
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
        dcp.load(state, checkpoint_id=str(weights), no_dist=no_dist)
        model.load_state_dict(state)

    def write_json(self, name: str, content: dict[str, Any]) -> None:
        """`name` in the directory, replaced whole (written beside it, then renamed)."""
        tmp = self.path / f".{name}.partial"
        tmp.write_text(json.dumps(content, indent=1, default=float))
        tmp.rename(self.path / name)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        (self.path / METRICS_FILE).write_text(json.dumps(metrics, indent=1, default=float))

    def check(self) -> None:
        """ValueError naming the first file a complete checkpoint directory lacks."""
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a directory (expected a checkpoint directory)")
        for name in (SCHEMA_FILE, CONFIG_FILE):
            if not (self.path / name).is_file():
                raise ValueError(
                    f"{self.path}: missing {name} (expected a checkpoint written by `rankers train`)"
                )
        if self.weights_dir() is None:
            raise ValueError(f"{self.path}: missing {WEIGHTS_DIR}/.metadata (no saved weights)")

    def config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path / CONFIG_FILE}: not valid JSON ({e})") from e

    def metrics(self) -> dict[str, Any]:
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}
