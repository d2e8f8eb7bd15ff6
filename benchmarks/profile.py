"""Where a training step's time goes, per backbone: embedding lookup, attention, recurrence, dense
layers, loss, optimizer and data, with dense FLOPs per example and the share of the machine's
measured fp32 matmul ceiling.

    .venv/bin/python -m benchmarks.profile [--models mlp,finalmlp,autoint_plus,din,dien] [--steps 10]

Shapes are the throughput benchmarks': Criteo-shaped synthetic rows for mlp, finalmlp and
autoint_plus (benchmarks/throughput.py, benchmarks/quality.py MODELS), random UserBehavior-like
histories (mean about 17, at most 50) for din and dien (benchmarks/sequences.py); batch 4096, two
threads, fp32, the sharded model of training (DMP, fused rowwise Adagrad, Adam).

How time is attributed (torch.profiler, CPU self time of every op): the forward runs inside named
scopes (hooks on the modules: `EmbeddingArch` -> embedding; AutoInt's `InteractingLayer` and the
DIN/DIEN `ActivationUnit` -> attention; DIEN's `JaggedGRU`, its fused `run_packed` included ->
recurrence; the rest of the backbone -> dense; `Ranker.loss` -> loss; `optimizer.step()` ->
optimizer). A backward op takes the scope of the forward op it differentiates (autograd's sequence
numbers link them), so the fused table optimizer, which fbgemm runs inside the tables' backward,
counts as embedding. "data" is reading and checking the batch, timed apart (one reader thread, as
training reads). ex/s is timed without the profiler; the shares come from a profiled run of the
same steps.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks._common import header, latest_run, load_average, markdown_table, record, run_readme
from benchmarks.quality import MODELS as CRITEO_MODELS
from benchmarks.sequences import MODELS as SEQUENCE_MODELS
from benchmarks.sequences import sequence_data
from benchmarks.throughput import matmul_gflops
from features.datasets.synthetic import SyntheticConfig, write_synthetic
from features.reader import ParquetBatches
from features.schema import Schema
from rankers.backbones.autoint import InteractingLayer
from rankers.backbones.base import Embedded, Sequence
from rankers.backbones.dien import JaggedGRU
from rankers.backbones.layers import ActivationUnit
from rankers.distributed import shard_ranker, single_process_group
from rankers.embedding import EmbeddingArch
from rankers.ranker import Ranker, build_ranker

CATEGORIES = ("embedding", "attention", "recurrence", "dense", "loss", "optimizer", "data", "other")
SCOPED: tuple[tuple[type[nn.Module], str], ...] = (
    (EmbeddingArch, "embedding"),
    (InteractingLayer, "attention"),
    (ActivationUnit, "attention"),
    (JaggedGRU, "recurrence"),
)
MODELS = {
    "mlp": CRITEO_MODELS["mlp"],
    "finalmlp": CRITEO_MODELS["finalmlp"],
    "autoint_plus": CRITEO_MODELS["autoint_plus"],
    "din": SEQUENCE_MODELS["din"],
    "dien": SEQUENCE_MODELS["dien"],
}
BATCH = 4096


def _scopes(ranker: Ranker) -> list[Any]:
    """Hooks that run each scoped module's forward (and the rest of the backbone) inside a
    `record_function("scope:<category>")`; returns the handles."""
    handles = []

    def wrap(module: nn.Module, category: str) -> None:
        ranges: list[Any] = []

        def enter(*_: Any) -> None:
            ranges.append(record_function(f"scope:{category}"))
            ranges[-1].__enter__()

        def leave(*_: Any) -> None:
            ranges.pop().__exit__(None, None, None)

        handles.extend([module.register_forward_pre_hook(enter), module.register_forward_hook(leave)])

    wrap(ranker.backbone, "dense")  # outermost: the scoped modules inside take precedence
    for module in ranker.modules():
        for kind, category in SCOPED:
            if isinstance(module, kind):
                wrap(module, category)
        if isinstance(module, JaggedGRU):  # DIEN calls its fused recurrence as a method, no hooks
            module.run_packed = _scoped(module.run_packed, "recurrence")  # type: ignore[method-assign]
    return handles


def _scoped(method: Any, category: str) -> Any:
    """`method` run inside `record_function("scope:<category>")`."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with record_function(f"scope:{category}"):
            return method(*args, **kwargs)

    return run


def _category(event: Any, by_sequence: dict[int, str]) -> str:
    """The innermost scope above `event`, or the scope of the forward op a backward op differentiates."""
    node = event
    while node is not None:
        if node.name.startswith("scope:"):
            return str(node.name[len("scope:") :])
        if node.name.startswith("autograd::engine::evaluate_function"):
            return by_sequence.get(node.sequence_nr, "other")
        node = node.cpu_parent
    return "other"


def forward_scopes(events: Any) -> dict[int, str]:
    """Autograd sequence number -> the scope of the forward op that has it."""
    by_sequence: dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            category = _category(e, {})
            if category != "other":
                by_sequence.setdefault(e.sequence_nr, category)
    return by_sequence


def attribute(events: Any) -> dict[str, float]:
    """Seconds of self CPU time per category over the profiled `events`."""
    by_sequence = forward_scopes(events)
    seconds: dict[str, float] = defaultdict(float)
    for e in events:
        if not e.name.startswith("scope:"):
            seconds[_category(e, by_sequence)] += e.self_cpu_time_total / 1e6
    return dict(seconds)


@contextmanager
def _scope(name: str) -> Iterator[None]:
    with record_function(f"scope:{name}"):
        yield


def _step(model: nn.Module, ranker: Ranker, optimizer: torch.optim.Optimizer, batch: Any) -> None:
    optimizer.zero_grad()
    out = model(batch)
    with _scope("loss"):
        loss, _ = ranker.loss(out, batch.labels)
    loss.backward()
    with _scope("optimizer"):
        optimizer.step()


def dense_flops_per_example(ranker: Ranker, batch: Any) -> float:
    """Matmul FLOPs of the backbone's forward and backward per example on a real batch (its
    histories' real lengths included), by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        x = ranker.embedding(batch.dense, batch.sparse)
    sequences = {k: Sequence(s.values.detach().requires_grad_(), s.mask) for k, s in x.sequences.items()}
    inputs = Embedded(x.dense, x.fields.detach().requires_grad_(), x.field_names, sequences)
    with FlopCounterMode(display=False) as counter:
        out = ranker.backbone(inputs)
        total = sum(v.sum() for v in out.logits.values())
        (total if out.aux_loss is None else total + out.aux_loss).backward()
    return counter.get_total_flops() / len(batch)


def profile_model(name: str, data: Path, steps: int) -> dict[str, Any]:
    """ex/s, seconds per step and the share of each category for backbone `name` on `data`."""
    torch.manual_seed(0)
    single_process_group()
    ranker = build_ranker(Schema.load(data), MODELS[name], device=torch.device("meta"))
    model, optimizer = shard_ranker(ranker, lr=1e-3, weight_decay=0.0, embedding_lr=0.05)
    t0 = time.perf_counter()
    reader = iter(ParquetBatches(data / "train", batch_size=BATCH))
    batches = []
    for _ in range(steps):
        batch = next(reader)
        ranker.embedding.check(batch)
        batches.append(batch)
    data_s = (time.perf_counter() - t0) / steps
    for batch in batches[:3]:
        _step(model, ranker, optimizer, batch)
    t0 = time.perf_counter()
    for batch in batches:
        _step(model, ranker, optimizer, batch)
    step_s = (time.perf_counter() - t0) / steps
    handles = _scopes(ranker)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            _step(model, ranker, optimizer, batch)
    for h in handles:
        h.remove()
    seconds = {k: v / steps for k, v in attribute(prof.events()).items()}
    profiled = sum(seconds.values())
    # the profiler's op times, scaled to the unprofiled step, plus the data time measured apart
    shares = {k: seconds.get(k, 0.0) / profiled * step_s for k in CATEGORIES if k != "data"}
    shares["data"] = data_s
    total = sum(shares.values())
    return {
        "model": name,
        "flops_per_example": dense_flops_per_example(ranker, batches[0]),
        "step_ms": step_s * 1e3,
        "data_ms": data_s * 1e3,
        "examples_per_s": BATCH / total,
        "shares": {k: v / total for k, v in shares.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)} (default: all)"
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="steps timed and profiled per model, >= 1 (default 10)"
    )
    parser.add_argument(
        "--rows", type=int, default=200_000, help="synthetic rows per dataset (default 200,000)"
    )
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or args.steps < 1:
        parser.error(f"unknown models {unknown} (of {list(MODELS)}) or --steps < 1")
    torch.set_num_threads(2)
    command = shlex.join(["python", "-m", "benchmarks.profile", *sys.argv[1:]])
    run = f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    peak = matmul_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        criteo = write_synthetic(
            work / "criteo", SyntheticConfig(rows=args.rows, max_vocab=1_000_000), progress=False
        )
        sequences, _ = sequence_data(work / "seq", args.rows)
        for name in models:
            data = sequences if name in ("din", "dien") else criteo
            load = load_average()
            row = profile_model(name, data, args.steps)
            row["ceiling_share"] = row["examples_per_s"] * row["flops_per_example"] / (peak * 1e9)
            row |= {"peak_gflops": peak, "load_before": load, "load_after": load_average(), "run": run}
            print(
                f"{name}: {row['examples_per_s']:,.0f} ex/s, "
                + ", ".join(f"{k} {v:.0%}" for k, v in row["shares"].items() if v >= 0.005),
                flush=True,
            )
            record({"benchmark": "profile", **row}, command)
    run_readme()


def render(rows: list[dict[str, Any]]) -> str:
    """The README's profile section: the latest run."""
    rows = latest_run(rows, "profile-")
    if not rows:
        return ""
    table = []
    for r in rows:
        line = {
            "model": r["model"],
            "ex/s": f"{r['examples_per_s']:,.0f}",
            "step ms": f"{r['step_ms'] + r['data_ms']:.0f}",
        }
        line |= {k: f"{r['shares'].get(k, 0.0):.0%}" for k in CATEGORIES}
        line |= {
            "MFLOP/example": f"{r['flops_per_example'] / 1e6:.2f}",
            "share of fp32 matmul ceiling": f"{r['ceiling_share']:.0%}",
            "load before/after": f"{r['load_before']:.2f} / {r['load_after']:.2f}",
        }
        table.append(line)
    return (
        f"## Where a training step goes (benchmarks/profile.py)\n\n{header(rows)}"
        f"Batch {BATCH}, 2 threads, fp32; fp32 matmul ceiling measured {rows[0]['peak_gflops']:.0f} GFLOP/s. "
        "Shares of the step (data: reading and checking the batch; the fused table optimizer runs inside "
        "the tables' backward, so it counts as embedding; see the script's docstring).\n\n"
        f"{markdown_table(table, list(table[0]))}\n"
    )


if __name__ == "__main__":
    main()
