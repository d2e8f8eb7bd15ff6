"""Where a training run's checkpoint is built: opening the staged directory of a new, resumed or
further-trained run (`open_run`, on every rank `open_output`), whether `--resume` has anything to
do (`finished`, `resume_dir`), and what a failed run leaves behind (`abort`).

A run builds its checkpoint at `.NAME.partial` beside `out` (`features.outputs.StagedOutput`); the
directory's files are `rankers.checkpoint`'s.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch.distributed as dist

from features.outputs import CHECKPOINT_MARKER, StagedOutput, remove
from features.strict import read_json
from rankers import safe_dcp
from rankers.checkpoint import PROGRESS_FILE, CheckpointDir, has_state, unfinished_run
from rankers.distributed import is_main

log = logging.getLogger(__name__)


# What a finished checkpoint hands to a run that trains it further: its calibration was fitted to
# the old weights (calibrate again), and checkpoint.json is written when the new run is complete.
_NOT_CARRIED = (CHECKPOINT_MARKER, "calibration.json", "calibration.md", "calibration.png")


def _copy_to_train_further(source: Path, staging: Path) -> None:
    """Copies the finished checkpoint `source` to `staging` (whole or not at all: through a
    temporary sibling), leaving out `_NOT_CARRIED`."""
    tmp = staging.with_name(staging.name + ".copy")
    remove(tmp)
    try:
        shutil.copytree(source, tmp, ignore=lambda d, names: [n for n in names if n in _NOT_CARRIED])
        remove(staging)
        tmp.rename(staging)
    except BaseException:
        remove(tmp)
        raise
    if (source / "calibration.json").is_file():
        log.warning(
            "%s: its calibration is not carried into the further-trained run: calibrate again", source
        )


def _progress_bytes(directory: Path) -> bytes | None:
    state = CheckpointDir(directory).state_dir()
    return (state / PROGRESS_FILE).read_bytes() if state else None


def keep_unfinished(output: StagedOutput) -> bool:
    """Whether a run that failed should leave its staging directory for `--resume`: it holds state,
    and (for a finished run being trained further) state saved since it was copied."""
    progress = _progress_bytes(output.staging)
    return progress is not None and progress != output.copied_progress


def finished(final: str | Path, epochs: int | None = None) -> str | None:
    """A line saying that the run at `final` is finished, when `--resume` has nothing to do: no
    unfinished run beside the complete checkpoint, and the run stopped early or `epochs` (None: the
    run's own setting) asks for no more than it trained. None when there is work to resume."""
    final = Path(final).absolute()
    if unfinished_run(final) is not None or not (final / CHECKPOINT_MARKER).is_file():
        return None
    ckpt = CheckpointDir(final)
    marker, own = ckpt.marker() or {}, ckpt.settings().train.epochs
    trained, best = marker.get("epochs"), marker.get("best_epoch")
    state = ckpt.state_dir()
    progress = read_json(state / PROGRESS_FILE, "the progress of a run") if state else {}
    if progress.get("stopped"):
        return (
            f"{final}: the run is finished: it stopped at epoch {trained} (early stopping or max_steps; "
            f"best epoch {best}); nothing to resume"
        )
    if not isinstance(trained, int) or trained >= (epochs or own or 0):
        return (
            f"{final}: the run is finished ({trained} of {own} epochs, best epoch {best}); nothing to "
            f"resume (--resume {final} --epochs N with N > {trained} trains it further)"
        )
    if state is None:
        raise ValueError(
            f"{final}: a complete checkpoint without saved state (trained without --checkpoint-every), "
            "so it cannot be trained further"
        )
    return None


def resume_dir(final: str | Path) -> Path:
    """Where `--resume final` continues from: the unfinished run beside `final`, else the complete
    checkpoint `final` when it saved state (to train a finished run further)."""
    final = Path(final).absolute()
    unfinished = unfinished_run(final)
    if unfinished is not None:
        return unfinished
    if (final / CHECKPOINT_MARKER).is_file() and has_state(final):
        return final
    raise ValueError(f"{final}: no run to resume (no checkpoint there, and no unfinished run beside it)")


def open_run(final: Path, overwrite: bool, resume: bool, inputs: list[Path]) -> StagedOutput:
    """The staged output of a training run at `final` (rank 0 only), its staging directory ready:
    empty for a new run; for `resume`, the unfinished run's own, or a copy of the complete
    checkpoint to continue. A new run refuses to discard an unfinished one unless `overwrite`."""
    output = StagedOutput(final, "checkpoint", overwrite or resume, inputs, flag="--out")
    try:
        unfinished = unfinished_run(output.final)
        if resume:
            source = resume_dir(output.final)
            if source != output.staging:  # a finished run trained further: on a copy
                state = CheckpointDir(source).state_dir()
                assert state is not None  # resume_dir found it
                safe_dcp.verify(state)  # a bad file is named where the user has it, not in the copy
                _copy_to_train_further(source, output.staging)
                output.copied_progress = _progress_bytes(output.staging)
        elif unfinished is not None and not overwrite:
            raise ValueError(
                f"{unfinished} holds an unfinished run for {output.final}: continue it with "
                f"`rankers train --resume {output.final}`, or pass --overwrite to discard it"
            )
        else:
            output.fresh_directory()
    except BaseException:
        output.release()
        raise
    return output


def abort(output: StagedOutput | None) -> None:
    """Rank 0 removes what a failed run staged, or keeps it where it can be resumed."""
    if output is None:
        return
    output.keep_on_error = keep_unfinished(output)
    if output.keep_on_error:
        log.warning(
            "the unfinished run stays at %s: `rankers train --resume %s` continues it",
            output.staging,
            output.final,
        )
    output.abort()


def open_output(final: Path, overwrite: bool, resume: bool, data: Path) -> StagedOutput | None:
    """Rank 0 opens the run's staged checkpoint (`open_run`); every rank raises if it
    could not, so none is left waiting in a collective."""
    output, error = None, None
    if is_main():
        try:
            output = open_run(final, overwrite, resume, [data])
        except BaseException as e:
            error = e
    message = [None if error is None else str(error)]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise ValueError(message[0])
    return output
