"""`rankers`: one entry point with subcommands.

rankers convert criteo train.txt --out data/criteo --min-count 10
rankers convert synthetic --out data/synth --rows 1000000
rankers convert taobao-ad data/alimama_raw/ --out data/taobao_ad
rankers convert userbehavior UserBehavior.csv --out data/userbehavior --negatives 1
rankers convert aliexpress NL/train.csv --test NL/test.csv --out data/aliexpress_nl
rankers convert aliccp train.csv --valid val.csv --test test.csv --out data/aliccp
rankers train --data data/criteo --out runs/mlp --backbone mlp --hidden-units 256,128
rankers train --data data/criteo --out runs/finalmlp --backbone finalmlp_criteo_x1 --epochs 3
rankers evaluate --checkpoint runs/mlp [--data data/criteo/test]
rankers predict --checkpoint runs/mlp --data data/new/test --out preds.parquet
rankers demo --out build/demo
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rankers._args import add_dataclass_flags, add_shared_flags, dataclass_from_args, flags_set, read_toml
from rankers._quiet import quiet_torchrec
from rankers.backbones import BACKBONES, PRESETS, backbone_class
from rankers.bidding.evaluate import AGENTS
from rankers.metrics import markdown_table

if TYPE_CHECKING:
    from rankers.ranker import RankerConfig

log = logging.getLogger("rankers")


def _convert_criteo(args: argparse.Namespace) -> None:
    from features.criteo import CriteoConfig, convert_criteo

    if args.vocabulary_from and args.split is None:
        args.split = (0.0, 0.0, 1.0)  # rows mapped with an existing vocabulary are new rows to score
    config = dataclass_from_args(CriteoConfig, args)
    out = convert_criteo(args.inputs, args.out, config, args.vocabulary_from, args.overwrite, progress=True)
    _print_dataset(out)


def _convert_taobao_ad(args: argparse.Namespace) -> None:
    from features.taobao import TaobaoAdConfig, convert_taobao_ad

    config = dataclass_from_args(TaobaoAdConfig, args)
    _print_dataset(convert_taobao_ad(args.inputs, args.out, config, args.overwrite, progress=True))


def _convert_userbehavior(args: argparse.Namespace) -> None:
    from features.userbehavior import UserBehaviorConfig, convert_userbehavior

    config = dataclass_from_args(UserBehaviorConfig, args)
    _print_dataset(convert_userbehavior(args.inputs, args.out, config, args.overwrite, progress=True))


def _convert_aliexpress(args: argparse.Namespace) -> None:
    from features.aliexpress import AliExpressConfig, convert_aliexpress

    config = dataclass_from_args(AliExpressConfig, args)
    out = convert_aliexpress(
        args.inputs, args.out, config, args.overwrite, True, args.vocabulary_from, args.test or ()
    )
    _print_dataset(out)


def _convert_aliccp(args: argparse.Namespace) -> None:
    from features.aliccp import AliCCPConfig, convert_aliccp

    config = dataclass_from_args(AliCCPConfig, args)
    _print_dataset(
        convert_aliccp(args.input, args.out, config, args.overwrite, True, valid=args.valid, test=args.test)
    )


def _convert_synthetic(args: argparse.Namespace) -> None:
    from features.synthetic import SyntheticConfig, write_synthetic, write_synthetic_tsv

    config = dataclass_from_args(SyntheticConfig, args)
    if args.tsv:
        path = write_synthetic_tsv(args.out, config)
        print(
            f"wrote {config.rows:,} Criteo-format rows to {path} (true probabilities in {path}.teacher_p.npy)"
        )
        return
    _print_dataset(write_synthetic(args.out, config, overwrite=args.overwrite))


def _print_dataset(out: Path) -> None:
    from features.dataset import dataset_info

    info = dataset_info(out)
    rows = [{"split": s, "rows": n} for s, n in info.get("rows", {}).items()]
    print(f"\nwrote {out}\n\n" + markdown_table(rows, ["split", "rows"]))
    if "rows_per_s" in info:
        print(f"\n{info['rows_per_s']:,.0f} rows/s")


def _ranker_config(args: argparse.Namespace, toml: dict[str, Any]) -> RankerConfig:
    """The model from flags over the TOML file's [ranker] and [backbone] tables (and over the preset,
    when the backbone names one). The file's [train] table is checked here too (the caller builds
    the TrainConfig from it after the preset's settings), so every mistake in the file names it."""
    from features.strict import check_fields, check_keys, check_value
    from rankers.ranker import RankerConfig
    from rankers.train import TrainConfig

    where = str(args.config)  # the tables are empty without a file
    types: dict[str, Any] = {"backbone": str, "embedding_dim": int, "embedding_l2": float}  # [ranker]'s
    types |= {"task_weights": dict[str, float], "tasks": tuple[str, ...], "sequence_lookup": str}
    table = check_keys(toml.get("ranker", {}), f"{where} [ranker]", optional=types)
    ranker = {k: check_value(v, types[k], f"{where} [ranker] {k}") for k, v in table.items()}
    check_fields(TrainConfig, toml.get("train", {}), f"{where} [train]")
    name = args.backbone or ranker.get("backbone", "mlp")
    try:
        cls = backbone_class(name)  # raises naming the known backbones and presets
    except ValueError as e:  # --backbone is one of argparse's choices: the name is the file's
        raise ValueError(f"{where} [ranker] backbone: {e}") from None
    chosen = flags_set(cls.config_class, args, toml.get("backbone", {}), f"{where} [backbone]")
    others = {k for c in BACKBONES.values() for k in flags_set(c.config_class, args) if k not in chosen}
    if others:
        raise ValueError(
            f"flags {sorted('--' + k.replace('_', '-') for k in others)} do not apply to {name!r}"
        )
    dim = args.embedding_dim if args.embedding_dim is not None else ranker.get("embedding_dim")
    l2 = args.embedding_l2 if args.embedding_l2 is not None else ranker.get("embedding_l2")
    tasks = args.tasks.split(",") if args.tasks else ranker.get("tasks", ())
    return RankerConfig(
        backbone=name,
        embedding_dim=dim,
        backbone_config=chosen,
        task_weights=tuple(ranker.get("task_weights", {}).items()),
        embedding_l2=l2,
        sequence_lookup=args.sequence_lookup or ranker.get("sequence_lookup", ""),
        tasks=tuple(str(t) for t in tasks),
    )


def _launch(args: argparse.Namespace) -> None:
    """Runs this same command under torchrun with `--nproc` processes on this machine."""
    import os
    import subprocess

    argv, skip = [], False  # without --nproc (torchrun's own parser would take it)
    for a in args.argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        argv.append(a)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
    ]
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # oversubscribed threads made steps 30x slower here
    code = subprocess.run([*command, "-m", "rankers", *argv], env=env, check=False).returncode
    if code:
        raise ValueError(f"torchrun with {args.nproc} processes exited with code {code}")


# What `train --resume DIR` takes beside the run's own settings: more epochs in all (to continue
# a finished run), progress bars, threads, and the number of processes.
RESUME_FLAGS = ("epochs", "progress", "threads")
_RESUME_ARGS = {
    "--resume",
    "--nproc",
    "--epochs",
    "--progress",
    "--no-progress",
    "--threads",
    "--verbose",
    "--debug",
}


def _resume(args: argparse.Namespace) -> None:
    """Continues the run of checkpoint directory `args.resume` with the settings it was started with
    (its unfinished run beside it, or the complete checkpoint when `--epochs` asks for more); says
    so and trains nothing when the run is finished."""
    from dataclasses import replace

    from rankers.checkpoint import CheckpointDir, finished, resume_dir
    from rankers.distributed import is_main
    from rankers.train import train

    done = finished(args.resume, args.epochs)
    if done is not None:
        if os.environ.get("RANK", "0") == "0":
            print(done)
        return
    saved = CheckpointDir(resume_dir(args.resume)).settings()
    # RESUME_FLAGS are kept in the run's config.json, so a later --resume keeps them
    given = {name: getattr(args, name) for name in RESUME_FLAGS if getattr(args, name) is not None}
    result = train(saved.data, args.resume, saved.ranker, replace(saved.train, **given), resume=True)
    if is_main():
        print(f"\ncheckpoint: {args.resume} (best epoch {result['best_epoch']})\n")
        print(results_table(result, saved.ranker.preset or saved.ranker.backbone))


def _train(args: argparse.Namespace) -> None:
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        _launch(args)
        return
    if "LOCAL_RANK" not in os.environ:
        _train_here(args)
        return
    import faulthandler

    import torch.distributed as dist

    faulthandler.enable()  # a rank that aborts in native code prints where Python was
    try:
        _train_here(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # On a loaded machine a rank sometimes aborted after its work was done, during interpreter
    # shutdown ("terminate called without an active exception", no Python frame left: a native
    # thread's static destructor). Everything is written and renamed by now: leave without them.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train_here(args: argparse.Namespace) -> None:
    """`train` in this process (one of torchrun's ranks, or the only process)."""
    from rankers.distributed import is_main
    from rankers.train import TrainConfig, train

    if args.resume:
        others = [a for a in args.argv if a.startswith("--") and a.split("=")[0] not in _RESUME_ARGS]
        if others:
            raise ValueError(
                f"--resume DIR continues with the run's own data and settings; drop {' '.join(others)} "
                f"(it takes {', '.join(sorted(_RESUME_ARGS))})"
            )
        _resume(args)
        return
    if not args.data or not args.out:
        raise ValueError("train: --data and --out are required (or --resume DIR)")
    toml = read_toml(args.config)
    ranker_config = _ranker_config(args, toml)
    base = dict(toml.get("train", {}))
    if ranker_config.preset:
        preset = PRESETS[ranker_config.preset]()
        base = dict(preset.train) | base
        log.info(
            "preset %s: %s with %s; published test AUC %.6f, LogLoss %.6f (data: %s)",
            ranker_config.preset,
            preset.backbone,
            ", ".join(f"{k}={v}" for k, v in preset.train),
            preset.published["auc"],
            preset.published["logloss"],
            preset.data,
        )
    config = dataclass_from_args(TrainConfig, args, base)
    result = train(args.data, args.out, ranker_config, config, overwrite=args.overwrite)
    if is_main():
        print(f"\ncheckpoint: {args.out} (best epoch {result['best_epoch']})\n")
        print(results_table(result, ranker_config.preset or ranker_config.backbone))


def results_table(result: dict[str, Any], model: str, splits: tuple[str, ...] = ("valid", "test")) -> str:
    """AUC/LogLoss (and gAUC where the data names users) per split and task, with the constant prior
    and (synthetic data) the teacher."""
    rows = []
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
            teacher = result.get("teacher", {}).get(split)
            if teacher and "tasks" in teacher:  # a funnel: the teacher's figures per task
                teacher = teacher["tasks"].get(task)
            if teacher:
                rows.append(
                    {
                        "model": "teacher (best achievable)",
                        "split": split,
                        "task": task,
                        "AUC": teacher["auc"],
                        "LogLoss": teacher["logloss"],
                    }
                )
                if m["auc"] is not None and teacher["auc"] and teacher["auc"] != 0.5:
                    rows[-3]["lift vs teacher"] = (m["auc"] - 0.5) / (teacher["auc"] - 0.5)
    columns = ["model", "split", "task", "AUC", *(["gAUC"] if grouped else []), "LogLoss", "lift vs teacher"]
    return markdown_table(rows, columns)


def _probabilities(predictor: Any, raw: bool) -> str:
    """What the probabilities are: calibrated by the checkpoint's calibration, or the model's own."""
    if predictor.calibration is None:
        return "the model's own probabilities (the checkpoint holds no calibration)"
    if raw:
        return "the model's own probabilities (--raw; the checkpoint's calibration is not applied)"
    maps = ", ".join(f"{t} {c.method}" for t, c in predictor.calibration.tasks.items())
    where = predictor.path / "calibration.json"
    return f"probabilities calibrated by {where} ({maps}; --raw for the model's own)"


def _evaluate(args: argparse.Namespace) -> None:
    from features.dataset import dataset_info
    from rankers.checkpoint import CheckpointDir
    from rankers.predictor import Predictor

    predictor = Predictor.load(args.checkpoint)
    data = Path(args.data) if args.data else Path(CheckpointDir(args.checkpoint).settings().data) / "test"
    split = data.name if data.name in ("train", "valid", "test") else "rows"
    result: dict[str, Any] = {split: predictor.evaluate(data, raw=args.raw)}
    teacher = dataset_info(data.parent).get("teacher", {})
    if teacher.get(data.name):
        result["teacher"] = {split: teacher[data.name]}
    print(
        f"{data}: {_probabilities(predictor, args.raw)}\n\n"
        + results_table(result, "checkpoint", splits=(split,))
    )


def _predict(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.outputs import PREDICTIONS_KEY, StagedOutput, check_apart
    from rankers.predictor import Predictor

    check_apart(args.out, [args.checkpoint, args.data])  # before anything else is said of --out
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; expected the parquet file to write")
    with StagedOutput(args.out, "predictions", args.overwrite, inputs=[args.checkpoint, args.data]) as out:
        predictor = Predictor.load(args.checkpoint)
        probs = predictor.predict_proba(args.data, raw=args.raw)
        meta = {
            PREDICTIONS_KEY: b"predictions",
            b"rankers.checkpoint": str(Path(args.checkpoint).absolute()).encode(),
            b"rankers.calibrated": b"true" if predictor.calibrated and not args.raw else b"false",
        }
        table = pa.table({f"p_{t}": p for t, p in probs.items()}).replace_schema_metadata(meta)
        try:
            pq.write_table(table, out.staging)
        except OSError as e:  # pyarrow's errors name no file
            raise OSError(e.errno, e.strerror or str(e), str(out.final)) from None
        out.commit()
    print(
        f"wrote {table.num_rows:,} predictions ({', '.join(table.column_names)}) to {args.out}: "
        + _probabilities(predictor, args.raw)
    )


def _calibrate(args: argparse.Namespace) -> None:
    from features.outputs import OutputLock, check_apart
    from rankers.bidding.calibration import calibrate, plot_reliability, report_markdown
    from rankers.checkpoint import CheckpointDir
    from rankers.predictor import Predictor

    out = Path(args.checkpoint)
    # One writer: not while a run replaces this checkpoint (the map would fit the old weights), nor
    # beside a second calibrate; held from before the model is loaded until the files are saved.
    lock = OutputLock(out)
    try:
        predictor = Predictor.load(out)
        data = Path(CheckpointDir(out).settings().data)
        valid = Path(args.valid) if args.valid else data / "valid"
        test = Path(args.test) if args.test else (data / "test" if (data / "test").is_dir() else None)
        check_apart(out, [valid, test], flag="--checkpoint")  # it writes into the checkpoint
        # `rankers demo` passes only the fields above; the check's options keep calibrate's defaults
        check = ("folds", "min_positives", "min_negatives", "force")
        options = {k: getattr(args, k) for k in check if hasattr(args, k)}
        # a refused calibration raises here, before anything is written into the checkpoint
        calibration, report = calibrate(predictor, valid, test, args.method, args.bins, **options)
        calibration.save(out)
        text = report_markdown(report)
        (out / "calibration.md").write_text(text)
        plot = plot_reliability(report, out / "calibration.png")
        if plot is None:
            (out / "calibration.png").unlink(missing_ok=True)  # an older map's diagram
    finally:
        lock.release()
    saved = [out / "calibration.json", out / "calibration.md", *([plot] if plot else [])]
    print(text + "\nsaved " + ", ".join(map(str, saved)))


def _bid(args: argparse.Namespace) -> None:
    import numpy as np

    from rankers.bidding import evaluate as ev
    from rankers.bidding.ipinyou import campaign_names, describe_campaigns, load_campaign
    from rankers.bidding.replay import describe_run, outcome_columns

    # Callers that predate some flags (`_demo`) get the parser's defaults for them.
    args = argparse.Namespace(**vars(build_parser().parse_args(["bid", "--data", args.data])) | vars(args))
    flags = {f: getattr(args, f[2:].replace("-", "_")) for f in ev.BID_FLAGS}
    ev.check_bid_flags(flags, getattr(args, "argv", ()), predictor=bool(args.predictor))
    agents = ev.select_agents(args.agent, args.cpa, args.roas, args.value, args.auction)
    goal, length, data = args.goal or "click", args.episode_length or 1000, Path(args.data)
    sources: list[tuple[str, list, float]] = []  # (name, episodes, budget per episode)
    if args.predictor:
        from rankers.predictor import Predictor

        given = {"median": args.market_median, "sigma": args.market_sigma, "corr": args.market_corr}
        given["seed"] = args.market_seed
        market = ev.MarketModel(**{k: v for k, v in given.items() if v is not None})
        episodes = ev.split_episodes(Predictor.load(args.predictor), data, goal, length, market)
        mean_price = float(np.mean([e.prices.mean() for e in ev.halves(data.name, episodes)[0]]))
        sources.append((data.name, episodes, args.budget * mean_price * length))
        about = ev.describe_split(data, args.predictor, goal, market)
    else:
        names = args.campaign.split(",") if args.campaign else campaign_names(data)
        for name in names:
            campaign = load_campaign(data, name)
            sources.append((name, campaign.episodes, campaign.budget(args.budget)))
        about = describe_campaigns(data, names)
    rows = []
    for name, episodes, budget in sources:
        train, test = ev.halves(name, episodes)
        rs = ev.compare_agents(
            train, test, budget, agents, args.cpa, args.auction, args.cap, 48, args.value, args.roas
        )
        rows += [{"data": name, "budget": budget, "test_episodes": len(test), **r} for r in rs]
    shown = outcome_columns(goal, args.value is not None, args.roas is not None, args.cpa is not None)
    labels = {"data": "data", "budget": "budget per episode", "test_episodes": "test episodes"}
    labels |= {"agent": "agent"} | shown
    run = describe_run(goal, args.auction, args.budget, [(n, e) for n, e, _ in sources])
    print(f"{about}\n{run}\n")
    print(markdown_table([{labels.get(k, k): v for k, v in r.items()} for r in rows], list(labels.values())))


def _demo(args: argparse.Namespace) -> None:
    from features.synthetic import SyntheticConfig, write_synthetic
    from rankers.ranker import RankerConfig
    from rankers.train import TrainConfig, train

    out = Path(args.out)
    data = out / "synthetic"
    print(f"1/4 synthetic Criteo-shaped data from a known teacher -> {data}")
    write_synthetic(data, SyntheticConfig(rows=args.rows, min_count=10), overwrite=args.overwrite)
    print(f"2/4 training the MLP baseline -> {out / 'mlp'}")
    ranker_config = RankerConfig(backbone="mlp", embedding_dim=16)
    config = TrainConfig(epochs=3, batch_size=1024, embedding_lr=0.02)
    result = train(data, out / "mlp", ranker_config, config, overwrite=args.overwrite)
    print("3/4 evaluation (test rows never seen in training or early stopping)\n")
    print(results_table(result, "mlp"))
    print("\n4/4 calibration on the valid split, then a bidding replay on the test split\n")
    _calibrate(argparse.Namespace(checkpoint=str(out / "mlp"), valid=None, test=None, method="auto", bins=20))
    bid: dict[str, Any] = {"data": str(data / "test"), "predictor": str(out / "mlp"), "agent": "all"}
    bid |= {"budget": 1 / 8, "auction": "second_price", "goal": "click", "cap": float("inf")}
    length = max(20, min(1000, args.rows // 10 // 20))  # the test split (10%) as 20 or more episodes
    _bid(argparse.Namespace(**bid, campaign=None, cpa=None, value=None, episode_length=length))


def _add_converter(convert: Any, name: str, help_: str, config: type, func: Any) -> argparse.ArgumentParser:
    """`rankers convert NAME`: --out, --overwrite and a flag per field of `config`; the caller adds
    the inputs."""
    p = convert.add_parser(name, help=help_)
    p.add_argument("--out", required=True, help="dataset directory to create (a TSV file with --tsv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    add_dataclass_flags(p, config)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from features.aliccp import AliCCPConfig
    from features.aliexpress import AliExpressConfig
    from features.criteo import CriteoConfig
    from features.synthetic import SyntheticConfig
    from features.taobao import TaobaoAdConfig
    from features.userbehavior import UserBehaviorConfig
    from rankers.train import TrainConfig

    parser = argparse.ArgumentParser(prog="rankers", description="CTR/CVR ranking on TorchRec embeddings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, print the full traceback instead of one line (also RANKERS_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="raw logs -> parquet dataset").add_subparsers(
        dest="source", required=True
    )
    p = _add_converter(convert, "criteo", "Criteo TSV/CSV -> parquet", CriteoConfig, _convert_criteo)
    p.add_argument("inputs", nargs="+", help="Criteo files (TSV without header, or CSV/TSV with one)")
    p.add_argument("--vocabulary-from", help="map with this dataset's vocabularies (new rows to score)")

    help_ = "Alimama display ads (raw tables, joined or dmr CSV) -> parquet"
    p = _add_converter(convert, "taobao-ad", help_, TaobaoAdConfig, _convert_taobao_ad)
    p.add_argument("inputs", nargs="+", help="a directory with the four raw tables, or joined/dmr CSV files")

    help_ = "Taobao UserBehavior CSV -> examples with histories"
    p = _add_converter(convert, "userbehavior", help_, UserBehaviorConfig, _convert_userbehavior)
    p.add_argument("inputs", nargs="+", help="UserBehavior CSV files (no header), grouped by user")

    help_ = "AliExpress click/conversion CSV -> parquet"
    p = _add_converter(convert, "aliexpress", help_, AliExpressConfig, _convert_aliexpress)
    p.add_argument("inputs", nargs="*", help="train CSV files (train + valid_fraction valid)")
    p.add_argument("--test", nargs="+", help="CSV files of the test split (mapped with the train vocabulary)")
    p.add_argument("--vocabulary-from", help="map with this dataset's vocabularies (inputs may be omitted)")

    help_ = "Ali-CCP (label-encoded CSV or the raw release) -> parquet"
    p = _add_converter(convert, "aliccp", help_, AliCCPConfig, _convert_aliccp)
    p.add_argument("input", help="encoded: the train CSV; raw: the directory of the release's files")
    p.add_argument("--valid", help="encoded: CSV of the valid split (default: valid_fraction of train)")
    p.add_argument("--test", help="encoded: CSV of the test split")

    help_ = "teacher-generated Criteo-shaped data"
    p = _add_converter(convert, "synthetic", help_, SyntheticConfig, _convert_synthetic)
    p.add_argument("--tsv", action="store_true", help="write Criteo-format TSV to --out instead of parquet")

    p = sub.add_parser("train", help="train a ranker on a dataset's train split")
    p.add_argument("--data", help="dataset directory with train/ (valid/, test/ optional)")
    p.add_argument("--out", help="checkpoint directory")
    p.add_argument("--resume", help="continue this checkpoint directory's run (see --checkpoint-every)")
    p.add_argument(
        "--backbone",
        choices=sorted(BACKBONES) + sorted(PRESETS),
        help="a backbone, or a preset (its model and training settings; flags override them); default mlp",
    )
    p.add_argument("--embedding-dim", type=int, help="default 16 (or the preset's)")
    p.add_argument(
        "--embedding-l2",
        type=float,
        help="L2 on the looked-up embedding vectors; default 0 (or the preset's)",
    )
    p.add_argument("--tasks", help="comma-separated tasks to train (default: all the dataset's labels)")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes on this machine (launched through torchrun; --batch-size is the global batch)",
    )
    p.add_argument(
        "--sequence-lookup",
        choices=["bag", "collection"],
        help="how sequences are looked up: bag (default on CPU, faster there) or collection (default on GPU)",
    )
    p.add_argument("--config", help="TOML file with [train], [ranker] and [backbone] tables; flags override")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint directory at --out"
    )
    train_helps = {
        "monitor": "task whose validation score selects the epoch (one of the dataset's tasks, e.g. ctr, "
        "cvr, ctcvr); default: the model's first task",
        "monitor_metric": "validation score that selects the epoch: auc-logloss (AUC minus LogLoss), "
        "auc, or logloss (the one to use when validation has one class); default auc-logloss",
        "lr_decay": "on an epoch without a better validation score, go back to the best weights and "
        "multiply both learning rates by this, in (0, 1] (1: neither); default 0.1",
        "patience": "stop after this many epochs without a better validation score (0: never); default 2",
    }
    add_dataclass_flags(p, TrainConfig, helps=train_helps)
    add_shared_flags(p, {name: cls.config_class for name, cls in BACKBONES.items()})
    p.set_defaults(func=_train)

    raw_help = (
        "score with the model's own probabilities, not the checkpoint's calibration (default: calibrated)"
    )
    p = sub.add_parser("evaluate", help="AUC/LogLoss of a checkpoint on labeled rows")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    p.add_argument("--data", help="split directory or parquet file (default: the training data's test split)")
    p.add_argument("--raw", action="store_true", help=raw_help)
    p.set_defaults(func=_evaluate)

    from rankers.bidding.calibration import FOLDS, MIN_NEGATIVES, MIN_POSITIVES

    p = sub.add_parser(
        "calibrate",
        help="fit isotonic or Platt calibration, checked by cross-validation; saved in the checkpoint",
        description="Fits a calibration map per task on the valid split and saves it in the checkpoint "
        "(calibration.json, with calibration.md and a PNG), unless a task's map makes held-out ECE "
        "worse or was fitted on too few positive or negative rows: then it exits 2 and writes nothing.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to calibrate (and save into)")
    p.add_argument("--valid", help="labeled rows to fit on (default: the training data's valid split)")
    p.add_argument("--test", help="labeled rows to measure ECE on (default: the training data's test split)")
    p.add_argument(
        "--method",
        choices=["auto", "isotonic", "platt", "identity"],
        default="auto",
        help="auto (per task, whichever of isotonic and platt lowers the held-out ECE most, else the "
        "model's own probabilities), isotonic (a monotone step map, for a few thousand rows or more), "
        "platt (a logistic map of the logit: two parameters, steadier on small splits) or identity (the "
        "model's own probabilities, kept off 0 and 1, with their sigma) (default: %(default)s)",
    )
    p.add_argument(
        "--bins",
        type=int,
        default=20,
        metavar="N",
        help="calibration bins that give each value's sigma (default: %(default)s)",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        default=FOLDS,
        help="K of the K-fold check: each fold calibrated by a map fitted on the others, for held-out ECE; "
        "2 or more, fewer used where a class has fewer rows (default: %(default)s)",
    )
    p.add_argument(
        "--min-positives",
        type=int,
        metavar="N",
        default=MIN_POSITIVES,
        help="refuse a task whose valid rows hold fewer positives (cvr: clicked rows that converted) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--min-negatives",
        type=int,
        metavar="N",
        default=MIN_NEGATIVES,
        help="refuse a task whose valid rows hold fewer negatives (default: %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="save even when a task fails the check (too few rows, worse held-out ECE); the report says "
        "forced (default: refuse)",
    )
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("bid", help="bidding agents replayed on logged auctions: the outcome table")
    p.add_argument(
        "--data", required=True, help="iPinYou campaigns directory, or a labeled split with --predictor"
    )
    p.add_argument("--predictor", help="checkpoint (calibrated) whose values bid on the rows of --data")
    p.add_argument("--campaign", help="iPinYou campaigns, comma-separated (default: all in --data)")
    p.add_argument(
        "--agent",
        default="all",
        help=f"comma-separated of {', '.join(AGENTS)}, or all (those whose flags are given: cpa needs "
        "--cpa, roas --roas and --value, shading --auction first_price)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=1 / 8,
        help="budget per episode, as a share of what buying all its traffic would cost (> 0); default 0.125",
    )
    p.add_argument(
        "--cpa", type=float, help="target cost per conversion (click): agent cpa, AuctionNet score"
    )
    p.add_argument("--roas", type=float, help="target value won per unit spent (agent roas; needs --value)")
    p.add_argument(
        "--auction",
        choices=["second_price", "first_price"],
        default="second_price",
        help="a win pays the market price (second_price) or the bid (first_price); default second_price",
    )
    p.add_argument(
        "--goal",
        choices=["click", "conversion"],
        help="with --predictor: the value bid on, P(click) or P(conversion) (ctcvr, or ctr x cvr); "
        "default click",
    )
    p.add_argument("--episode-length", type=int, help="rows per episode, with --predictor; default 1000")
    p.add_argument("--cap", type=float, default=float("inf"), help="highest bid (> 0); default no cap")
    p.add_argument("--value", type=float, help="money per conversion (click): ROI, and agent roas")
    from rankers.bidding.evaluate import MarketModel

    m, market = MarketModel(), "with --predictor, the log-normal market model's"
    p.add_argument(
        "--market-median",
        type=float,
        help=f"{market} median price per impression (> 0); default {m.median:g}",
    )
    p.add_argument(
        "--market-sigma", type=float, help=f"{market} spread of the log price (>= 0); default {m.sigma:g}"
    )
    p.add_argument(
        "--market-corr",
        type=float,
        help=f"{market} correlation with true value, in [-1, 1]; default {m.corr:g}",
    )
    p.add_argument("--market-seed", type=int, help=f"{market} noise seed (>= 0); default {m.seed}")
    p.set_defaults(func=_bid)

    p = sub.add_parser("predict", help="probabilities per task for new rows")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by `rankers train`")
    p.add_argument("--data", required=True, help="split directory or parquet file")
    p.add_argument("--out", required=True, help="parquet file to write (one column p_<task> per task)")
    p.add_argument("--raw", action="store_true", help=raw_help)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing predictions file at --out (default: refuse)",
    )
    p.set_defaults(func=_predict)

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> calibrate -> bidding replay")
    p.add_argument("--out", default="build/demo")
    p.add_argument("--rows", type=int, default=250_000, help="rows in all (80%% train)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    # Epoch summaries (rankers.train logs them at INFO) and warnings (a converter's empty split,
    # an over-confident selected epoch) are part of the CLI's output, on stderr beside the bars.
    handler = logging.StreamHandler()
    handler.setFormatter(_Format("%(message)s"))
    loggers = [logging.getLogger("rankers"), logging.getLogger("features")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
            logger.setLevel(logging.WARNING)
    debug = args.debug or os.environ.get("RANKERS_DEBUG", "") not in ("", "0")
    try:
        with quiet_torchrec():
            args.func(args)
    except (ValueError, OSError) as e:  # the user's input or the machine: one line, exit 2
        if debug:
            raise
        print(f"rankers: error: {fault_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rankers: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line, with the way to the traceback
        if debug:
            raise
        print(
            f"rankers: internal error: {type(e).__name__}: {fault_line(e)} (rerun with --debug or "
            "RANKERS_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return 0


class _Format(logging.Formatter):
    """The message alone; a warning says that it is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def fault_line(e: BaseException) -> str:
    """One line for an error: an OS error as its path and cause (a full disk said as such)."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or "rankers"
        cause = e.strerror[0].lower() + e.strerror[1:]
        if e.errno == errno.ENOSPC:
            cause = "no space left on device (the disk is full)"
        elif e.errno in (errno.EACCES, errno.EPERM):
            cause = "permission denied (the path is not writable or readable by this user)"
        elif e.errno == errno.EROFS:
            cause = "read-only file system"
        return f"{where}: {cause}"
    text = " ".join(str(e).split())  # messages of other libraries may span lines
    return text or type(e).__name__
