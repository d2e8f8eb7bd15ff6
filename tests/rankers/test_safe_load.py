"""Loading a checkpoint never runs code from it: a pickle planted in the weights' metadata or in a
saved RNG state is refused by name before it can act, and truncated files get a one-line error."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from rankers.cli import main
from rankers.predictor import Predictor


class _Plant:
    """Unpickling it would create `path` (through os.system, as a real attack would)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.path}",)


@pytest.fixture(scope="module")
def checkpoint(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete checkpoint with saved state (it can be trained further with --resume --epochs)."""
    out = tmp_path_factory.mktemp("safe") / "ck"
    flags = ["--epochs", "1", "--batch-size", "2048", "--checkpoint-every", "4"]
    assert main(["train", "--data", str(synthetic_small), "--out", str(out), *flags, "--no-progress"]) == 0
    return out


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "ck"
    shutil.copytree(checkpoint, ckpt)
    return ckpt


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _loaders(ckpt: Path, data: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--data", str(data / "test")],
        "predict": [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data / "test"),
            "--out",
            str(tmp_path / "p"),
        ],
        "resume": ["train", "--resume", str(ckpt), "--epochs", "2", "--no-progress"],
    }


def test_a_pickle_in_the_metadata_is_refused_and_never_runs(
    checkpoint: Path, synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, planted = _copy(checkpoint, tmp_path), tmp_path / "pwned"
    for name in ("weights", "state"):
        (ckpt / name / ".metadata").write_bytes(pickle.dumps(_Plant(planted)))
    for command, argv in _loaders(ckpt, synthetic_small, tmp_path).items():
        capsys.readouterr()
        assert main(argv) == 2, command
        err = _one_line_error(capsys)
        which = "state" if command == "resume" else "weights"
        assert f"{ckpt / which / '.metadata'}: refused, not a checkpoint metadata file" in err, (command, err)
        assert "posix.system" in err, err
        assert not planted.exists(), command
    with pytest.raises(ValueError, match=r"weights/\.metadata: refused") as e:
        Predictor.load(ckpt)
    assert "\n" not in str(e.value) and not planted.exists()
    assert not (tmp_path / ".ck.partial").exists()  # the refused resume left nothing behind


def test_a_pickle_in_the_rng_state_is_refused_and_never_runs(
    checkpoint: Path, synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, planted = _copy(checkpoint, tmp_path), tmp_path / "pwned"
    rng = ckpt / "state" / "rng-0.pt"
    with rng.open("wb") as f:
        pickle.dump(_Plant(planted), f)
    loaders = _loaders(ckpt, synthetic_small, tmp_path)
    assert main(loaders["resume"]) == 2
    assert f"{rng}: refused, not a saved RNG state" in _one_line_error(capsys)
    assert not planted.exists()
    for command in ("evaluate", "predict"):  # they never read the RNG state
        assert main(loaders[command]) == 0, command
    Predictor.load(ckpt)
    assert not planted.exists()


@pytest.mark.parametrize("target", [".metadata", "__0_0.distcp"])
def test_truncated_files_get_one_line_naming_them(
    checkpoint: Path, synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    ckpt = _copy(checkpoint, tmp_path)
    path = ckpt / "weights" / target
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expected = "refused, not a checkpoint metadata file" if target == ".metadata" else "truncated ("
    for command in ("evaluate", "predict"):
        capsys.readouterr()
        assert main(_loaders(ckpt, synthetic_small, tmp_path)[command]) == 2
        err = _one_line_error(capsys)
        assert f"{path}: {expected}" in err, err
    with pytest.raises(ValueError, match=f"{target}: "):
        Predictor.load(ckpt)


def test_malformed_json_is_named(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _copy(checkpoint, tmp_path)
    (ckpt / "config.json").write_text('{"ranker": ')
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    assert f"{ckpt / 'config.json'}: cannot read it as JSON" in _one_line_error(capsys)
