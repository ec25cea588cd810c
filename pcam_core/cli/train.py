"""`pcam train`: flags over a config, into a run folder (`pcam_core.train.fit`), with progress."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import (
    COMBINES,
    DEFAULT_COMBINE,
    DATA_FORMATS,
    DEVICES,
    KEEPS,
    MONITORS,
    OPTIMIZERS,
    SCHEDULES,
    AugmentConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
)
from ..runs import RunDir
from ..tracking import INSTALL_HINT, resolve_uri
from .common import WORKERS_HELP, default, fmt, progress_bar

# flags that `--resume` honours; every other flag given with it is refused (the run keeps its saved config)
_RESUMABLE_DESTS = ("out", "resume", "epochs", "config", "func", "help", "combine", "parallel_folds")


def add(sub: argparse._SubParsersAction) -> None:
    D, A, M, T, K = DataConfig(), AugmentConfig(), ModelConfig(), TrainConfig(), TrackingConfig()
    p = sub.add_parser("train", help="train a model into a run folder", description=(
        "Train a model. Flags override --config; anything not given takes the defaults (the CPU recipe: "
        f"the compact pcamnet, {T.epochs} epochs, AdamW with a one-cycle schedule, weight averaging, symmetry, "
        "stain and colour augmentation). Under torchrun this runs DistributedDataParallel. With --resume "
        "the run continues with its saved config; only --epochs may change it (to extend or shorten the "
        "run: the learning-rate schedule is then rebuilt for the new total and continued at the step reached)."))
    p.add_argument("--data", help="PCam HDF5 folder or Kaggle folder (required unless --config or --resume gives it)")
    p.add_argument("--out", required=True, help="run folder to create (or to continue, with --resume)")
    p.add_argument("--config", help="experiment config JSON (as written to a run's config.json)")
    p.add_argument("--format", choices=DATA_FORMATS, help="data layout " + default(D.format))
    p.add_argument("--model", help="model name (see `pcam models`); 'auto' = pcamnet on CPU, resnet18 on CUDA " + default(M.name))
    p.add_argument("--weights", help="local weights file to start from (never downloaded) " + default(M.weights))
    p.add_argument("--dropout", type=float, help="dropout before the output layer " + default(M.dropout))
    p.add_argument("--epochs", type=int, help="passes over the training split; with --resume, the run's new total " + default(T.epochs))
    p.add_argument("--batch-size", type=int, help="per process; the global batch is this times the process count " + default(T.batch_size))
    p.add_argument("--lr", type=float, help="peak learning rate " + default(T.lr))
    p.add_argument("--weight-decay", type=float, help="weight decay of the kernels " + default(T.weight_decay))
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=default(T.optimizer))
    p.add_argument("--schedule", choices=SCHEDULES, help=default(T.schedule))
    p.add_argument("--pos-weight", type=float, help="positive-class loss weight "
                   + default(T.pos_weight, "negatives/positives" if T.pos_weight is None else ""))
    p.add_argument("--label-smoothing", type=float, help="pull the targets towards 0.5 by this much " + default(T.label_smoothing))
    p.add_argument("--ema", type=float, dest="ema_decay", help="weight-averaging decay (0 disables) " + default(T.ema_decay))
    p.add_argument("--device", choices=DEVICES, help="auto: CUDA when there is a GPU " + default(T.device))
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision " + default(T.amp, "on CUDA only" if T.amp is None else ""))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model " + default(T.compile))
    p.add_argument("--seed", type=int, help="seed of the initialisation, shuffling and augmentation " + default(T.seed))
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps " + default(T.max_steps))
    p.add_argument("--early-stopping", type=int, help="epochs without improvement before stopping (0: off) " + default(T.early_stopping))
    p.add_argument("--monitor", choices=MONITORS, help="validation metric that picks the best epoch " + default(T.monitor))
    p.add_argument("--keep", choices=KEEPS, help="which epoch becomes the run's model: best (by --monitor on the validation "
                   "split), last (the validation split only watched), or auto: last for the folds of --folds, whose validation "
                   "split is the fold their figures are reported on, best otherwise " + default(T.keep))
    p.add_argument("--teacher", metavar="RUN", help="distil: each training patch's target leans towards this run's TTA probability "
                   "of it, scored once before the first epoch (a run folder or bundled; an ensemble teaches as it scores). With --folds, fold k is taught by "
                   "the teacher's member that held out the same patches: the teacher must be a cross-validation of the same data, "
                   "folds and split seed (else refused), so the cross-validated figures stay honest " + default(T.teacher))
    p.add_argument("--distil", type=float, metavar="W", help="with --teacher: target = (1 - W) x label + W x the teacher's "
                   "probability, W in (0, 1] " + default(T.distil))
    p.add_argument("--valid-frac", type=float, help="validation share for data without a valid split " + default(D.valid_frac))
    p.add_argument("--split-seed", type=int, help="seed of that validation split " + default(D.split_seed))
    p.add_argument("--workers", type=int, dest="num_workers", help=WORKERS_HELP + " " + default(D.num_workers))
    p.add_argument("--cache", choices=("auto", "yes", "no"), help="hold the data in RAM " + default(D.cache))
    p.add_argument("--label-overrides", metavar="CSV", help="train with reviewed labels: a review export (columns id, verdict; "
                   "the Review page's CSV). disagree_label_wrong flips a training patch's label, artefact drops it, other "
                   "verdicts keep it; ids that are not training patches are counted and warned about. The run keeps a copy "
                   + default(D.label_overrides))
    p.add_argument("--no-augment", action="store_true", help="disable all augmentation")
    p.add_argument("--stain", type=float, help="HED stain jitter strength " + default(A.stain))
    p.add_argument("--shift", type=int, help="random shift in pixels " + default(A.shift))
    p.add_argument("--mixup", type=float, help="mixup: patches and labels blended in pairs, weight ~ Beta(a, a); a > 0 turns "
                   "it on (0.2-0.4 is usual) " + default(A.mixup))
    p.add_argument("--name", help="a label for the run")
    p.add_argument("--mlflow", metavar="URI", help="also log the run to this MLflow tracking store (e.g. sqlite:///mlflow.db; "
                   f"needs {INSTALL_HINT}); a resumed run logs to the same MLflow run " + default(K.mlflow_uri))
    p.add_argument("--mlflow-experiment", metavar="NAME", help="MLflow experiment of the run " + default(K.mlflow_experiment))
    p.add_argument("--folds", type=int, metavar="K", help="cross-validate: train K runs, each validated on one of K folds "
                   "(stratified by label, grouped by slide where the data names slides), into --out/folds/fold-<k>; write "
                   "every patch's out-of-fold prediction (one pass and TTA) and the cross-validated metrics with intervals; "
                   "--out is then an ensemble run of the K models, calibrated and triaged on the out-of-fold predictions. "
                   "With --resume, a killed job goes on at the fold and epoch where it stopped; 0: no cross-validation " + default(D.folds))
    p.add_argument("--combine", choices=COMBINES, help="with --folds: how the ensemble joins its members, mean probability "
                   f"or mean logit " + default(DEFAULT_COMBINE))
    p.add_argument("--parallel-folds", type=int, metavar="N", help="with --folds: train N folds side by side, each in a "
                   "process of its own (on a machine with several GPUs, one GPU each; on a CPU they share the cores); "
                   "also on --resume " + default(1))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    refused = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings and a.dest not in _RESUMABLE_DESTS}
    p.set_defaults(func=cmd_train, resume_refuses=refused)

    p = sub.add_parser("ensemble", help="serve several runs as one (an ensemble run)", description=(
        "Make an ensemble run: a run folder whose model is the mean of the given runs' (one architecture). Every "
        "command that takes --run takes it (predict, evaluate, explain, slide, export, serve). It has no validation "
        "predictions of its own, so no temperature or triage: `pcam train --folds K` makes an ensemble that has them."))
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="run folders (or bundled), at least two")
    p.add_argument("--out", required=True, help="the ensemble's run folder (new)")
    p.add_argument("--combine", choices=COMBINES, default=DEFAULT_COMBINE,
                   help="mean probability or mean logit " + default(DEFAULT_COMBINE))
    p.set_defaults(func=cmd_ensemble)


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config from --config (if any) with every flag given on the command line on top."""
    config = ExperimentConfig.from_json(args.config) if args.config else ExperimentConfig()
    data = {k: v for k, v in {"path": args.data, "format": args.format, "valid_frac": args.valid_frac,
                              "split_seed": args.split_seed, "num_workers": args.num_workers, "cache": args.cache,
                              "label_overrides": str(Path(args.label_overrides).resolve()) if args.label_overrides else None,
                              }.items() if v is not None}
    model = {k: v for k, v in {"name": args.model, "weights": args.weights, "dropout": args.dropout}.items() if v is not None}
    train = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "optimizer": args.optimizer, "schedule": args.schedule, "pos_weight": args.pos_weight,
        "label_smoothing": args.label_smoothing, "ema_decay": args.ema_decay, "device": args.device, "amp": args.amp,
        "compile": args.compile, "seed": args.seed, "max_steps": args.max_steps, "early_stopping": args.early_stopping,
        "monitor": args.monitor, "keep": args.keep, "distil": args.distil,
        "teacher": args.teacher if args.teacher in (None, "bundled") else str(Path(args.teacher).resolve())}.items() if v is not None}
    augment: dict[str, Any] = {}
    if args.no_augment:
        augment = {"symmetries": False, "stain": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "shift": 0, "mixup": 0.0}
    augment.update({k: v for k, v in {"stain": args.stain, "shift": args.shift, "mixup": args.mixup}.items() if v is not None})
    tracking = {k: v for k, v in {"mlflow_uri": resolve_uri(args.mlflow) if args.mlflow is not None else None,
                                  "mlflow_experiment": args.mlflow_experiment}.items() if v is not None}
    changes: dict[str, Any] = {"data": data, "model": model, "train": train, "augment": augment, "tracking": tracking}
    if args.name is not None:
        changes["name"] = args.name
    config = config.replace(**changes)
    if not config.data.path and not args.resume:
        raise ValueError("--data is required (a PCam HDF5 folder or a Kaggle folder); try `pcam demo-data --out demo` first")
    return config


def _check_resume_flags(args: argparse.Namespace) -> None:
    """--resume continues a run with its saved config: refuse every flag it cannot honour (all but --epochs),
    rather than ignore it. --config may only name the run's own config.json (as `pcam_core.runs.launch` does)."""
    given = [flag for dest, flag in args.resume_refuses.items() if getattr(args, dest) not in (None, False)]
    if args.config and Path(args.config).resolve() != RunDir(args.out).config_path.resolve():
        given.insert(0, "--config")
    if given:
        raise ValueError(
            f"--resume continues {args.out} with the config saved in it; it cannot change {', '.join(given)} "
            "(only --epochs can be changed on resume). Start a new run with another --out to train with other settings"
        )


def _train_progress(prefix: str = "") -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """Progress over the whole run (images, images/s, time left): a bar on a terminal, else a line every
    `common.PROGRESS_EVERY` seconds: (callback for each optimiser step, close)."""
    bar = None

    def on_step(p: dict[str, Any]) -> None:
        nonlocal bar
        what = f"{prefix}epoch {p['epoch']}/{p['epochs']}"
        if bar is None:
            bar = progress_bar(p["total_steps"] * p["images"], what, initial=(p["step"] - 1) * p["images"])
        bar.set_description(what, refresh=False)
        bar.set_postfix_str(f"loss {p['loss']:.4f}", refresh=False)
        bar.update(p["images"])

    def close() -> None:
        if bar is not None:
            bar.close()

    return on_step, close


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:  # refused before torch and the trainer are imported (seconds)
        RunDir(args.out).check_resumable()
        _check_resume_flags(args)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..train import StopRequested, fit
    config = build_config(args) if not args.resume else ExperimentConfig()
    if not args.resume and config.train.teacher:  # a teacher that cannot teach it: refused before the run's folder is made
        from ..distil import check_teacher

        check_teacher(config.replace(data={"folds": args.folds}) if args.folds else config)  # fit_folds sets data.folds
    if args.folds is not None or (args.resume and RunDir(args.out).is_cross_validation):
        return _train_folds(args, config)
    if args.combine is not None:
        raise ValueError("--combine goes with --folds (the ensemble of the fold runs)")
    if args.parallel_folds is not None:
        raise ValueError("--parallel-folds goes with --folds (the folds of a cross-validation trained side by side)")
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 speaks
    on_step, close = _train_progress()
    try:
        with logging_redirect_tqdm() if main_rank and sys.stderr.isatty() else contextlib.nullcontext():  # log lines above the bar
            summary = fit(config, args.out, resume=args.resume, epochs=args.epochs if args.resume else None,
                          on_step=on_step if main_rank else None)
    except StopRequested:
        if main_rank:
            print(f"stopped: checkpoint saved in {args.out}; continue with `pcam train --out {args.out} --resume`", file=sys.stderr)
        return 0
    finally:
        close()
    if not main_rank:
        return 0
    if summary.get("best_metrics"):
        best = summary["best_metrics"]
        done = summary["epochs_done"]
        print(f"finished {summary['run_id']}: {done} epoch{'' if done == 1 else 's'} in {summary['train_seconds'] / 60:.1f} min "
              f"({summary['ended_by']}); {'kept the last epoch' if RunDir(args.out).config().keeps_last_epoch else 'best epoch'} "
              f"{best['epoch']}: ROC-AUC {fmt(best.get('roc_auc'))}, "
              f"accuracy {fmt(best.get('accuracy'))}, F1 {fmt(best.get('f1'))}")
    if summary.get("synthetic_data"):
        print("note: trained on SYNTHETIC demo data; its figures say nothing about real tissue")
    if summary.get("label_overrides"):
        c = summary["label_overrides"]
        print(f"reviewed labels: {c['flipped']} flipped, {c['dropped']} dropped, {c['kept']} kept, {c['unmatched']} unmatched "
              f"(copy and counts in {args.out})")
    for warning in summary.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0



def _train_folds(args: argparse.Namespace, config: ExperimentConfig) -> int:
    """`pcam train --folds K`: the cross-validation job (`pcam_core.crossval.fit_folds`), with its figures."""
    from ..crossval import cv_lines, fit_folds
    from ..train import StopRequested

    if args.resume and args.epochs is not None:
        raise ValueError("--epochs cannot change a cross-validated run on resume (its folds must train alike)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--folds trains each fold in one process; start it without torchrun (--parallel-folds N trains "
                         "N folds side by side, one GPU each where there are several)")
    bars: dict[int, tuple[Callable[[dict[str, Any]], None], Callable[[], None]]] = {}

    def on_step(p: dict[str, Any]) -> None:  # one bar a fold
        if p["fold"] not in bars:
            for _, close_bar in bars.values():
                close_bar()
            bars[p["fold"]] = _train_progress(f"fold {p['fold']}/{p['folds']} ")
        bars[p["fold"]][0](p)

    def close() -> None:
        for _, close_bar in bars.values():
            close_bar()

    parallel = args.parallel_folds or 1
    try:
        if parallel > 1:
            print(f"training up to {parallel} folds side by side; each fold's progress is in its folds/fold-<k>/train.log, "
                  f"the job's in {RunDir(args.out).log_path}", file=sys.stderr)
        summary = fit_folds(config, args.out, folds=args.folds, resume=args.resume, combine=args.combine or DEFAULT_COMBINE,
                            on_step=on_step if parallel == 1 else None, parallel=parallel)
    except StopRequested:
        again = f" --parallel-folds {parallel}" if parallel > 1 else ""
        print(f"stopped: checkpoints saved in {args.out}; continue with `pcam train --out {args.out} --resume{again}`", file=sys.stderr)
        return 0
    finally:
        close()
    cv = summary["cv"]
    print(f"finished {summary['folds']} folds over {summary['patches']} patches in {summary['train_seconds'] / 60:.1f} min of training")
    for line in cv_lines(cv):
        print(line)
    print(f"out-of-fold predictions: {RunDir(args.out).oof_predictions_path}; the ensemble run: {args.out}")
    if summary.get("synthetic_data"):
        print("note: trained on SYNTHETIC demo data; its figures say nothing about real tissue")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from ..ensemble import create_ensemble

    folder = create_ensemble(args.runs, args.out, combine=args.combine)
    print(f"ensemble of {len(args.runs)} runs ({args.combine} mean): {folder.path}")
    return 0
