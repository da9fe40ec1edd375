"""Subcommands of this package: ``evaluate`` and ``crossval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inference.cli import HOST_BOUND_HELP, add_init_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands."""
    ev = subparsers.add_parser(
        "evaluate",
        help="score a fitted model and the baselines on held-out rows; write the report",
        description=(
            "Score a fit (from `steptime fit`) on rows it did not fit: the split's test rows "
            "(default) or every row of another dataset (--rows all). Baselines are fitted on "
            "the split's train rows. Writes report.md, metrics.json and figures to --out."
        ),
    )
    ev.add_argument("--fit", required=True, help="fit folder (posterior.nc + model.json)")
    ev.add_argument("--data", required=True, help="steps.parquet to score")
    ev.add_argument("--split", help="split_indices.json (required unless --rows all)")
    ev.add_argument(
        "--split-name",
        default="stratified",
        help="stratified (default), temporal, lomo:<model> or lowo:<workload>",
    )
    ev.add_argument("--rows", choices=("test", "all"), default="test")
    ev.add_argument(
        "--train-data",
        help="steps the baselines are fitted on with --rows all (their split's "
        "train part if --split is given, else all rows)",
    )
    ev.add_argument("--out", required=True, help="report folder")
    ev.add_argument("--crossval", help="folder (or crossval.json) from `steptime crossval`")
    ev.add_argument("--kernel-dir", help="InferSim kernel tables for the roofline's MFU")
    ev.add_argument(
        "--model-config-dir",
        action="append",
        default=[],
        help="folder of config.json files for models the fit never saw",
    )
    ev.add_argument("--draws", type=int, default=1000, help="predictive draws per row")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    ev.set_defaults(handler=run_evaluate)

    cv = subparsers.add_parser(
        "crossval",
        help="leave-one-model-out / leave-one-workload-out refits",
        description="Refit on all other groups and predict each held-out group via the "
        "hyperpriors; writes crossval.json and crossval.md.",
    )
    cv.add_argument("--data", required=True)
    cv.add_argument("--target", choices=("cycle", "schedule"), default="cycle")
    cv.add_argument("--by", choices=("model", "workload"), required=True)
    cv.add_argument("--out", required=True)
    cv.add_argument("--draws", type=int, default=500)
    cv.add_argument("--tune", type=int, default=500)
    cv.add_argument("--chains", type=int, default=2)
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--max-train-rows", type=int, help="fit a seeded subset of each fold")
    cv.add_argument("--kernel-dir", help="InferSim kernel tables for the roofline's MFU")
    cv.add_argument("--model-config-dir", action="append", default=[])
    cv.add_argument("--host-bound", action="store_true", help=HOST_BOUND_HELP)
    add_init_argument(cv)
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(handler=run_crossval)


def _error(command: str, err: Exception) -> int:
    print(f"steptime {command}: {err}", file=sys.stderr)
    return 2


def _read_crossval(path: str | None) -> dict | None:
    if not path:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / "crossval.json"
    return json.loads(path.read_text())


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from data_prep.dataset import load_steps
    from data_prep.splits import load_splits, select_rows
    from diagnostics.report import evaluate, write_report
    from inference.estimator import StepTimeModel

    try:
        model = StepTimeModel.load(args.fit)
        if args.model_config_dir:
            model.model_config_dirs = tuple(model.model_config_dirs) + tuple(args.model_config_dir)
        steps = load_steps(args.data)
        crossval = _read_crossval(args.crossval)
        splits = load_splits(args.split) if args.split else None
        valid = None
        train_steps, train_rows = None, None
        if args.rows == "test":
            if splits is None:
                raise ValueError("--split is required to score test rows (or pass --rows all)")
            rows = np.array(select_rows(steps, splits, args.split_name, "test"), dtype=bool)
            train_steps = steps
            train_rows = np.array(select_rows(steps, splits, args.split_name, "train"), dtype=bool)
            if args.split_name in splits and "valid" in splits[args.split_name]:
                valid = np.array(select_rows(steps, splits, args.split_name, "valid"), dtype=bool)
            held = f"{args.split_name} split, test part"
        else:
            rows = np.ones(len(steps), dtype=bool)
            held = "every row of a dataset the fit did not use"
            if args.train_data:
                train_steps = load_steps(args.train_data)
                train_rows = (
                    np.array(select_rows(train_steps, splits, args.split_name, "train"), dtype=bool)
                    if splits is not None
                    else np.ones(len(train_steps), dtype=bool)
                )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        return _error("evaluate", err)
    print(f"evaluating {model.target} on {int(rows.sum())} rows ({held})", file=sys.stderr)
    try:
        evaluation = evaluate(
            model,
            steps,
            rows,
            train_steps=train_steps,
            train_rows=train_rows,
            valid_rows=valid,
            kernel_dir=args.kernel_dir,
            n_draws=args.draws,
            seed=args.seed,
            description={"data": str(args.data), "rows": held, "fit": str(args.fit)},
        )
    except (ValueError, KeyError) as err:
        return _error("evaluate", err)
    report = write_report(evaluation, args.out, crossval)
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    if args.json:
        print(json.dumps(metrics))
    else:
        for method, s in metrics["methods"].items():
            if s is None:
                print(f"{method:>11}: n/a")
                continue
            cover = (
                ""
                if s["coverage_90"] is None
                else (f"  50% cover {s['coverage_50']:.2f}  90% cover {s['coverage_90']:.2f}")
            )
            print(
                f"{method:>11}: MAPE {s['mape']:6.2f}%  median APE {s['median_ape']:6.2f}%  "
                f"r {s['pearson_r'] if s['pearson_r'] is not None else float('nan'):.3f}{cover}"
            )
        print(f"report: {report}")
    return 0


def run_crossval(args: argparse.Namespace) -> int:
    from data_prep.dataset import load_steps
    from diagnostics.crossval import SingleGroupError, crossval, crossval_markdown

    try:
        steps = load_steps(args.data)
    except (OSError, ValueError) as err:
        return _error("crossval", err)
    try:
        result = crossval(
            steps,
            args.target,
            args.by,
            draws=args.draws,
            tune=args.tune,
            chains=args.chains,
            seed=args.seed,
            model_config_dirs=tuple(args.model_config_dir),
            kernel_dir=args.kernel_dir,
            max_train_rows=args.max_train_rows,
            host_bound=args.host_bound,
            init=args.init,
        )
    except SingleGroupError as err:
        return _error("crossval", err)
    except (ValueError, KeyError) as err:
        return _error("crossval", err)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "crossval.md").write_text(crossval_markdown(result))
    if args.json:
        print(json.dumps(result))
    else:
        print(crossval_markdown(result))
    return 0
