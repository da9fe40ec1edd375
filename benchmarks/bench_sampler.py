"""Speed of the numpy-only sampler: single-step predict, vectorised point, sample(1000).

    python benchmarks/bench_sampler.py steptime.json [--model llama-2-70b --tp 4]

Targets (issue 6): single-step predict median ≤ 50 µs; vectorised point ≥ 1M steps/s;
sample of 1,000 draws ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from inference.sampler import StepTimeSampler


def median_us(fn, repeats: int, inner: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return float(np.median(times) * 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--model", help="default: the first fitted model")
    parser.add_argument("--tp", type=int, default=None)
    parser.add_argument("--workload", default=None)
    parser.add_argument("--steps", type=int, default=1_000_000)
    args = parser.parse_args()

    sampler = StepTimeSampler.load(args.artifact)
    model = args.model or sampler.models[0]
    tp = args.tp
    if tp is None:
        from data_prep.synth.workloads import SEED_DEPLOYMENTS

        tp = SEED_DEPLOYMENTS[model].tp if model in SEED_DEPLOYMENTS else 1
    kwargs = {"model": model, "tp": tp, "workload": args.workload}
    batch = {"decode_reqs": 32, "prefill_tokens": 0, "kv_tokens": 20000}

    start = time.perf_counter()
    sampler.predict(batch, **kwargs)
    print(f"first call (builds the cached context): {1e3 * (time.perf_counter() - start):.1f} ms")

    single = median_us(lambda: sampler.predict(batch, **kwargs), repeats=2000)
    print(f"single-step predict (point, mean, 5/50/95%): median {single:.1f} µs  [target ≤ 50]")

    rng = np.random.default_rng(0)
    n = args.steps
    arrays = {
        "decode_reqs": rng.integers(1, 129, n).astype(float),
        "prefill_tokens": np.where(rng.random(n) < 0.2, rng.integers(1, 2049, n), 0).astype(float),
        "kv_tokens": rng.integers(0, 300_000, n).astype(float),
    }
    arrays["prefill_reqs"] = (arrays["prefill_tokens"] > 0).astype(float)
    arrays["decode_tokens"] = arrays["decode_reqs"]
    sampler.point(arrays, **kwargs)
    start = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        sampler.point(arrays, **kwargs)
    rate = repeats * n / (time.perf_counter() - start)
    print(f"vectorised point prediction: {rate / 1e6:.2f} M steps/s  [target ≥ 1]")

    draws = median_us(lambda: sampler.sample(batch, 1000, rng, **kwargs), repeats=300)
    print(f"sample(batch, 1000 draws): median {draws / 1e3:.3f} ms  [target ≤ 1]")

    run = sampler.run_draw(rng, **kwargs)
    per_step = median_us(lambda: run(batch), repeats=200, inner=100)
    print(f"one simulated step (run_draw, noise on): median {per_step:.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
