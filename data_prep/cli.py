"""Subcommands of this package for the ``steptime`` command: ``prep`` and ``split``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands."""
    prep = subparsers.add_parser(
        "prep",
        help="parse experiment traces into one step table (Parquet)",
        description="Parse experiment folders (traces.json[.gz] + exp-config.yaml), folders "
        "of them, or seed-style .parquet/.csv tables into one step table with targets.",
    )
    prep.add_argument("inputs", nargs="+", metavar="INPUT")
    prep.add_argument("--out", required=True, type=Path, help="step table to write (.parquet)")
    prep.add_argument("--requests-out", type=Path, help="also write request events here")
    prep.add_argument(
        "--max-gap", type=int, default=32, help="longest step gap a cycle time may span"
    )
    prep.add_argument(
        "--model-config-dir",
        action="append",
        default=[],
        type=Path,
        help="folder of HF config.json files for models not shipped (repeatable)",
    )
    prep.set_defaults(handler=run_prep)

    split = subparsers.add_parser(
        "split",
        help="make the fixed train/valid/test, temporal and LOMO/LOWO splits",
    )
    split.add_argument("steps", type=Path, help="step table from `steptime prep`")
    split.add_argument("--out", required=True, type=Path, help="split JSON to write")
    split.add_argument("--seed", type=int, default=0)
    split.set_defaults(handler=run_split)


def _error(command: str, err: Exception) -> int:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    print(f"steptime {command}: error: {message}", file=sys.stderr)
    return 2


def run_prep(args: argparse.Namespace) -> int:
    """Parse, print the per-experiment summary and problems, write the tables."""
    from data_prep.dataset import prepare_steps, write_steps

    trace_log = logging.getLogger("data_prep.traces")
    level = trace_log.level
    trace_log.setLevel(logging.ERROR)  # the problems are printed below, once, with the summary
    try:
        result = prepare_steps(args.inputs, args.max_gap, tuple(args.model_config_dir))
    except (ValueError, KeyError, OSError) as err:
        return _error("prep", err)
    finally:
        trace_log.setLevel(level)
    if len(result.summary):
        print(result.summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for experiment, report in result.reports.items():
        if report.problem_count:
            print(f"\n{experiment}: {report.problem_count} problems")
            for problem in report.problems:
                print(f"  {problem}")
            if report.problem_count > len(report.problems):
                print(f"  … {report.problem_count - len(report.problems)} more")
    if result.steps.empty:
        print("steptime prep: nothing usable was parsed; nothing written", file=sys.stderr)
        return 1
    print(f"\nwrote {len(result.steps)} rows to {write_steps(result.steps, args.out)}")
    if args.requests_out:
        if result.requests is None:
            print(f"no request events in the traces; {args.requests_out} not written")
        else:
            path = write_steps(result.requests, args.requests_out)
            print(f"wrote {len(result.requests)} request events to {path}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    """Make and save the splits; print the row count of every part."""
    from data_prep.dataset import load_steps
    from data_prep.splits import make_splits, save_splits

    try:
        steps = load_steps(args.steps)
    except (ValueError, OSError) as err:
        return _error("split", err)
    splits = make_splits(steps, seed=args.seed)
    path = save_splits(splits, args.out)
    for name in ("stratified", "temporal"):
        counts = ", ".join(f"{part} {len(keys)}" for part, keys in splits[name].items())
        print(f"{name}: {counts}")
    for name, column in (("lomo", "model"), ("lowo", "workload")):
        for fold in splits[name]:
            test = int((steps[column].astype(str) == fold["held_out"]).sum())
            print(f"{name}:{fold['held_out']}: train {len(steps) - test}, test {test}")
        if not splits[name]:
            print(f"{name}: none (a single {column})")
    print(f"wrote {path}")
    return 0
