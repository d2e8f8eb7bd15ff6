"""The funnel's per-task rules, shared by evaluation (`rankers.evaluation`) and bidding; numpy only.

The funnel's rules (a dataset with click `ctr` and conversion `cvr` labels, ESMM's `ctcvr`):

- ctr is scored on every row against its own label;
- cvr, beside a click label, on the clicked rows only: conversion rate is defined after a click
  (the ESMM paper's CVR AUC);
- ctcvr, which has no label of its own, on every row against the conversion label (a conversion
  implies a click, so it is "click and conversion");
- a conversion goal's value is ctcvr where predicted, else ctr x cvr (`goal_tasks`).
"""

from __future__ import annotations

import numpy as np


def task_labels(
    probs: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per predicted task, its labels and the rows it is measured on (the rules above).
    Tasks without a label are left out."""
    out = {}
    for task in probs:
        if task in labels:
            y = labels[task]
        elif task == "ctcvr" and "cvr" in labels:
            y = labels["cvr"]
        else:
            continue
        rows = labels["ctr"] == 1 if task == "cvr" and "ctr" in labels else np.ones(len(y), dtype=bool)
        out[task] = (y, rows)
    return out


def goal_tasks(tasks: list[str] | tuple[str, ...], goal: str) -> list[str]:
    """The predicted tasks a bidding goal's values are made of: ctr for "click"; for "conversion"
    ctcvr where predicted, else ctr and cvr (`rankers.bidding.values.values_from_probs`)."""
    if goal == "click" or "ctcvr" not in tasks:
        return ["ctr"] if goal == "click" else [t for t in ("ctr", "cvr") if t in tasks]
    return ["ctcvr"]
