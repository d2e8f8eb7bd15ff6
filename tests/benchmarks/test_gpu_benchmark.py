"""benchmarks/gpu.py on CPU: every model and precision runs and is written out (the figures are
only measured on a GPU: `tools/gpu_check.sh`), at the CPU benchmarks' shapes."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import _gpu_inputs as inputs
from benchmarks import gpu

SMOKE = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "64", "--parity-rows", "32"]


def test_runs_every_model_and_precision_on_cpu_and_writes_json_and_markdown(tmp_path: Path) -> None:
    result = gpu.main([*SMOKE, "--max-vocab", "100", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["results"] == json.loads(json.dumps(result["results"]))
    rows = written["results"]
    assert [(r["model"], r["precision"]) for r in rows] == [
        (m, p) for m in ("mlp", "finalmlp", "autoint_plus", "din", "dien") for p in ("fp32", "bf16")
    ]
    for r in rows:
        for key in ("step_examples_per_s", "backbone_examples_per_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], key, r[key])
        assert r["max_abs_diff_fp32"] == r["max_abs_diff_bf16"] == 0.0  # CPU against CPU
        assert r["max_abs_logit_fp32"] > 0
    assert written["environment"]["device"] == "cpu" and written["environment"]["max_vocab"] == 100
    markdown = (tmp_path / "gpu.md").read_text()
    assert markdown.count("\n| ") == 1 + len(rows)  # the header and a row each (after the separator)
    assert "63,000 ex/s" in markdown
    recorded = [
        {"run": "gpu-t", "benchmark": "gpu", **r, "environment": written["environment"]} for r in rows
    ]
    section = gpu.render([{"run": "other"}, *recorded])
    assert section.startswith("## GPU training throughput and parity (benchmarks/gpu.py)")
    assert section.count("\n| ") == 1 + len(rows) and "Never measured" not in section


def test_the_readme_section_says_plainly_when_no_gpu_run_was_recorded() -> None:
    section = gpu.render([{"run": "serving-1", "benchmark": "serving"}])
    assert "Never measured" in section and "tools/gpu_check.sh" in section and "740,000" in section


def test_the_shapes_are_the_cpu_benchmarks() -> None:
    """The configs of benchmarks/quality.py and benchmarks/sequences.py, Criteo's 13 + 26 fields,
    UserBehavior's tables and 50-long histories, embedding dim 16."""
    from benchmarks.quality import MODELS
    from benchmarks.sequences import MODELS as SEQUENCE_MODELS

    for name in ("mlp", "finalmlp", "autoint_plus"):
        config = MODELS[name]
        assert config.embedding_dim == inputs.DIM
        assert asdict(config.backbone_config) == asdict(inputs.BACKBONE_CONFIGS[name](**inputs.CONFIGS[name]))
        spec = inputs.spec_of(name)
        assert (spec.n_dense, len(spec.field_names), spec.sequences) == (13, 26, ())
        assert max(inputs.tables(name, 1_000_000).values()) == 1_000_000
    for name in ("din", "dien"):
        config = SEQUENCE_MODELS[name]
        assert config.embedding_dim == inputs.DIM
        assert asdict(config.backbone_config) == asdict(inputs.BACKBONE_CONFIGS[name](**inputs.CONFIGS[name]))
        assert inputs.spec_of(name).sequences == (
            ("hist_item_id", "item_id", 50),
            ("hist_cate_id", "cate_id", 50),
        )


def test_history_lengths_are_aligned_with_mean_about_17() -> None:
    import torch

    batch = inputs.make_batch("din", 20_000, 100, torch.Generator().manual_seed(0))
    (items, item_mask), (cates, cate_mask) = batch.histories.values()
    assert torch.equal(item_mask, cate_mask) and bool(item_mask[:, 0].all())
    assert 15.5 < float(item_mask.sum(1).float().mean()) < 18.5
    assert bool((items[~item_mask] == 0).all()) and int(cates.max()) < sum(inputs.USER_BEHAVIOR.values())


@pytest.mark.parametrize("argv", [["--models", "dlrm"], ["--precisions", "fp16"], ["--steps", "0"]])
def test_refuses_unknown_models_precisions_and_empty_runs(
    argv: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        gpu.parse_args(argv)
    assert exit_.value.code == 2
    assert "python -m benchmarks.gpu: error:" in capsys.readouterr().err


def test_help_describes_the_shapes_and_the_embeddings(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--max-vocab" in text and "nn.Embedding" in text and "UserBehavior" in text
