"""GPU training throughput of the backbones on plain torch, and their CUDA-against-CPU parity.

    PYTHONPATH=. python3 -m benchmarks.gpu --out build/gpu_check/benchmark
    python -m benchmarks.gpu --device cpu --steps 3 --batch-size 256 --out build/gpu_smoke  # smoke test

Runs with torch alone (no torchrec, no fbgemm_gpu: the machines lent with a GPU have neither).
Shapes are the CPU benchmarks' (batch 4096, embedding dim 16):
- mlp, finalmlp, autoint_plus: Criteo-like rows (benchmarks/throughput.py): 13 dense values, 26
  categorical fields with Criteo Kaggle's cardinalities capped at --max-vocab (1M: 5.6M table rows),
  the configs of benchmarks/quality.py MODELS.
- din, dien: UserBehavior-like rows (benchmarks/sequences.py throughput): user_id (10,000), item_id
  (100,000), cate_id (1,000) and histories of items and categories up to 50 long (geometric
  lengths, mean about 17) sharing the item and category tables; DNN (256, 128), attention (64, 16).

Embeddings: one nn.Embedding per model holding every table (ids offset; sparse=False), trained with
the backbone by one torch.optim.Adam (lr 1e-3, fused on CUDA). Adam updates every table row each
step, which fbgemm's fused kernel (the rows a batch touches) does not: "step" is a floor for the
TorchRec path; "backbone" times the backbone alone (forward, backward, Adam) on embedded inputs held
on the device. Timing: --warmup steps, then --steps steps between two device synchronisations, on
8 random batches made on the device beforehand; fp32 without TF32 (torch's default), bf16 under
autocast; on a GPU the backbones take their static-shape paths (`fixed_shapes`), as training does.
Parity: the model copied to CPU, --parity-rows rows in eval mode, max |logit difference| against
CPU in fp32 (TF32 off) and under bf16 autocast on both. Writes gpu.json and gpu.md to --out.

Its section of benchmarks/README.md comes from results.jsonl: a run made on a GPU machine (as
`tools/gpu_check.sh` does) is added there with `python -m benchmarks.gpu --record DIR/gpu.json`;
until one is, the section says that these figures have never been measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import RESULTS, git_sha, machine, markdown_table, run_readme, versions
from benchmarks._gpu_inputs import CONFIGS, Batch, PlainRanker, build, loss_of, make_batch, tables
from rankers.backbones import Embedded
from rankers.backbones.shapes import fixed_shapes

ANCHORS = (
    "Published anchors: BARS FinalMLP on Criteo_x1, one V100: about 63,000 ex/s; BARS DIEN on "
    "TaobaoAd_x1: about 19,000 ex/s; TorchRec DLRM, one A100: about 740,000 ex/s."
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def timed(
    model: PlainRanker, batches: list[Batch], precision: str, warmup: int, steps: int, backbone_only: bool
) -> float:
    """Steady training examples/s: `warmup` steps, then `steps` steps between synchronisations.
    `backbone_only`: the backbone on the batches' embedded inputs (held on the device), the table
    left out of the step."""
    device = batches[0].dense.device
    inputs: list[Embedded] = []
    if backbone_only:
        with torch.no_grad():
            inputs = [model.embed(b) for b in batches]
        for x in inputs:  # the gradients the tables would take, computed as in training
            for t in (x.fields, *(seq.values for seq in x.sequences.values())):
                t.requires_grad_()
    params = list(model.backbone.parameters() if backbone_only else model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=device.type == "cuda")

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            b = batches[i % len(batches)]
            loss = loss_of(model.backbone, inputs[i % len(inputs)], b.labels) if backbone_only else model(b)
        loss.backward()
        optimizer.step()

    with fixed_shapes(device.type != "cpu"):  # as the training loop runs the backbones there
        for i in range(warmup):
            step(i)
        synchronize(device)
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        synchronize(device)
    return steps * len(batches[0].labels) / (time.perf_counter() - start)


def parity(model: PlainRanker, batch: Batch, device: torch.device) -> dict[str, float]:
    """Max |logit difference| of `model` (on `device`) against its copy on CPU, on `batch` (CPU),
    in eval mode: fp32 (TF32 off) and bf16 autocast on both; and the largest |logit| on CPU."""
    on_cpu, out = copy.deepcopy(model).cpu().eval(), {}
    model.eval()
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            for precision in ("fp32", "bf16"):
                with _autocast(device, precision), fixed_shapes(device.type != "cpu"):
                    got = model.backbone(model.embed(batch.to(device))).logits["ctr"].float().cpu()
                with _autocast(torch.device("cpu"), precision):
                    want = on_cpu.backbone(on_cpu.embed(batch)).logits["ctr"].float()
                out[f"max_abs_diff_{precision}"] = float((got - want).abs().max())
                out[f"max_abs_logit_{precision}"] = float(want.abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        model.train()
    return out


def measure(model_name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """One row per precision for `model_name`: step and backbone examples/s, peak GPU memory, and
    the parity figures."""
    generator = torch.Generator().manual_seed(args.seed)
    batches = [
        make_batch(model_name, args.batch_size, args.max_vocab, generator).to(device) for _ in range(8)
    ]
    check = make_batch(model_name, args.parity_rows, args.max_vocab, generator)
    rows = []
    for precision in args.precisions:
        row: dict[str, Any] = {"model": model_name, "precision": precision}
        for what in ("step", "backbone"):
            model = build(model_name, args.max_vocab, args.seed).to(device).train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rate = timed(model, batches, precision, args.warmup, args.steps, what == "backbone")
            row[f"{what}_examples_per_s"] = rate
            if device.type == "cuda":
                row[f"{what}_peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            print(f"{model_name} {precision} {what}: {rate:,.0f} ex/s", flush=True)
        rows.append(row)
    model = build(model_name, args.max_vocab, args.seed).to(device)
    figures = parity(model, check, device)
    print(f"{model_name} parity against CPU: {figures}", flush=True)
    return [r | figures | {"table_rows": sum(tables(model_name, args.max_vocab).values())} for r in rows]


def report_markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The markdown report: the run's settings, then a row per model and precision."""
    table, errors = [], [f"{r['model']}: FAILED: {r['error']}" for r in rows if "error" in r]
    for r in (r for r in rows if "error" not in r):
        p = r["precision"]
        table.append(
            {
                "model": r["model"],
                "precision": p,
                "step ex/s": f"{r['step_examples_per_s']:,.0f}",
                "backbone ex/s": f"{r['backbone_examples_per_s']:,.0f}",
                "table rows": f"{r['table_rows']:,}",
                "max abs logit diff vs CPU": f"{r['max_abs_diff_' + p]:.2e}",
                "max abs logit": f"{r['max_abs_logit_' + p]:.2f}",
            }
        )
    return (
        f"## GPU training throughput and parity\n\nCommand: `{env['command']}`  \n"
        f"Device: {env['device_name']}; {env['machine']}; torch {env['versions'].get('torch')} "
        f"(CUDA {env['cuda']}); git {env['git_sha']}; {env['time']}  \n"
        f"Batch {env['batch_size']}, {env['warmup']} warm-up and {env['steps']} timed steps; tables "
        f"capped at {env['max_vocab']:,} rows a field; TF32 in fp32 matmuls: {env['tf32']}.\n\n"
        + (markdown_table(table, list(table[0])) if table else "No figures.")
        + "".join(f"\n\n{e}" for e in errors)
        + f"\n\n{ANCHORS}\n"
    )


def record_run(path: Path) -> int:
    """Appends the figures of a gpu.json (a run on a GPU machine) to results.jsonl, one line per
    model and precision under one run id, and rewrites benchmarks/README.md; returns the lines."""
    run = json.loads(path.read_text())
    env, rows = run["environment"], [r for r in run["results"] if "error" not in r]
    if not rows:
        raise SystemExit(f"{path}: no figures to record (every model failed, or none ran)")
    stamp = f"gpu-{env['time'].replace(' ', 'T')}"
    with RESULTS.open("a") as f:
        for r in rows:
            f.write(
                json.dumps({"run": stamp, "benchmark": "gpu", **r, "environment": env}, default=str) + "\n"
            )
    run_readme()
    return len(rows)


def render(rows: list[dict[str, Any]]) -> str:
    """The README's GPU section: the latest recorded run, or the plain statement that none ran."""
    runs = [r for r in rows if r.get("benchmark") == "gpu"]
    if not runs:
        return (
            "## GPU training throughput and parity (benchmarks/gpu.py)\n\nNever measured: no session "
            "so far was lent a GPU machine. `tools/gpu_check.sh OUT` on one GPU runs the `gpu` tests and "
            "this benchmark (every backbone, fp32 and bf16, CUDA against CPU); `python -m benchmarks.gpu "
            f"--record OUT/benchmark/gpu.json` adds its figures here.\n\n{ANCHORS}\n"
        )
    last = [r for r in runs if r["run"] == runs[-1]["run"]]
    return report_markdown(last, last[0]["environment"]).replace(
        "## GPU training throughput and parity", "## GPU training throughput and parity (benchmarks/gpu.py)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("build/gpu_benchmark"), help="folder for gpu.json, gpu.md"
    )
    parser.add_argument(
        "--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a smoke test, not a benchmark)"
    )
    parser.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated, of fp32, bf16")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per training step")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per figure")
    parser.add_argument("--warmup", type=int, help="untimed steps before them; default 10 on CUDA, 1 on CPU")
    parser.add_argument(
        "--max-vocab",
        type=int,
        default=None,
        help="caps each Criteo field's table rows; default 1,000,000 on CUDA (5.6M rows in all), "
        "10,000 on CPU (Adam would update 5.6M rows a step there)",
    )
    parser.add_argument("--parity-rows", type=int, default=1024, help="rows of the CUDA-against-CPU check")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and batches (default 0)")
    parser.add_argument(
        "--record",
        type=Path,
        help="measure nothing: add this gpu.json (a GPU machine's run) to results.jsonl and the README",
    )
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(args.models) - set(CONFIGS)) + sorted(set(args.precisions) - {"fp32", "bf16"})
    if unknown:
        parser.error(
            f"unknown models or precisions {unknown}; models: {list(CONFIGS)}, precisions: fp32, bf16"
        )
    on_cpu = args.device == "cpu"
    args.warmup = (1 if on_cpu else 10) if args.warmup is None else args.warmup
    args.max_vocab = (10_000 if on_cpu else 1_000_000) if args.max_vocab is None else args.max_vocab
    if min(args.batch_size, args.steps, args.parity_rows, args.max_vocab) < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps, --parity-rows and --max-vocab must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measures, writes gpu.json and gpu.md to --out, and returns what gpu.json holds (with
    --record, adds a gpu.json to results.jsonl instead)."""
    args = parse_args(argv)
    if args.record:
        print(f"recorded {record_run(args.record)} rows from {args.record}")
        return {}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch {torch.__version__} sees no GPU here; pass --device cpu"
        )
    env = {
        "command": shlex.join(["python", "-m", "benchmarks.gpu", *(sys.argv[1:] if argv is None else argv)]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "machine": machine(),
        "versions": versions(),
        "git_sha": git_sha(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "embeddings": "one nn.Embedding per model (sparse=False), Adam over tables and backbone",
    } | {k: getattr(args, k) for k in ("batch_size", "steps", "warmup", "max_vocab", "parity_rows", "seed")}
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:  # written after each model: a run cut short keeps what it measured
        try:
            rows += measure(name, args, device)
        except Exception as e:  # recorded, and the exit status says so
            traceback.print_exc()
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"})
        write(args.out, env, rows)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    if any("error" in r for r in rows):
        raise SystemExit(f"benchmarks.gpu: {[r['model'] for r in rows if 'error' in r]} failed (see above)")
    return {"environment": env, "results": rows}


def write(out: Path, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    (out / "gpu.json").write_text(
        json.dumps({"environment": env, "results": rows}, indent=1, default=str) + "\n"
    )
    (out / "gpu.md").write_text(report_markdown(rows, env))


if __name__ == "__main__":
    main()
