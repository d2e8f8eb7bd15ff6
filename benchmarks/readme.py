"""Rewrites benchmarks/README.md from results.jsonl: each script's section from its latest runs.

    .venv/bin/python -m benchmarks.readme

Each benchmark script renders its own section from its JSON lines (its `render`); this only puts
the sections in order, after the introduction and before NOTES.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    bidding,
    cli_help,
    compare,
    conversion,
    esmm,
    gpu,
    kernels,
    profile,
    quality,
    scaling,
    selection,
    sequences,
    serving,
    teacher_ceilings,
    throughput,
)
from benchmarks._common import README, results

INTRO = """# Benchmarks

Run by hand on an idle machine (check `uptime` first); each script appends JSON lines to
`results.jsonl` and rewrites this file from the latest run of each script. Figures are not
comparable across machines. Regenerate without running: `.venv/bin/python -m benchmarks.readme`, or
`.venv/bin/python -m benchmarks.report` to redraw the figures too (the optional `plots` extra).
"""
# The README's sections in order; a script without rows in results.jsonl renders none.
SECTIONS: tuple[Callable[[list[dict[str, Any]]], str], ...] = (
    quality.render,
    teacher_ceilings.render,
    throughput.render,
    profile.render,
    kernels.render,
    conversion.render,
    serving.render,
    sequences.render,
    selection.render,
    esmm.render,
    scaling.render,
    gpu.render,
    bidding.render,
    compare.render,
    cli_help.render,
)


def render(rows: list[dict[str, Any]]) -> str:
    """The README: the introduction, each script's sections from `rows`, then NOTES.md."""
    sections = (render_section(rows) for render_section in SECTIONS)
    parts = [INTRO, *(section for section in sections if section)]
    notes = README.with_name("NOTES.md")
    if notes.is_file():
        parts.append(notes.read_text())
    return "\n".join(parts)


def write_readme() -> Path:
    """Rewrites benchmarks/README.md from results.jsonl and returns its path."""
    README.write_text(render(results()))
    return README


if __name__ == "__main__":
    print(write_readme())
