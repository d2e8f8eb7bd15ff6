"""`rankers train`: a ranker trained on a dataset's train split (or `--resume DIR`), with a flag
per field of RankerConfig, TrainConfig and the chosen backbone's config (`--backbone NAME --help`
lists that backbone's), and a TOML file (`--config`) with the same fields as tables."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rankers._args import add_dataclass_flags, flags_set, read_toml

if TYPE_CHECKING:
    from rankers.config import RankerConfig, TrainConfig

log = logging.getLogger("rankers")
HELP = "train a ranker on a dataset's train split"
# What `train --resume DIR` takes beside the run's own settings: more epochs in all (to continue
# a finished run), progress bars, threads, the device, and the processes and machines.
RESUME_FLAGS = ("epochs", "progress", "threads", "device")
RESUME_ARGS = {
    "--resume",
    "--nproc",
    "--nnodes",
    "--rdzv-endpoint",
    "--rdzv-id",
    "--device",
    "--epochs",
    "--progress",
    "--no-progress",
    "--threads",
    "--verbose",
    "--debug",
}
RANKER_SKIP = ("backbone_config", "preset")  # RankerConfig fields without a flag or a [ranker] key


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value given to `flag` in `argv` (as `--flag V` or `--flag=V`), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a[len(flag) + 1 :]
    return value


def configure(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """The run's flags, RankerConfig's and TrainConfig's; the flags of the backbone `--backbone`
    names in `argv` are listed, every other backbone's are parsed but not listed."""
    from rankers.config import (
        EMBEDDING_OPTIMIZERS,
        MONITOR_METRICS,
        PRECISIONS,
        SEQUENCE_LOOKUPS,
        SHARDING_TYPES,
        RankerConfig,
        TrainConfig,
        backbone_configs,
        preset,
        presets,
    )

    configs, names = backbone_configs(), sorted(backbone_configs()) + sorted(presets())
    p.add_argument("--data", help="dataset directory with train/ (valid/, test/ optional)")
    p.add_argument("--out", help="checkpoint directory to write")
    p.add_argument("--resume", help="continue this checkpoint directory's run (see --checkpoint-every)")
    p.add_argument("--config", help="TOML file with [train], [ranker] and [backbone] tables; flags override")
    help_ = "replace an existing checkpoint directory at --out (default: refuse)"
    p.add_argument("--overwrite", action="store_true", help=help_)
    help_ = "processes on this machine, >= 1 (launched through torchrun; --batch-size is the global batch)"
    p.add_argument("--nproc", type=int, default=1, help=help_ + " (default: %(default)s)")
    help_ = (
        "machines taking part, >= 1, each running this same command with --nproc processes; they "
        "meet at --rdzv-endpoint and must see --data and --out at the same path"
    )
    p.add_argument("--nnodes", type=int, default=1, help=help_ + " (default: %(default)s)")
    help_ = "HOST:PORT of one of the machines, where torchrun's rendezvous meets (needed with --nnodes > 1)"
    p.add_argument("--rdzv-endpoint", default="", help=help_)
    help_ = "an id shared by the machines of one run (default: %(default)s)"
    p.add_argument("--rdzv-id", default="rankers", help=help_)
    chosen = _flag_value(argv or (), "--backbone")
    given = preset(chosen) if chosen in presets() else None
    backbone = given.backbone if given else chosen if chosen in configs else None
    ranker_defaults: dict[str, Any] = {"backbone": "mlp"}
    if given:
        ranker_defaults |= {"embedding_dim": given.embedding_dim, "embedding_l2": given.embedding_l2}
    choices = {"backbone": names, "sequence_lookup": SEQUENCE_LOOKUPS}
    title = "model (RankerConfig; TOML table [ranker])"
    add_dataclass_flags(p, RankerConfig, RANKER_SKIP, choices=choices, defaults=ranker_defaults, title=title)
    choices = {
        "monitor_metric": MONITOR_METRICS,
        "precision": PRECISIONS,
        "sharding": SHARDING_TYPES,
        "embedding_optimizer": EMBEDDING_OPTIMIZERS,
    }
    defaults = dict(given.train) if given else {}
    add_dataclass_flags(p, TrainConfig, choices=choices, defaults=defaults, title="training (TOML [train])")
    _backbone_flags(p, chosen, backbone, given)
    listed = f"the flags of {chosen} are below" if backbone else "`--backbone NAME --help` lists its flags"
    p.description = (
        f"Trains a backbone (one of {', '.join(sorted(configs))}) or a preset (a published model with "
        f"its training settings: {', '.join(sorted(presets()))}) on a dataset; {listed}."
    )


def _backbone_flags(p: argparse.ArgumentParser, chosen: str | None, backbone: str | None, given: Any) -> None:
    """The flags of `backbone` (from `chosen`, the preset `given` or a backbone; its defaults shown),
    listed; every other backbone's flags, parsed (and refused in `configs`) but not listed."""
    from rankers.config import backbone_configs

    configs, seen = backbone_configs(), set()
    if backbone is not None:
        defaults = dataclasses.asdict(given.config) if given else {}
        title = f"backbone {chosen} ({configs[backbone].__name__}; TOML table [backbone])"
        add_dataclass_flags(p, configs[backbone], defaults=defaults, title=title)
        seen = {f.name for f in dataclasses.fields(configs[backbone])}
    for cls in configs.values():
        add_dataclass_flags(p, cls, skip=tuple(seen), hidden=True)
        seen |= {f.name for f in dataclasses.fields(cls)}


def run(args: argparse.Namespace) -> None:
    from rankers.cli.launch import as_rank, relaunch

    if args.nproc < 1:
        raise ValueError(f"--nproc {args.nproc}: expected an integer >= 1 (processes on this machine)")
    if args.nnodes < 1:
        raise ValueError(f"--nnodes {args.nnodes}: expected an integer >= 1 (machines taking part)")
    if (args.nproc > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        relaunch(args.argv, args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    elif "LOCAL_RANK" not in os.environ:
        _here(args)
    else:
        as_rank(lambda: _here(args))


def run_configs(args: argparse.Namespace, toml: dict[str, Any]) -> tuple[RankerConfig, TrainConfig]:
    """The run's configs: flags over the TOML file's tables over the preset's settings (when the
    backbone names one). Every mistake in the file names it, its table and key."""
    from features.strict import check_keys
    from rankers.config import RankerConfig, TrainConfig, backbone_configs, config_class, resolve

    where = str(args.config)  # the tables are empty without a file
    known = [f.name for f in dataclasses.fields(RankerConfig) if f.name not in RANKER_SKIP]
    table = check_keys(toml.get("ranker", {}), f"{where} [ranker]", optional=known)
    ranker = flags_set(RankerConfig, args, table, f"{where} [ranker]")
    train = flags_set(TrainConfig, args, toml.get("train", {}), f"{where} [train]")
    name = ranker.pop("backbone", "mlp")
    try:
        cls = config_class(name)  # raises naming the known backbones and presets
    except ValueError as e:  # --backbone is one of argparse's choices: the name is the file's
        raise ValueError(f"{where} [ranker] backbone: {e}") from None
    chosen = flags_set(cls, args, toml.get("backbone", {}), f"{where} [backbone]")
    others = {k for c in backbone_configs().values() for k in flags_set(c, args) if k not in chosen}
    if others:
        raise ValueError(
            f"flags {sorted('--' + k.replace('_', '-') for k in others)} do not apply to {name!r}"
        )
    return resolve(name, ranker | {"backbone_config": chosen}, train)


def _here(args: argparse.Namespace) -> None:
    """`train` in this process (one of torchrun's ranks, or the only process)."""
    from rankers.config import preset
    from rankers.train import train

    if args.resume:
        others = [a for a in args.argv if a.startswith("--") and a.split("=")[0] not in RESUME_ARGS]
        if others:
            raise ValueError(
                f"--resume DIR continues with the run's own data and settings; drop {' '.join(others)} "
                f"(it takes {', '.join(sorted(RESUME_ARGS))})"
            )
        _resume(args)
        return
    if not args.data or not args.out:
        raise ValueError("train: --data and --out are required (or --resume DIR)")
    ranker_config, config = run_configs(args, read_toml(args.config))
    if ranker_config.preset:
        p = preset(ranker_config.preset)
        log.info(
            "preset %s: %s with %s; published test AUC %.6f, LogLoss %.6f (data: %s)",
            ranker_config.preset,
            p.backbone,
            ", ".join(f"{k}={v}" for k, v in p.train),
            p.published["auc"],
            p.published["logloss"],
            p.data,
        )
    result = train(args.data, args.out, ranker_config, config, overwrite=args.overwrite)
    _report(args.out, result, ranker_config)


def _report(out: str, result: dict[str, Any], ranker: RankerConfig) -> None:
    from rankers.distributed import is_main
    from rankers.results import results_table

    if is_main():
        print(f"\ncheckpoint: {out} (best epoch {result['best_epoch']})\n")
        print(results_table(result, ranker.preset or ranker.backbone))


def _resume(args: argparse.Namespace) -> None:
    """Continues the run of checkpoint directory `args.resume` with the settings it was started with
    (its unfinished run beside it, or the complete checkpoint when `--epochs` asks for more); says
    so and trains nothing when the run is finished."""
    from rankers.checkpoint import CheckpointDir
    from rankers.staging import finished, resume_dir
    from rankers.train import train

    done = finished(args.resume, args.epochs)
    if done is not None:
        if os.environ.get("RANK", "0") == "0":
            print(done)
        return
    saved = CheckpointDir(resume_dir(args.resume)).settings()
    # RESUME_FLAGS are kept in the run's config.json, so a later --resume keeps them
    given = {name: getattr(args, name) for name in RESUME_FLAGS if getattr(args, name) is not None}
    result = train(
        saved.data, args.resume, saved.ranker, dataclasses.replace(saved.train, **given), resume=True
    )
    _report(args.resume, result, saved.ranker)
