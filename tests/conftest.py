"""Shared fixtures: the real samples in ../shared/data, and small datasets built from them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# One thread per test process: the suite runs two workers on two cores (see Makefile).
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of the real samples; the test fails naming the path if it is missing."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.fail(f"shared sample missing: {path} (expected ../shared/data beside the repository)")
    return path


def one_line_error(call: Callable[[], object]) -> str:
    """The message of the ValueError `call()` raises, asserted to be one line."""
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="session")
def criteo_8k_2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Criteo head10k sample in row order: first 7,200 train, next 800 valid, last 2,000 test,
    values seen fewer than 10 times in train mapped to the rare id."""
    from features.datasets.criteo import CriteoConfig, convert_criteo

    out = tmp_path_factory.mktemp("criteo") / "data"
    config = CriteoConfig(min_count=10, split=(0.72, 0.08, 0.2), split_by="order")
    return convert_criteo(shared_file("criteo/train_head10k.tsv"), out, config, progress=False)


@pytest.fixture(scope="session")
def userbehavior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 650-user UserBehavior sample as ranking examples: histories up to 20, 2 negatives each."""
    from features.datasets.userbehavior import UserBehaviorConfig, convert_userbehavior

    out = tmp_path_factory.mktemp("ub") / "data"
    src = shared_file("taobao/UserBehavior_head_650users.csv")
    return convert_userbehavior(src, out, UserBehaviorConfig(negatives=2, max_len=20), progress=False)


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 teacher rows with small vocabularies: fast to train on."""
    from features.datasets.synthetic import SyntheticConfig, write_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "data"
    return write_synthetic(out, SyntheticConfig(rows=20_000, max_vocab=1000, min_count=5), progress=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests are skipped where CUDA is not available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
