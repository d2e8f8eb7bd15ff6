"""One place that silences TorchRec's routine warnings on a normal single-host run."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LOGGERS = ("torchrec", "torch.fx._symbolic_trace", "torch.distributed")


@contextmanager
def quiet_torchrec() -> Iterator[None]:
    """Within the block, hides the warnings TorchRec and torch.distributed print on every DMP
    set-up (planner topology notes, storage estimates, fx-tracing notes, deprecations); errors
    still raise and log. Logger levels and warning filters are restored afterwards."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"torchrec(\.|$)")
            warnings.filterwarnings("ignore", category=category, module=r"torch\.distributed(\.|$)")
        warnings.filterwarnings("ignore", message=r".*is_fx_tracing.*")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
