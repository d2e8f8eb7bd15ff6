"""benchmarks/kernels.py: its two timed passes compute the same thing, and its section renders."""

from __future__ import annotations

import pytest
import torch

from benchmarks import kernels


@pytest.mark.parametrize("case", ["attention", "gru"])
def test_reference_and_fused_passes_compute_the_same_values(case: str) -> None:
    assert kernels.fused_applies(torch.zeros(1, 1, 3, 1, 8)) and kernels.gru_applies(torch.zeros(1))
    passes = kernels.attention_passes(8, 39) if case == "attention" else kernels.gru_passes(16)
    (ref, _), (fused, _) = passes["reference"](), passes["fused"]()
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-4)
    assert kernels._time(passes["fused"], repeats=1)[0] > 0


def test_renders_the_latest_run_with_speed_ups() -> None:
    common = {"command": "python -m benchmarks.kernels", "machine": "m", "versions": {"torch": "x"}}
    common |= {"git_sha": "abc", "time": "t", "load_before": 0.5, "load_after": 0.6}
    old = {**common, "run": "kernels-1", "kernel": "gru", "shape": "s"} | {
        f"{k}_{d}_ms": 1.0 for k in ("reference", "fused") for d in ("forward", "backward")
    }
    new = {**old, "run": "kernels-2", "reference_forward_ms": 6.0, "reference_backward_ms": 9.0}
    new |= {"fused_forward_ms": 2.0, "fused_backward_ms": 3.0}
    text = kernels.render([old, new])
    assert "| gru | s | 6.0 + 9.0 | 2.0 + 3.0 | 3.00x | 0.50 / 0.60 |" in text
    assert text.count("| gru |") == 1
