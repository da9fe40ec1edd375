"""How well does a cycle fit price the synthetic campaign's *true* batches, step by step?

    .venv/bin/python benchmarks/truth_pricing.py --fit FITDIR --campaign runs/synth/small

The campaign's ``ground_truth.parquet`` files hold every step (not only the 10% the
traces sample) with its true cycle time. For each run this prints the posterior-mean
predicted total time over the true total — all steps, steps with a prefill chunk, steps
with more than 1,000 prefill tokens, decode-only steps — so a bias in a replay can be
traced to the kind of step it comes from. Stalls and noise are left out (mean bases only).
The last column is the share of the true busy time spent in host-bound steps (the
truth's cycle is max(GPU + output processing, scheduler + 40 µs); there GPU bases can
only be right on average).

With ``--unpooled`` each run is also fitted on its own — non-negative least squares of
relative error of the same bases to every true step — and its coefficients are printed
beside the fit's: where the unpooled fit prices a kind of step right and the posterior
does not, the bases can describe the run and the priors or the pooling hold it back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import nnls

from data_prep.specs import canonical_model_name, get_model_spec, load_hardware
from data_prep.synth.oracle import HOST_CYCLE_PAD_US
from inference.estimator import StepTimeModel
from models.basis import BatchFeatures, evaluate_bases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", required=True)
    parser.add_argument("--campaign", required=True, help="folder written by `steptime synth`")
    parser.add_argument("--unpooled", action="store_true", help="also fit each run on its own")
    args = parser.parse_args()

    model = StepTimeModel.load(args.fit)
    post = model.idata_.posterior.stack(sample=("chain", "draw"))
    hardware = load_hardware(model.hardware)
    print(
        f"{'model':<15}{'workload':<11}{'all':>7}{'prefill':>9}{'>1k prefill':>13}{'decode':>8}"
        f"{'host-bound':>12}"
    )
    for truth_file in sorted(Path(args.campaign).glob("*/ground_truth.parquet")):
        steps = pd.read_parquet(truth_file)
        steps["new_kv_blocks"] = steps["true.new_blocks"]
        config = yaml.safe_load((truth_file.parent / "exp-config.yaml").read_text())
        name = canonical_model_name(config["model"])
        beta = np.exp(post["log_beta"].sel(model=name)).transpose("sample", "basis").values
        effect = np.exp(post["workload_effect"].sel(workload=config["workload"]).values)
        bases = evaluate_bases(
            model.basis_names,
            BatchFeatures.from_frame(steps),
            get_model_spec(name),
            hardware,
            int(config["tensor_parallelism"]),
        )
        predicted = bases @ (beta * effect[:, None]).mean(axis=0)
        truth = steps["busy_cycle_us"].to_numpy()
        prefill = steps["batch.prefill_tokens"].to_numpy()
        kinds = (np.ones(len(steps), bool), prefill > 0, prefill > 1000, prefill == 0)
        ratios = [f"{predicted[k].sum() / truth[k].sum():.3f}" if k.any() else "—" for k in kinds]
        host_bound = np.isclose(truth, steps["schedule_us"].to_numpy() + HOST_CYCLE_PAD_US)
        host_share = truth[host_bound].sum() / truth.sum()
        print(
            f"{name:<15}{config['workload']:<11}{ratios[0]:>7}{ratios[1]:>9}"
            f"{ratios[2]:>13}{ratios[3]:>8}{host_share:>12.1%}"
        )
        if args.unpooled:
            unpooled = unpooled_coefficients(bases, truth)
            big = kinds[2]
            big_ratio = "—"
            if big.any():
                big_ratio = f"{(bases[big] @ unpooled).sum() / truth[big].sum():.3f}"
            print(f"{'':<26}unpooled: >1k prefill {big_ratio}, coefficients (fit's mean)")
            fitted = beta.mean(axis=0)
            for basis, own, pooled in zip(model.basis_names, unpooled, fitted, strict=True):
                print(f"{'':<30}{basis:<20}{own:8.2f} ({pooled:.2f})")


def unpooled_coefficients(bases: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """β ≥ 0 minimising Σ(β·bases / truth − 1)²; bases that are zero throughout the run get 0."""
    used = np.any(bases != 0, axis=0)
    coefficients = np.zeros(bases.shape[1])
    coefficients[used], _ = nnls(bases[:, used] / truth[:, None], np.ones(len(truth)))
    return coefficients


if __name__ == "__main__":
    main()
