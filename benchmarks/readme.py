"""Rewrites benchmarks/README.md from results.jsonl: the latest run of each benchmark script.

.venv/bin/python benchmarks/readme.py
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import README, results
from rankers.metrics import markdown_table

FIGURES = README.parent / "figures"  # written by benchmarks/report.py (matplotlib)


def _figure_link(name: str, alt: str) -> str:
    """A markdown image of figures/<name> when report.py has drawn it, else nothing."""
    return f"\n![{alt}](figures/{name})\n" if (FIGURES / name).is_file() else ""


INTRO = """# Benchmarks

Run by hand on an idle machine (check `uptime` first); each script appends JSON lines to
`results.jsonl` and rewrites this file from the latest run of each script. Figures are not
comparable across machines. Regenerate without running: `.venv/bin/python benchmarks/readme.py`, or
`benchmarks/report.py` to redraw the figures too (the optional `plots` extra).
"""


def _latest_run(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    runs = [r for r in rows if str(r.get("run", "")).startswith(prefix)]
    if not runs:
        return []
    last = runs[-1]["run"]
    return [r for r in runs if r["run"] == last]


def _latest_per_dataset(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """For each dataset, its rows from the latest run that measured it."""
    runs = [r for r in rows if str(r.get("run", "")).startswith(prefix)]
    last = {r["dataset"]: r["run"] for r in runs}
    return [r for r in runs if last[r["dataset"]] == r["run"]]


def _header(rows: list[dict[str, Any]]) -> str:
    r = rows[0]
    v = r["versions"]
    stack = ", ".join(f"{k} {v[k]}" for k in ("torch", "torchrec", "fbgemm-gpu-cpu", "pyarrow") if k in v)
    return (
        f"Command: `{r['command']}`  \nMachine: {r['machine']}; {stack}; git {r['git_sha']}; {r['time']}; "
        f"load average before {r['load_before']:.2f}\n"
    )


def _quality(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["model"])].append(r)
    table = []
    for (dataset, model), rs in groups.items():
        aucs, lls = [r["auc"] for r in rs], [r["logloss"] for r in rs]
        sd = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
        table.append(
            {
                "dataset": dataset,
                "split": rs[0]["split"],
                "model": model,
                "seeds": len(rs),
                "test AUC": f"{statistics.mean(aucs):.4f}{sd}",
                "test LogLoss": statistics.mean(lls),
                "lift vs teacher": statistics.mean(r["lift"] for r in rs) if "lift" in rs[0] else None,
            }
        )
        if model == "mlp":
            table.append(
                {
                    "dataset": dataset,
                    "split": rs[0]["split"],
                    "model": "constant prior",
                    "seeds": "-",
                    "test AUC": "0.5000",
                    "test LogLoss": rs[0]["prior_logloss"],
                }
            )
            if "teacher_auc" in rs[0]:
                table.append(
                    {
                        "dataset": dataset,
                        "split": rs[0]["split"],
                        "model": "teacher (best achievable)",
                        "seeds": "-",
                        "test AUC": f"{rs[0]['teacher_auc']:.4f}",
                        "test LogLoss": rs[0]["teacher_logloss"],
                    }
                )
    cols = ["dataset", "split", "model", "seeds", "test AUC", "test LogLoss", "lift vs teacher"]
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        runs[r["run"]].append(r)
    headers = "\n".join(
        f"{', '.join(sorted({r['dataset'] for r in rs}))}:  \n{_header(rs)}" for rs in runs.values()
    )
    return "## Quality\n\n" + headers + "\n" + markdown_table(table, cols) + "\n"


REFERENCE = {
    "reader": "target >= 1,000,000 rows/s on one core",
    "convert": "FuxiCTR preprocessing about 19,000 rows/s here; target >= 190,000",
}
# FuxiCTR 2.3.10 at the same shapes on this machine class (fp32), and the targets set against it.
FUXICTR = {
    "mlp": "FuxiCTR DNN about 70,000 ex/s; target >= 91,000 (1.3x)",
    "autoint": "FuxiCTR AutoInt about 9,600 ex/s; target >= 19,200 (2x)",
    "finalmlp": "FuxiCTR FinalMLP about 16,900 ex/s; target >= 25,350 (1.5x)",
}


def _figure(rs: list[dict[str, Any]], field: str, unit: str) -> str:
    values = sorted(r[field] for r in rs)
    figure = f"{statistics.median(values):,.0f} {unit}".strip()
    if len(values) > 1:
        figure += f" (median of {len(values)}: {', '.join(f'{v:,.0f}' for v in values)})"
    return figure


def _loads(rs: list[dict[str, Any]]) -> str:
    return f"{min(r['load_before'] for r in rs):.2f} / {max(r.get('load_after', 0.0) for r in rs):.2f}"


def _throughput(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        what = r["benchmark"] + (
            f" (shuffle buffer {r['shuffle_buffer']:,})" if "shuffle_buffer" in r else ""
        )
        groups[(what, r.get("model", "-"), r.get("precision", ""))].append(r)
    io, training, peak = [], [], None
    for (what, model, precision), rs in groups.items():
        if what == "matmul":
            peak = rs[0]["gflops"]
        elif "rows_per_s" in rs[0]:
            io.append(
                {
                    "benchmark": what,
                    "figure": _figure(rs, "rows_per_s", "rows/s"),
                    "reference": REFERENCE.get(what.split(" ")[0], ""),
                    "load before/after": _loads(rs),
                }
            )
        else:
            flops = rs[0].get("flops_per_example")
            share = statistics.median(r["ceiling_share"] for r in rs) if "ceiling_share" in rs[0] else None
            training.append(
                {
                    "model": model,
                    "precision": precision or "fp32",
                    "benchmark": what,
                    "examples/s": _figure(rs, "examples_per_s", ""),
                    "MFLOP/example": flops / 1e6 if flops else None,
                    "share of fp32 matmul ceiling": f"{share:.0%}" if share is not None else None,
                    "reference": FUXICTR.get(model, "") if precision in ("", "fp32") else "",
                    "load before/after": _loads(rs),
                }
            )
    out = f"## Throughput\n\n{_header(rows)}Data: {rows[0]['dataset']}\n\n"
    if io:
        out += markdown_table(io, ["benchmark", "figure", "reference", "load before/after"]) + "\n\n"
    if training:
        if peak:
            out += f"Training, batch 4096, 2 threads; fp32 matmul ceiling measured {peak:.0f} GFLOP/s.\n\n"
        cols = [
            "model",
            "precision",
            "benchmark",
            "examples/s",
            "MFLOP/example",
            "share of fp32 matmul ceiling",
            "reference",
            "load before/after",
        ]
        out += markdown_table(training, cols) + "\n"
    return out


def _batch_checks(rows: list[dict[str, Any]]) -> str:
    """The API's batch checks against the MLP's training step."""
    share = statistics.median(r["share"] for r in rows)
    table = [
        {
            "repeat": r["repeat"],
            "check per 4096-row batch": f"{r['check_us']:,.0f} us",
            "MLP training step": f"{r['step_ms']:.1f} ms",
            "share": f"{r['share']:.2%}",
            "load before/after": f"{r['load_before']:.2f} / {r['load_after']:.2f}",
        }
        for r in rows
    ]
    cols = ["repeat", "check per 4096-row batch", "MLP training step", "share", "load before/after"]
    return (
        "## Batch checks\n\n"
        "Every batch the Predictor, training and evaluation take is checked as the parquet reader\n"
        "checks files (ids within their tables, finite dense values: `features.batch.BatchCheck`).\n"
        f"Its median cost is {share:.2%} of the MLP's training step (target under 2%): the check\n"
        "alone on freshly read batches, against whole training steps (which include it) of the\n"
        "MLP at the throughput shapes, batch 4096.\n\n"
        f"{_header(rows)}Data: {rows[0]['dataset']}\n\n" + markdown_table(table, cols) + "\n"
    )


def _ceilings(rows: list[dict[str, Any]]) -> str:
    table = [
        {
            "teacher": r["dataset"],
            "teacher AUC": r["teacher_auc"],
            "first-order terms alone": f"{r['first_order_auc']:.4f} (lift {r['first_order_lift']:.3f})",
            "pairwise terms alone": f"{r['pairs_auc']:.4f} (lift {r['pairs_lift']:.3f})",
            "rare values collapsed": f"{r['rare_collapsed_auc']:.4f} (lift {r['rare_collapsed_lift']:.3f})",
        }
        for r in rows
    ]
    cols = [
        "teacher",
        "teacher AUC",
        "first-order terms alone",
        "pairwise terms alone",
        "rare values collapsed",
    ]
    return "## Teacher ceilings (test rows)\n\n" + _header(rows) + "\n" + markdown_table(table, cols) + "\n"


# Peers at the shapes on this machine class (fp32, batch 4096), and the targets set against them.
SEQUENCE_PEERS = {
    "din": "FuxiCTR 2.3.10 about 8,300 ex/s, DeepCTR-Torch about 5,000; target >= 24,900 (3x FuxiCTR)",
    "dien": "FuxiCTR about 4,600 ex/s, DeepCTR-Torch about 4,700, torch-rechub about 6,500; "
    "target >= 9,200 (2x FuxiCTR)",
}


def _latest_per_model(rows: list[dict[str, Any]], benchmark: str) -> list[dict[str, Any]]:
    """For each model, its `benchmark` rows from the latest run that measured it."""
    rs = [r for r in rows if r.get("benchmark") == benchmark]
    last = {r["model"]: r["run"] for r in rs}
    return [r for r in rs if last[r["model"]] == r["run"]]


def _sequences(rows: list[dict[str, Any]]) -> str:
    out = "## Behaviour sequences (benchmarks/sequences.py)\n\n"
    quality = _latest_per_model(rows, "sequence_quality")
    if quality:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in quality:
            groups[r["model"]].append(r)
        table = []
        for model, rs in groups.items():
            aucs = [r["auc"] for r in rs]
            sd = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
            table.append(
                {
                    "model": model,
                    "seeds": len(rs),
                    "test AUC": f"{statistics.mean(aucs):.4f}{sd}",
                    "test gAUC": statistics.mean(r["gauc"] for r in rs),
                    "test LogLoss": statistics.mean(r["logloss"] for r in rs),
                    "best epochs": ", ".join(str(r["best_epoch"]) for r in rs),
                }
            )
        table.append(
            {
                "model": "constant prior",
                "seeds": "-",
                "test AUC": "0.5000",
                "test gAUC": 0.5,
                "test LogLoss": quality[0]["prior_logloss"],
            }
        )
        cols = ["model", "seeds", "test AUC", "test gAUC", "test LogLoss", "best epochs"]
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in quality:
            runs[r["run"]].append(r)
        headers = "".join(
            f"{', '.join(sorted({r['model'] for r in rs}))}:  \n{_header(rs)}" for rs in runs.values()
        )
        out += (
            f"Quality: {quality[0]['dataset']}, split {quality[0]['split']}, click task.\n\n"
            f"{headers}\n{markdown_table(table, cols)}\n\n"
        )
    speed = _latest_run([r for r in rows if r.get("benchmark") == "sequence_train"], "sequences-")
    if speed:
        groups2: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in speed:
            groups2[(r["model"], r["precision"])].append(r)
        table = [
            {
                "model": model,
                "precision": precision,
                "training loop": _figure(rs, "examples_per_s", "ex/s"),
                "load before / after": _loads(rs),
                "peers and target": SEQUENCE_PEERS.get(model, "") if precision == "fp32" else "",
            }
            for (model, precision), rs in groups2.items()
        ]
        cols = ["model", "precision", "training loop", "load before / after", "peers and target"]
        out += f"Throughput: {speed[0]['dataset']}.  \n{_header(speed)}\n{markdown_table(table, cols)}\n"
    return out


# Test AUC before model selection weighed LogLoss (benchmarks/README.md at git bc1fe3b: quality.py
# with 5 seeds on Criteo, sequences.py with 3 on UserBehavior), the reference of the selection table.
SELECTION_BEFORE = {
    ("criteo_head10k", "mlp"): 0.7353,
    ("criteo_head10k", "autoint"): 0.7275,
    ("criteo_head10k", "autoint_plus"): 0.7291,
    ("criteo_head10k", "finalmlp"): 0.7327,
    ("userbehavior_650users", "mlp (no history)"): 0.6182,
    ("userbehavior_650users", "din"): 0.6628,
    ("userbehavior_650users", "din (softmax)"): 0.7809,
    ("userbehavior_650users", "dien"): 0.7909,
}


def _selection(rows: list[dict[str, Any]]) -> str:
    """Per dataset, model and variant (its latest run): test AUC and LogLoss against the prior's."""
    # each seed's latest row (seeds of one variant may come from runs in several processes)
    latest = {
        (r["dataset"], r["model"], r["variant"], r["seed"]): r
        for r in rows
        if r.get("benchmark") == "selection"
    }
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for (dataset, model, variant, _), r in sorted(latest.items(), key=lambda kv: kv[0][3]):
        groups[(dataset, model, variant)].append(r)
    table = []
    for (dataset, model, variant), g in groups.items():
        aucs, lls = [r["auc"] for r in g], [r["logloss"] for r in g]
        sd = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
        before = SELECTION_BEFORE.get((dataset, model))
        table.append(
            {
                "dataset": dataset,
                "model": model,
                "variant": variant,
                "seeds": len(g),
                "test AUC": f"{statistics.mean(aucs):.4f}{sd}",
                "AUC - before": None if before is None else statistics.mean(aucs) - before,
                "test LogLoss": statistics.mean(lls),
                "prior LogLoss": g[0]["prior_logloss"],
                "below prior": f"{sum(r['logloss'] < r['prior_logloss'] for r in g)} of {len(g)}",
                "best epochs": ", ".join(str(r["best_epoch"]) for r in g),
            }
        )
    table.sort(key=lambda r: (r["dataset"], r["model"], r["variant"]))
    cols = ["dataset", "model", "variant", "seeds", "test AUC", "AUC - before", "test LogLoss"]
    cols += ["prior LogLoss", "below prior", "best epochs"]
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in groups.values():
        for r in g:
            runs[r["run"]].append(r)
    headers = "".join(f"{_header(r)}" for r in runs.values())
    intro = (
        "## Model selection (benchmarks/selection.py)\n\n"
        "Which validation score selects the epoch (`--monitor-metric`), and which regularisation, so\n"
        "that the selected model's test LogLoss is below the constant prior's. Criteo head10k (first\n"
        "7.2k rows train, 0.8k valid, last 2k test) and UserBehavior's 650 users (by day), each with\n"
        "its benchmark's shapes and settings; `AUC - before` is against the test AUC these models had\n"
        "when the epoch was chosen by AUC alone (quality.py, sequences.py at git bc1fe3b).\n\n"
    )
    return intro + headers + "\n" + markdown_table(table, cols) + "\n"


def _real_row(dataset: str, model: str, rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean test AUC and LogLoss per task over seeds; AUCs with their seed-to-seed spread."""
    row: dict[str, Any] = {"dataset": dataset, "model": model, "seeds": len(rs)}
    for t in ("ctr", "cvr", "ctcvr"):
        aucs = [r[f"{t}_auc"] for r in rs if r.get(f"{t}_auc") is not None]
        sd = f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else ""
        row[f"{t} AUC"] = f"{statistics.mean(aucs):.4f}{sd}" if aucs else None
        lls = [r[f"{t}_logloss"] for r in rs if r.get(f"{t}_logloss") is not None]
        row[f"{t} LogLoss"] = statistics.mean(lls) if lls else None
    return row


def _esmm(rows: list[dict[str, Any]]) -> str:
    out = "## ESMM (benchmarks/esmm.py)\n\n"
    bias = _latest_per_model(rows, "esmm_bias")
    if bias:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in bias:
            groups[r["model"]].append(r)

        def mae(rs: list[dict[str, Any]], key: str) -> str:
            values = [r[key] for r in rs]
            sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.4f}{sd}"

        table = [
            {
                "model": model,
                "seeds": len(rs),
                "pCVR MAE, all test impressions": mae(rs, "mae_all"),
                "clicked": mae(rs, "mae_clicked"),
                "not clicked": mae(rs, "mae_not_clicked"),
                "mean pCVR (true)": f"{statistics.mean(r['mean_p'] for r in rs):.4f} "
                f"({rs[0]['mean_true_p']:.4f})",
            }
            for model, rs in groups.items()
        ]
        cols = [
            "model",
            "seeds",
            "pCVR MAE, all test impressions",
            "clicked",
            "not clicked",
            "mean pCVR (true)",
        ]
        out += f"Sample-selection bias: {bias[0]['dataset']}.  \n{_header(bias)}\n"
        out += markdown_table(table, cols) + "\n\n"
    real = _latest_run([r for r in rows if r.get("benchmark") == "esmm_real"], "esmm-")
    if real:
        by_data: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in real:
            by_data[r["dataset"]].append(r)
        table = []
        for dataset, rs in by_data.items():
            models = sorted({r["model"] for r in rs}, key=lambda m: m.startswith("logistic"))
            for model in models:
                table.append(_real_row(dataset, model, [r for r in rs if r["model"] == model]))
        table.append(
            {
                "dataset": "Ali-CCP full (ESMM paper, for context only)",
                "model": "ESMM",
                "cvr AUC": "0.6856",
                "ctcvr AUC": "0.6532",
            }
        )
        cols = [
            "dataset",
            "model",
            "seeds",
            "ctr AUC",
            "cvr AUC",
            "ctcvr AUC",
            "ctr LogLoss",
            "cvr LogLoss",
            "ctcvr LogLoss",
        ]
        out += (
            "Real funnels (test split; cvr over clicked impressions, ctr and ctcvr over all).  \n"
            f"{_header(real)}\n{markdown_table(table, cols)}\n\n"
        )
    speed = _latest_run([r for r in rows if r.get("benchmark") == "esmm_train"], "esmm-")
    if speed:
        table = [
            {
                "model": speed[0]["model"],
                "training loop": _figure(speed, "examples_per_s", "ex/s"),
                "load before / after": _loads(speed),
                "peers and target": "DeepCTR-Torch ESMM about 34,000 ex/s, torch-rechub about 22,000; "
                "target >= 51,000 (1.5x DeepCTR-Torch)",
            }
        ]
        cols = ["model", "training loop", "load before / after", "peers and target"]
        out += f"Throughput: {speed[0]['dataset']}, batch 4096.  \n{_header(speed)}\n"
        out += markdown_table(table, cols) + "\n"
    return out


def _scaling(rows: list[dict[str, Any]]) -> str:
    rs = _latest_run([r for r in rows if r.get("benchmark") == "scaling"], "scaling-")
    if not rs:
        return ""
    by: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        by[r["processes"]].append(r)
    table = [
        {
            "processes": n,
            "training loop": _figure(group, "examples_per_s", "ex/s"),
            "peak RSS per process (MB)": ", ".join(f"{m:,.0f}" for m in group[-1]["peak_rss_mb"]),
            "table bytes per rank (plan)": ", ".join(f"{b:,}" for b in group[-1]["table_bytes_per_rank"]),
            "load before / after": _loads(group),
        }
        for n, group in sorted(by.items())
    ]
    cols = [
        "processes",
        "training loop",
        "peak RSS per process (MB)",
        "table bytes per rank (plan)",
        "load before / after",
    ]
    return (
        f"## One process against two (benchmarks/scaling.py)\n\n{rs[0]['dataset']}.  \n{_header(rs)}\n"
        + markdown_table(table, cols)
        + "\n\nTwo CPU cores bound what scaling can show here: two processes get one core each where one "
        "process gets two threads, so the gain to look for is memory per process (the tables split "
        "table-wise), not speed. No GPU machine was lent to this session.\n"
    )


def _bidding(rows: list[dict[str, Any]]) -> str:
    out = "## Bidding (benchmarks/bidding.py)\n\n"
    ipy = _latest_run([r for r in rows if r.get("benchmark") == "bidding_ipinyou"], "bidding-")
    if ipy:
        cells: dict[tuple[str, float], dict[str, dict[str, Any]]] = defaultdict(dict)
        for r in ipy:
            cells[(r["campaign"], r["fraction"])][r["agent"]] = r
        table, ratios_opt, ratios_lin = [], [], []
        for (campaign, fraction), by in sorted(cells.items()):
            best, c, lin, pace = (by[k] for k in ("hindsight optimum", "constant", "linear", "paced"))
            ratios_opt.append(pace["expected"] / best["expected"])
            ratios_lin.append(pace["expected"] / lin["expected"])
            table.append(
                {
                    "campaign": campaign,
                    "budget": f"1/{round(1 / fraction)}",
                    "clicks const / linear / paced": f"{c['conversions']:.0f} / {lin['conversions']:.0f} / "
                    f"{pace['conversions']:.0f}",
                    "expected clicks const / linear / paced": " / ".join(
                        f"{x['expected']:.2f}" for x in (c, lin, pace)
                    ),
                    "hindsight optimum": best["expected"],
                    "paced / optimum": ratios_opt[-1],
                    "paced / linear": ratios_lin[-1],
                    "budget used linear / paced": f"{lin['budget_used']:.2f} / {pace['budget_used']:.2f}",
                }
            )
        clicks = {
            a: sum(by[a]["conversions"] for by in cells.values()) for a in ("constant", "linear", "paced")
        }
        table.append(
            {
                "campaign": "all",
                "budget": "all",
                "clicks const / linear / paced": " / ".join(f"{clicks[a]:.0f}" for a in clicks),
                "expected clicks const / linear / paced": " / ".join(
                    f"{sum(by[a]['expected'] for by in cells.values()):.2f}" for a in clicks
                ),
                "hindsight optimum": sum(by["hindsight optimum"]["expected"] for by in cells.values()),
                "paced / optimum": float(np.mean(ratios_opt)),
                "paced / linear": float(np.mean(ratios_lin)),
                "budget used linear / paced": "",
            }
        )
        cols = list(table[0])
        out += (
            "iPinYou, second price, 6 campaigns: tuned on episodes 1-50, replayed on 51-100 (50,000 "
            "auctions per campaign); budget per episode a share of the mean market price x 1,000; 48 "
            "ticks; bids capped at 300. Clicks are the real clicks won; expected clicks the sum of the "
            "logged pCTR won; the "
            "hindsight optimum the fractional knapsack of pCTR under the budget knowing every price (an "
            "upper bound for any agent with these values). The last row sums clicks and averages the "
            f"ratios.  \n{_header(ipy)}\n"
            + markdown_table(table, cols)
            + "\n"
            + _figure_link("bidding_ipinyou.png", "share of the hindsight optimum against the budget")
            + "\n"
        )
    value = _latest_run([r for r in rows if r.get("benchmark") == "bidding_model_value"], "bidding-")
    if value:
        table = [
            {
                "model": r["model"],
                "test AUC": r["test_auc"],
                "ECE raw / calibrated": f"{r['ece_raw']:.4f} / {r['ece_calibrated']:.4f}",
                "clicks won": r["conversions"],
                "true expected clicks won": r.get("true_expected"),
                "spend": r["spend"],
                "budget used": r["budget_used"],
                "win rate": r["win_rate"],
            }
            for r in value
        ]
        out += (
            "Value of a better model: synthetic test split (25 episodes of 1,000 rows; market prices "
            "log-normal, correlated 0.6 with the teacher's probability, median 50), paced agent tuned per "
            f"model on 12 episodes, replayed on 13, budget 6,250 per episode.  \n{_header(value)}\n"
            + markdown_table(table, list(table[0]))
            + "\n"
            + _figure_link("calibration_synthetic.png", "reliability before and after calibration")
        )
    return out


# Which of our rows a peer's is compared with (the same model shape).
_OURS_FOR = {
    "deepctr_torch": {m: m for m in ("mlp", "autoint_plus_fields", "din", "dien", "esmm")},
    "torch_rechub": {m: m for m in ("mlp", "autoint_plus", "din_dice", "dien_dice", "esmm")},
}


def _compare(rows: list[dict[str, Any]]) -> str:
    rs = _latest_per_dataset([r for r in rows if r.get("benchmark") == "compare"], "compare-")
    if not rs:
        return ""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[(r["dataset"], r["model"], r["library"])].append(r)

    def speed(key: tuple[str, str, str]) -> float:
        return statistics.median(r["examples_per_s"] for r in groups[key])

    table = []
    for (dataset, model, library), g in sorted(groups.items()):
        aucs = [r["auc"] for r in g]
        auc = f"{statistics.mean(aucs):.4f}" + (f" ± {statistics.stdev(aucs):.4f}" if len(aucs) > 1 else "")
        ours = _OURS_FOR.get(library, {}).get(model)
        ratio = "-"
        if ours and (dataset, ours, "rankers") in groups:
            ratio = f"{speed((dataset, ours, 'rankers')) / speed((dataset, model, library)):.2f}x"
            mine = statistics.mean(r["auc"] for r in groups[(dataset, ours, "rankers")])
            ratio += f", AUC {mine - statistics.mean(aucs):+.4f}"
        table.append(
            {
                "dataset": dataset,
                "model": model,
                "library": library,
                "seeds": len(g),
                "test AUC": auc,
                "teacher AUC": g[0].get("teacher_auc") or "-",
                "test LogLoss": statistics.mean(r["logloss"] for r in g),
                "ex/s (median)": speed((dataset, model, library)),
                "peak RSS MB": round(max(r["peak_rss_mb"] for r in g)),
                "ours vs this: speed, AUC": ratio,
                "load before / after": _loads(g),
            }
        )
    return (
        "## Against DeepCTR-Torch and torch-rechub (benchmarks/compare.py)\n\n"
        "Same parquet splits, embedding dim 16, MLP (256, 128), Adam 1e-3 on the dense layers, fixed "
        "epochs, the last one's test figures (Criteo head10k: batch 256, 3 epochs, 3 seeds; synthetic "
        "1M: batch 4096, 1 epoch), 2 "
        "threads, one process per run (peak RSS is that run's). `rankers`: tables fused rowwise "
        "Adagrad (lr 0.02); `rankers_adam`: tables data-parallel, trained by the same Adam as the "
        "peers (identical optimizer). Ours is the steady rate after the first steps of the last "
        "epoch; the peers' the whole last epoch (their own loops, reading included). mlp is "
        "DeepCTR-Torch's DeepFM without FM and torch-rechub's WideDeep (each a DNN plus a linear "
        "part); autoint_plus has numeric features as tokens (ours, torch-rechub), "
        "autoint_plus_fields only the categorical fields attending (ours with numeric_tokens off, "
        "DeepCTR-Torch). UserBehavior (the 650-user sample, one catalogue negative per positive, "
        "histories up to 50; batch 1024, 2 epochs, 3 seeds, DIEN 1 seed) and DIN-shaped synthetic data "
        "(features/synthetic_sequences.py, 200k rows, histories up to 50 with mean 17; batch 4096, 1 "
        "epoch): din is ours and DeepCTR-Torch's DIN (DNN "
        "relu, attention unit (64, 16) with Dice, no softmax; DeepCTR-Torch attends over item and "
        "category jointly, ours per sequence), din_dice the same with a Dice DNN (torch-rechub's fixed "
        "choice), dien AUGRU (attention unit (64, 16) relu, softmax over the history) without the "
        "auxiliary loss (DeepCTR-Torch without negative sampling), dien_dice the same with a Dice DNN "
        "against torch-rechub's DIEN (its auxiliary loss at weight 0, its attention a bilinear form "
        "with softmax). "
        "Synthetic funnel (300k rows, its 26 categorical fields: torch-rechub's ESMM takes no dense "
        "features; batch 4096, 1 epoch): esmm with MLP (256, 128) towers; its AUC and LogLoss are "
        "ctcvr's (click and conversion over every row). The teacher's AUC is the best any model can "
        "reach on that synthetic test split. "
        "The ratio column compares our row of the same shape with the peer's.  \n"
        + "".join(_header([r for r in rs if r["run"] == run]) for run in dict.fromkeys(r["run"] for r in rs))
        + "\n"
        + markdown_table(table, list(table[0]))
        + "\n"
        + _figure_link("compare_throughput.png", "training examples/s, ours and the peers")
        + _figure_link("compare_auc_epochs.png", "test AUC after each epoch, ours and the peers")
    )


def write_readme() -> Path:
    rows = results()
    parts = [INTRO]
    quality, throughput = _latest_per_dataset(rows, "quality-"), _latest_run(rows, "throughput-")
    if quality:
        parts.append(_quality(quality))
    ceilings = _latest_per_dataset(rows, "ceilings-")
    if ceilings:
        parts.append(_ceilings(ceilings))
    if throughput:
        parts.append(_throughput(throughput))
    checks = _latest_run(rows, "batchcheck-")
    if checks:
        parts.append(_batch_checks(checks))
    if any(str(r.get("run", "")).startswith("sequences-") for r in rows):
        parts.append(_sequences(rows))
    if any(r.get("benchmark") == "selection" for r in rows):
        parts.append(_selection(rows))
    if any(str(r.get("run", "")).startswith("esmm-") for r in rows):
        parts.append(_esmm(rows))
    if any(str(r.get("run", "")).startswith("scaling-") for r in rows):
        parts.append(_scaling(rows))
    if any(str(r.get("run", "")).startswith("bidding-") for r in rows):
        parts.append(_bidding(rows))
    if any(str(r.get("run", "")).startswith("compare-") for r in rows):
        parts.append(_compare(rows))
    notes = README.with_name("NOTES.md")
    if notes.is_file():
        parts.append(notes.read_text())
    README.write_text("\n".join(parts))
    return README


if __name__ == "__main__":
    print(write_readme())
