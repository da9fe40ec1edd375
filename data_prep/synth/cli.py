"""Subcommands of this package for the ``steptime`` command.

- ``steptime synth --preset {tiny,small,full,sweep} --out DIR --seed N``: write a synthetic
  campaign in the real trace format.
- ``steptime synth-calibration [--from DIR | --preset full]``: print the calibration table
  (synthetic vs real quantiles per experiment).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PRESETS = ("tiny", "small", "full", "sweep")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands."""
    p = subparsers.add_parser(
        "synth",
        help="simulate a vLLM campaign (scheduler twin + synthetic truth) in the real format",
    )
    p.add_argument("--preset", choices=PRESETS, default="small")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_synth)

    c = subparsers.add_parser(
        "synth-calibration",
        help="print synthetic vs real step-time quantiles per experiment",
    )
    c.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        default=None,
        help="a campaign written by `steptime synth` (else simulate --preset)",
    )
    c.add_argument("--preset", choices=("small", "full"), default="full")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--real", type=Path, default=None, help="folder of the real data")
    c.set_defaults(handler=_calibration)


def _synth(args) -> int:
    from data_prep.synth.campaign import run_campaign

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = run_campaign(
        args.preset, args.seed, args.out, workers=args.workers, progress=not args.no_progress
    )
    wall = time.perf_counter() - t0
    for s in summaries:
        print(
            f"{s.experiment_id}: {s.steps} steps, {s.sampled_steps} sampled, "
            f"{s.requests_ok} ok / {s.requests_failed} failed, {s.preemptions} preemptions"
        )
    print(
        f"{len(summaries)} experiments, {sum(s.steps for s in summaries)} steps, "
        f"{sum(s.sampled_steps for s in summaries)} sampled, {wall:.1f} s -> {args.out}"
    )
    return 0


def _calibration(args) -> int:
    from data_prep.synth import calibration as cal

    real = args.real or cal.real_data_dir()
    if real is None or not (Path(real) / "step_duration_samples_16exp.csv.gz").is_file():
        print(
            "real data not found (../shared/data/real or $STEPTIME_REAL_DATA); "
            "nothing to calibrate against",
            file=sys.stderr,
        )
        return 2
    if args.from_dir is not None:
        syn = cal.synthetic_from_dir(args.from_dir)
    else:
        from data_prep.synth.campaign import run_campaign

        syn = cal.synthetic_from_summaries(
            run_campaign(args.preset, args.seed, None, workers=args.workers)
        )
    if syn.empty:
        print("no synthetic experiments of the main campaign found", file=sys.stderr)
        return 2
    table = cal.calibration_table(syn, Path(real))
    print(cal.format_table(table))
    ok = bool(table.q_ok.all() and table.cycle_ok.all() and table.token_ok.all())
    return 0 if ok else 1
