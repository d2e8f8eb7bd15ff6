"""benchmarks/profile.py: every category of a step is attributed, backward ops to their forward's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks import profile as step_profile
from benchmarks.sequences import sequence_data


def test_backward_ops_take_the_scope_of_their_forward() -> None:
    lin, x = torch.nn.Linear(32, 32), torch.randn(64, 32, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("scope:dense"):
            y = torch.relu(lin(x))
        with record_function("scope:attention"):
            z = torch.softmax(y @ y.T, -1)
        z.sum().backward()
    seconds = step_profile.attribute(prof.events())
    assert seconds["dense"] > 0 and seconds["attention"] > 0
    softmax_backward = [e for e in prof.events() if e.name == "aten::_softmax_backward_data"]
    by_sequence = step_profile.forward_scopes(prof.events())
    assert softmax_backward and step_profile._category(softmax_backward[0], by_sequence) == "attention"


@pytest.mark.slow
def test_din_step_shares_sum_to_one_with_attention_and_tables(tmp_path: Path) -> None:
    data, _ = sequence_data(tmp_path / "seq", 9000)
    row = step_profile.profile_model("din", data, steps=2)
    assert sum(row["shares"].values()) == pytest.approx(1.0)
    assert row["shares"]["attention"] > 0.05 and row["shares"]["embedding"] > 0.01
    assert row["shares"]["recurrence"] == 0 and row["flops_per_example"] > 0
