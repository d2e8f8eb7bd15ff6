"""What a run measured, as the CLI and the demo print it: the results table of a training run or an
evaluation, and what a predictor's probabilities are."""

from __future__ import annotations

from typing import Any

from rankers.metrics import markdown_table


def results_table(result: dict[str, Any], model: str, splits: tuple[str, ...] = ("valid", "test")) -> str:
    """AUC/LogLoss (and gAUC where the data names users) per split and task, with the constant prior
    and (synthetic data) the teacher.

    Args:
        result: `train`'s result (or {split: {task: metrics}, "teacher": {split: ...}}).
        model: the name in the model column.
        splits: the splits shown, in order.
    """
    rows: list[dict[str, Any]] = []
    grouped = any("gauc" in m for split in splits for m in result.get(split, {}).values())
    for split in splits:
        for task, m in result.get(split, {}).items():
            rows.append(
                {"model": model, "split": split, "task": task, "AUC": m["auc"], "LogLoss": m["logloss"]}
            )
            if grouped:
                rows[-1]["gAUC"] = m.get("gauc")
            rows.append(  # undefined where the model's is (one class, or no rows): "-" for both
                {
                    "model": "constant prior",
                    "split": split,
                    "task": task,
                    "AUC": None if m["auc"] is None else 0.5,
                    "gAUC": 0.5 if grouped and m.get("gauc") is not None else None,
                    "LogLoss": m.get("prior_logloss"),
                }
            )
            rows += _teacher_row(result, split, task, m, rows)
    columns = ["model", "split", "task", "AUC", *(["gAUC"] if grouped else []), "LogLoss", "lift vs teacher"]
    return markdown_table(rows, columns)


def _teacher_row(
    result: dict[str, Any], split: str, task: str, m: dict[str, Any], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The teacher's row (synthetic data), and the model's lift vs the teacher set in `rows`."""
    teacher = result.get("teacher", {}).get(split)
    if teacher and "tasks" in teacher:  # a funnel: the teacher's figures per task
        teacher = teacher["tasks"].get(task)
    if not teacher:
        return []
    if m["auc"] is not None and teacher["auc"] and teacher["auc"] != 0.5:
        rows[-2]["lift vs teacher"] = (m["auc"] - 0.5) / (teacher["auc"] - 0.5)
    row = {"model": "teacher (best achievable)", "split": split, "task": task}
    return [row | {"AUC": teacher["auc"], "LogLoss": teacher["logloss"]}]


def describe_probabilities(predictor: Any, raw: bool) -> str:
    """What `predictor`'s probabilities are: calibrated by its checkpoint's calibration, or the
    model's own (`raw`, or no calibration)."""
    if predictor.calibration is None:
        return "the model's own probabilities (the checkpoint holds no calibration)"
    if raw:
        return "the model's own probabilities (--raw; the checkpoint's calibration is not applied)"
    maps = ", ".join(f"{t} {c.method}" for t, c in predictor.calibration.tasks.items())
    where = predictor.path / "calibration.json"
    return f"probabilities calibrated by {where} ({maps}; --raw for the model's own)"
