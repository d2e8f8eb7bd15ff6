"""A run killed with --overwrite leaves the old output intact or the new one complete, never a mix;
a directory without the completeness marker is never taken for a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from features.dataset import dataset_info
from rankers.cli import main
from tests.conftest import shared_file

TRAIN = ["--batch-size", "256", "--no-progress", "--threads", "1"]


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(directory)): f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file()
    }


def _kill_when(command: list[str], ready: Callable[[], bool], timeout: float = 120) -> bool:
    """Runs `command`, SIGKILLs it as soon as `ready()` holds; False if it ended first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and run.poll() is None:
            if ready():
                run.send_signal(signal.SIGKILL)
                run.wait()
                return True
            time.sleep(0.001)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return False


@pytest.mark.slow
def test_train_overwrite_killed_before_during_and_after_a_save_keeps_the_old_checkpoint(
    synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "ck"
    assert main(["train", "--data", str(synthetic_small), "--out", str(ckpt), "--epochs", "1", *TRAIN]) == 0
    old = _files(ckpt)
    staging = tmp_path / ".ck.partial"
    command = [sys.executable, "-m", "rankers", "train", "--data", str(synthetic_small), "--out", str(ckpt)]
    command += ["--overwrite", "--epochs", "3", "--checkpoint-every", "1", "--seed", "1", *TRAIN]
    points = {
        "before the first save": lambda: staging.is_dir() and not (staging / "state").exists(),
        "during a save": lambda: (
            (staging / ".state.partial").is_dir() or (staging / ".weights.partial").is_dir()
        ),
        "after a save": lambda: (staging / "weights" / ".metadata").is_file(),
    }
    for point, ready in points.items():
        assert _kill_when(command, ready), f"the run ended before it could be killed {point}"
        assert _files(ckpt) == old, point  # byte for byte the checkpoint that was there
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0, point
        if staging.is_dir():  # what the killed run left: never taken for a checkpoint
            assert main(["evaluate", "--checkpoint", str(staging)]) == 2
            assert "missing checkpoint.json, which `rankers train` writes last" in capsys.readouterr().err
    # Let one finish: the new checkpoint replaces the old one whole.
    again = ["train", "--data", str(synthetic_small), "--out", str(ckpt), "--overwrite", "--seed", "1"]
    assert main([*again, "--epochs", "1", *TRAIN]) == 0
    new = _files(ckpt)
    assert new != old and "checkpoint.json" in new and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no stub, lock or partial left


@pytest.mark.slow
@pytest.mark.shared_data
def test_convert_overwrite_killed_at_any_point_keeps_the_old_dataset_or_publishes_the_new(
    tmp_path: Path,
) -> None:
    src = shared_file("criteo/train_head10k.tsv")
    out = tmp_path / "data"
    base = [sys.executable, "-m", "rankers", "convert", "criteo", str(src), "--out", str(out)]
    assert subprocess.run([*base, "--min-count", "10"], check=False).returncode == 0
    old = _files(out)
    new_args = [*base, "--overwrite", "--min-count", "2", "--block-bytes", "65536"]
    staging = tmp_path / ".data.partial"
    points = {
        "before writing": lambda: staging.is_dir(),
        "while writing": lambda: any(staging.glob("train/*.parquet")),
        "at the last file": lambda: (staging / "dataset.json").is_file(),
    }
    killed = 0
    for point, ready in points.items():
        killed += _kill_when(new_args, ready)
        files = _files(out)
        if files != old:  # only ever the new dataset, complete
            assert dataset_info(out)["config"]["min_count"] == 2, point
            assert dataset_info(out)["rows"] == {"train": 8000, "valid": 1000, "test": 1000}, point
            break
    assert killed >= 2, "the conversion ended before it could be killed twice"
    assert subprocess.run(new_args, check=False).returncode == 0
    assert dataset_info(out)["config"]["min_count"] == 2 and not staging.exists()
