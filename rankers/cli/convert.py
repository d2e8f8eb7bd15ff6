"""`rankers convert SOURCE`: raw logs -> a parquet dataset (features' converters); a flag per field
of the source's config dataclass, and the same fields as the [SOURCE] table of a TOML `--config`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankers._args import add_dataclass_flags, dataclass_from_args, read_toml

HELP = "raw logs -> parquet dataset"
OUT_HELP = "dataset directory to create"
OVERWRITE_HELP = "replace an existing dataset at --out (default: refuse)"
VOCABULARY_HELP = "map with this dataset's vocabularies (the rows become new rows to score)"


def _criteo(p: argparse.ArgumentParser | None) -> type:
    from features.datasets.criteo import CriteoConfig

    if p is not None:
        p.add_argument("inputs", nargs="+", help="Criteo files (TSV without header, or CSV/TSV with one)")
        p.add_argument("--vocabulary-from", help=VOCABULARY_HELP + "; --split then defaults to 0,0,1")
    return CriteoConfig


def _taobao_ad(p: argparse.ArgumentParser | None) -> type:
    from features.datasets.taobao import TaobaoAdConfig

    if p is not None:
        help_ = "a directory with the four raw tables, or joined/dmr CSV files"
        p.add_argument("inputs", nargs="+", help=help_)
    return TaobaoAdConfig


def _userbehavior(p: argparse.ArgumentParser | None) -> type:
    from features.datasets.userbehavior import UserBehaviorConfig

    if p is not None:
        p.add_argument("inputs", nargs="+", help="UserBehavior CSV files (no header), grouped by user")
    return UserBehaviorConfig


def _aliexpress(p: argparse.ArgumentParser | None) -> type:
    from features.datasets.aliexpress import AliExpressConfig

    if p is not None:
        p.add_argument("inputs", nargs="*", help="train CSV files (train + valid_fraction valid)")
        help_ = "CSV files of the test split (mapped with the train vocabulary)"
        p.add_argument("--test", nargs="+", help=help_)
        p.add_argument("--vocabulary-from", help=VOCABULARY_HELP + " (inputs may then be omitted)")
    return AliExpressConfig


def _aliccp(p: argparse.ArgumentParser | None) -> type:
    from features.datasets.aliccp import AliCCPConfig

    if p is not None:
        p.add_argument("input", help="encoded: the train CSV; raw: the directory of the release's files")
        p.add_argument("--valid", help="encoded: CSV of the valid split (default: valid_fraction of train)")
        p.add_argument("--test", help="encoded: CSV of the test split (default: none)")
    return AliCCPConfig


@dataclass(frozen=True)
class _NoFields:
    """`convert table` reads everything from its spec."""


def _table(p: argparse.ArgumentParser | None) -> type:
    if p is not None:
        help_ = "CSV/TSV (plain or gzip) or parquet files, read in order as one sequence of rows"
        p.add_argument("inputs", nargs="+", help=help_)
        help_ = (
            "TOML file naming each column's role (label, dense, categorical, multi, sequence, keys, group, "
            "time), the input's delimiter and header, and the split; see examples/*/spec.toml and "
            "features/spec.py"
        )
        p.add_argument("--spec", required=True, help=help_)
    return _NoFields


def _synthetic(p: argparse.ArgumentParser | None) -> type:
    from features.datasets.synthetic import SyntheticConfig

    if p is not None:
        help_ = "write Criteo-format TSV to --out (a file) instead of a parquet dataset (default: parquet)"
        p.add_argument("--tsv", action="store_true", help=help_)
    return SyntheticConfig


# source -> (its help line, the function adding its inputs and returning its config class)
SOURCES: dict[str, tuple[str, Callable[[argparse.ArgumentParser | None], type]]] = {
    "table": ("any CSV/TSV/parquet table, as a spec names its columns' roles -> parquet", _table),
    "criteo": ("Criteo TSV/CSV -> parquet", _criteo),
    "taobao-ad": ("Alimama display ads (raw tables, joined or dmr CSV) -> parquet", _taobao_ad),
    "userbehavior": ("Taobao UserBehavior CSV -> examples with histories", _userbehavior),
    "aliexpress": ("AliExpress click/conversion CSV -> parquet", _aliexpress),
    "aliccp": ("Ali-CCP (label-encoded CSV or the raw release) -> parquet", _aliccp),
    "synthetic": ("teacher-generated Criteo-shaped data", _synthetic),
}


def configure(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """A subcommand per source; with `argv`, only the source it names gets its flags."""
    sub = parser.add_subparsers(dest="source", required=True)
    chosen = next((a for a in argv if a in SOURCES), None) if argv is not None else None
    for name, (help_, inputs) in SOURCES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if argv is None or name == chosen:
            out = OUT_HELP + (" (a TSV file with --tsv)" if name == "synthetic" else "")
            p.add_argument("--out", required=True, help=out)
            p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
            if name != "table":
                help_ = f"TOML file with a [{name}] table of the fields below (flags override them)"
                p.add_argument("--config", help=help_)
            config = inputs(p)
            add_dataclass_flags(p, config, title=f"{name} ({config.__name__})")
            p.set_defaults(config_class=config)


def run(args: argparse.Namespace) -> None:
    if args.source == "table":
        from features.datasets.table import convert_table
        from features.outputs import check_apart
        from features.spec import load_spec

        check_apart(args.out, [*args.inputs, args.spec])
        print_dataset(convert_table(args.inputs, load_spec(args.spec), args.out, args.overwrite))
        return
    table = read_toml(args.config, (args.source,)).get(args.source, {})
    where = f"{args.config} [{args.source}]"
    config = dataclass_from_args(args.config_class, args, table, where)
    out: Path | None = None
    if args.source == "criteo":
        from features.datasets.criteo import convert_criteo

        if args.vocabulary_from and args.split is None:  # mapped with an existing vocabulary: new rows
            config = dataclass_from_args(args.config_class, args, {"split": (0.0, 0.0, 1.0)} | table, where)
        out = convert_criteo(
            args.inputs, args.out, config, args.vocabulary_from, args.overwrite, progress=True
        )
    elif args.source == "taobao-ad":
        from features.datasets.taobao import convert_taobao_ad

        out = convert_taobao_ad(args.inputs, args.out, config, args.overwrite, progress=True)
    elif args.source == "userbehavior":
        from features.datasets.userbehavior import convert_userbehavior

        out = convert_userbehavior(args.inputs, args.out, config, args.overwrite, progress=True)
    elif args.source == "aliexpress":
        from features.datasets.aliexpress import convert_aliexpress

        test = args.test or ()
        out = convert_aliexpress(
            args.inputs, args.out, config, args.overwrite, True, args.vocabulary_from, test
        )
    elif args.source == "aliccp":
        from features.datasets.aliccp import convert_aliccp

        out = convert_aliccp(
            args.input, args.out, config, args.overwrite, True, valid=args.valid, test=args.test
        )
    else:
        out = _synthetic_run(args, config)
    if out is not None:
        print_dataset(out)


def _synthetic_run(args: argparse.Namespace, config: Any) -> Path | None:
    from features.datasets.synthetic import write_synthetic, write_synthetic_tsv

    if args.tsv:
        path = write_synthetic_tsv(args.out, config)
        print(
            f"wrote {config.rows:,} Criteo-format rows to {path} (true probabilities in {path}.teacher_p.npy)"
        )
        return None
    return write_synthetic(args.out, config, overwrite=args.overwrite)


def print_dataset(out: Path) -> None:
    """The rows per split of the dataset at `out` (and the conversion's rows/s)."""
    from features.dataset import dataset_info
    from rankers.metrics import markdown_table

    info = dataset_info(out)
    rows = [{"split": s, "rows": n} for s, n in info.get("rows", {}).items()]
    print(f"\nwrote {out}\n\n" + markdown_table(rows, ["split", "rows"]))
    if "rows_per_s" in info:
        print(f"\n{info['rows_per_s']:,.0f} rows/s")
