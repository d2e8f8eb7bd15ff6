"""Calibrating a checkpoint in place: fit, check and save its calibration map with the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CalibrateOptions:
    """How `calibrate_checkpoint` fits and checks the maps (the defaults of
    `rankers.bidding.calibration.calibrate`, kept here so that `rankers calibrate --help` needs no
    scikit-learn; a test holds them equal)."""

    method: str = "auto"  # auto, isotonic, platt or identity
    bins: int = 20  # calibration bins that give each value's sigma
    folds: int = 5  # K of the K-fold held-out check
    min_positives: int = 50  # refuse a task whose valid rows hold fewer positives
    min_negatives: int = 50  # refuse a task whose valid rows hold fewer negatives
    force: bool = False  # save even when a task fails the check
    batch_size: int = 65_536  # rows scored per forward pass


def calibrate_checkpoint(
    checkpoint: str | Path,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    options: CalibrateOptions = CalibrateOptions(),
    device: str | torch.device = "auto",
) -> tuple[str, list[Path]]:
    """Fits a calibration map per task of `checkpoint` on `valid` (default: the training data's valid
    split), measures it on `test` (default: the training data's test split, if any) and saves
    calibration.json, calibration.md and (with matplotlib) calibration.png into the checkpoint.

    Args:
        checkpoint: the checkpoint directory (read, and written into).
        valid: labeled rows to fit on.
        test: labeled rows to measure held-out ECE on.
        options: the method, the check and the rows scored per forward pass
            (`rankers.bidding.calibration.calibrate`).
        device: where the model scores the rows: a torch.device or a name
            `rankers.devices.resolve_device` takes ("auto": cuda where torch sees a GPU, else cpu).

    Returns:
        The report (markdown) and the files saved.

    Raises:
        ValueError: a task's map was refused (nothing is written), or an input is unusable.
    """
    from features.outputs import OutputLock, check_apart
    from rankers.bidding.calibration import calibrate
    from rankers.bidding.reliability import plot_reliability, report_markdown
    from rankers.checkpoint import CheckpointDir
    from rankers.predictor import Predictor

    out = Path(checkpoint)
    # One writer: not while a run replaces this checkpoint (the map would fit the old weights), nor
    # beside a second calibrate; held from before the model is loaded until the files are saved.
    lock = OutputLock(out)
    try:
        predictor = Predictor.load(out, device)
        data = Path(CheckpointDir(out).settings().data)
        valid = Path(valid) if valid else data / "valid"
        test = Path(test) if test else (data / "test" if (data / "test").is_dir() else None)
        check_apart(out, [valid, test], flag="--checkpoint")  # it writes into the checkpoint
        # a refused calibration raises here, before anything is written into the checkpoint
        calibration, report = calibrate(predictor, valid, test, **asdict(options))
        calibration.save(out)
        text = report_markdown(report)
        (out / "calibration.md").write_text(text)
        plot = plot_reliability(report, out / "calibration.png")
        if plot is None:
            (out / "calibration.png").unlink(missing_ok=True)  # an older map's diagram
    finally:
        lock.release()
    return text, [out / "calibration.json", out / "calibration.md", *([plot] if plot else [])]
