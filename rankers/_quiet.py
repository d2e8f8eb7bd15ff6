"""One place that silences TorchRec's routine warnings on a normal single-host run."""

from __future__ import annotations

import logging
import warnings


def quiet_torchrec() -> None:
    """Filters the warnings TorchRec and torch.distributed print on every DMP set-up (planner
    topology notes, storage estimates, fx-tracing notes, deprecations); real errors still raise."""
    for name in (
        "torchrec.distributed.planner",
        "torchrec.distributed",
        "torch.fx._symbolic_trace",
        "torchrec",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torchrec(\.|$)")
        warnings.filterwarnings("ignore", category=category, module=r"torch\.distributed(\.|$)")
    warnings.filterwarnings("ignore", message=r".*is_fx_tracing.*")
    warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated.*")
