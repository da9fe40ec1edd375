"""``steptime demo``: the whole pipeline on the embedded synthetic campaign.

synth → prep → split → fit (cycle) → evaluate → export → predict, each through its own
subcommand, so the demo exercises exactly what a user runs. Needs nothing outside the
package (no ``../shared``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the embedded synthetic campaign",
        description="Generate the small synthetic campaign, prepare it, fit the cycle-time "
        "model, evaluate it against the baselines, export the simulator artifact and "
        "predict one batch. Everything lands under --out.",
    )
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--draws", type=int, default=500, help="NUTS draws per chain")
    demo.add_argument("--chains", type=int, default=2)
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from steptime.cli import main

    out = Path(args.out)
    steps, split = out / "steps.parquet", out / "split_indices.json"
    fit, report, artifact = out / "fit_cycle", out / "report_cycle", out / "steptime.json"
    seed, draws, chains = str(args.seed), str(args.draws), str(args.chains)
    stages = [
        ("synth", ["synth", "--preset", "small", "--out", str(out / "campaign"), "--seed", seed]),
        ("prep", ["prep", str(out / "campaign"), "--out", str(steps)]),
        ("split", ["split", str(steps), "--out", str(split), "--seed", seed]),
        (
            "fit",
            [
                "fit",
                "--data",
                str(steps),
                "--target",
                "cycle",
                "--split",
                str(split),
                "--out",
                str(fit),
                "--draws",
                draws,
                "--tune",
                draws,
                "--chains",
                chains,
                "--seed",
                seed,
            ],
        ),
        (
            "evaluate",
            [
                "evaluate",
                "--fit",
                str(fit),
                "--data",
                str(steps),
                "--split",
                str(split),
                "--out",
                str(report),
                "--seed",
                seed,
            ],
        ),
        ("export", ["export", "--fit", str(fit), "--out", str(artifact), "--seed", seed]),
        (
            "predict",
            [
                "predict",
                "--artifact",
                str(artifact),
                "--model",
                "llama-2-70b",
                "--tp",
                "4",
                "--batch",
                "decode_reqs=32,prefill_tokens=0,kv_tokens=20000",
            ],
        ),
    ]
    for name, argv in stages:
        started = time.perf_counter()
        print(f"\n== steptime {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            print(f"demo: stage {name} failed with exit status {code}", file=sys.stderr)
            return code
        print(f"== {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"\nReport: {report / 'report.md'}\nSimulator artifact: {artifact}")
    return 0
