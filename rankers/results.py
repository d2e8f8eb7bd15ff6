"""What a run measured, as the CLI and the demo print it: the results table of a training run or an
evaluation, and what a predictor's probabilities are."""

from __future__ import annotations

from typing import Any

from rankers.metrics import markdown_table


def results_table(
    result: dict[str, Any],
    model: str,
    splits: tuple[str, ...] = ("valid", "test"),
    others: dict[str, dict[str, Any]] | None = None,
) -> str:
    """AUC/LogLoss (and gAUC where the data names users) per split and task, with the constant prior
    and (synthetic data) the teacher.

    Args:
        result: `train`'s result (or {split: {task: metrics}, "teacher": {split: ...}}).
        model: the name in the model column.
        splits: the splits shown, in order.
        others: more models' {split: {task: metrics}} on the same rows, by name (e.g. the model's own
            probabilities beside calibrated ones): a row each after the model's.
    """
    models = {model: result, **(others or {})}
    rows: list[dict[str, Any]] = []
    grouped = any("gauc" in m for r in models.values() for split in splits for m in r.get(split, {}).values())
    for split in splits:
        for task, m in result.get(split, {}).items():
            teacher = _teacher(result, split, task)
            for name, measured in models.items():
                if task in measured.get(split, {}):
                    rows.append(_model_row(name, split, task, measured[split][task], grouped, teacher))
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
            if teacher:
                row = {"model": "teacher (best achievable)", "split": split, "task": task}
                rows.append(row | {"AUC": teacher["auc"], "LogLoss": teacher["logloss"]})
    columns = ["model", "split", "task", "AUC", *(["gAUC"] if grouped else []), "LogLoss", "lift vs teacher"]
    return markdown_table(rows, columns)


def _model_row(
    name: str, split: str, task: str, m: dict[str, Any], grouped: bool, teacher: dict[str, Any] | None
) -> dict[str, Any]:
    """A model's row: its AUC, LogLoss (gAUC where `grouped`) and its lift vs the `teacher`."""
    row = {"model": name, "split": split, "task": task, "AUC": m["auc"], "LogLoss": m["logloss"]}
    if grouped:
        row["gAUC"] = m.get("gauc")
    if teacher and m["auc"] is not None and teacher["auc"] and teacher["auc"] != 0.5:
        row["lift vs teacher"] = (m["auc"] - 0.5) / (teacher["auc"] - 0.5)
    return row


def _teacher(result: dict[str, Any], split: str, task: str) -> dict[str, Any] | None:
    """The teacher's figures of `task` on `split` (synthetic data), or None."""
    teacher = result.get("teacher", {}).get(split)
    if teacher and "tasks" in teacher:  # a funnel: the teacher's figures per task
        teacher = teacher["tasks"].get(task)
    return teacher or None


def describe_probabilities(predictor: Any, raw: bool, both: bool = False) -> str:
    """What `predictor`'s probabilities are: calibrated by its checkpoint's calibration, or the
    model's own (`raw`, or no calibration); with `both` (a calibration, not `raw`), the calibrated
    ones and the model's own, as `rankers evaluate` reports them."""
    if predictor.calibration is None:
        return "the model's own probabilities (the checkpoint holds no calibration)"
    if raw:
        return "the model's own probabilities (--raw; the checkpoint's calibration is not applied)"
    maps = ", ".join(f"{t} {c.method}" for t, c in predictor.calibration.tasks.items())
    where = predictor.path / "calibration.json"
    if both:
        own = "the model's own (raw; --raw for those alone)"
        return f"probabilities calibrated by {where} ({maps}), and {own}"
    return f"probabilities calibrated by {where} ({maps}; --raw for the model's own)"
