"""Time the ``full`` synthetic preset: ``python benchmarks/bench_synth.py [--out DIR]``.

Prints the sampled steps and wall time (the issue's budget: < 10 min on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_prep.synth.campaign import run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/synth_full"))
    parser.add_argument("--preset", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    summaries = run_campaign(args.preset, args.seed, args.out, workers=args.workers)
    wall = time.perf_counter() - t0
    steps = sum(s.steps for s in summaries)
    sampled = sum(s.sampled_steps for s in summaries)
    size = sum(p.stat().st_size for p in args.out.rglob("traces.json"))
    print(
        f"preset={args.preset} experiments={len(summaries)} steps={steps} sampled_steps={sampled} "
        f"traces={size / 1e6:.0f} MB wall_s={wall:.1f} ({steps / wall:.0f} steps/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
