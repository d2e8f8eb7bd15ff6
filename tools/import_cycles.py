"""Fails on any import cycle among the modules of features/, rankers/ and benchmarks/.

`lint-imports` (.importlinter) checks the direction between the packages and cycles among siblings;
this also catches a module importing its own package's `__init__` that imports it back (e.g. a
backbone importing `rankers.backbones` for the registry). Imports inside functions and under
`TYPE_CHECKING` count: a cycle deferred to call time is still a cycle.

Run from the repository root: `PYTHONPATH=. python tools/import_cycles.py` (`make lint` does).
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("features", "rankers", "benchmarks")


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One shortest cycle through each import that has a way back; each cycle listed once."""
    found: dict[frozenset[str], list[str]] = {}
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                found.setdefault(frozenset(back), [importer, *back])
    return list(found.values())


def main() -> int:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    found = cycles(graph)
    for cycle in found:
        print("import cycle: " + " -> ".join(cycle))
    print(f"{len(graph.modules)} modules, {len(found)} import cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
