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

import torch.distributed.checkpoint as dcp
from torch import nn

from features.schema import SCHEMA_FILE, Schema

if TYPE_CHECKING:
    from rankers.ranker import RankerConfig
    from rankers.train import TrainConfig

CONFIG_FILE, WEIGHTS_DIR, METRICS_FILE = "config.json", "weights", "metrics.json"
OLD_WEIGHTS = f".{WEIGHTS_DIR}.old"


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
            "data": str(data),
            "prior": prior,
        }
        (self.path / CONFIG_FILE).write_text(json.dumps(config, indent=1))

    def save_weights(self, model: nn.Module) -> None:
        """Every rank writes its shards into a temporary directory; rank 0 then renames it into place
        (the previous weights stay complete until then)."""
        from rankers.distributed import barrier, is_main

        tmp, old = self.path / f".{WEIGHTS_DIR}.partial", self.path / OLD_WEIGHTS
        final = self.path / WEIGHTS_DIR
        if is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        dcp.save(model.state_dict(), checkpoint_id=str(tmp))
        barrier()
        if is_main():
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
        barrier()

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
