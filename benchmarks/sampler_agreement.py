"""Does the simulator-side sampler score held-out rows like the PyMC-side estimator?

    .venv/bin/python benchmarks/sampler_agreement.py --fit FITDIR --data steps.parquet \
        --split split_indices.json [--artifact steptime.json]

Exports the fit (unless an artifact is given), predicts the split's test rows with
``StepTimeModel.predict`` and with ``StepTimeSampler.predict_frame`` and prints both
MAPEs and the median relative difference of their point predictions. The issue's bar:
the two MAPEs within ±0.5 points.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from data_prep.dataset import load_steps
from data_prep.schema import TARGETS
from data_prep.splits import load_splits, select_rows
from inference.estimator import StepTimeModel
from inference.export import export_artifact
from inference.sampler import StepTimeSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--split-name", default="stratified")
    parser.add_argument("--artifact")
    args = parser.parse_args()

    model = StepTimeModel.load(args.fit)
    artifact = args.artifact or str(Path(tempfile.mkdtemp()) / "steptime.json")
    if not args.artifact:
        export_artifact(args.fit, artifact)
    sampler = StepTimeSampler.load(artifact)
    steps = load_steps(args.data)
    y_column = TARGETS[model.target]
    rows = np.array(select_rows(steps, load_splits(args.split), args.split_name, "test"))
    rows &= steps[y_column].notna().to_numpy()
    y = steps.loc[rows, y_column].to_numpy(dtype=float)
    by_estimator = model.predict(steps, rows)["point_us"].to_numpy()
    by_sampler = sampler.predict_frame(steps, rows)["point_us"].to_numpy()
    for name, point in (("estimator", by_estimator), ("sampler", by_sampler)):
        print(f"{name:9s} MAPE {np.mean(np.abs(point - y) / y) * 100:.3f}% on {rows.sum()} rows")
    difference = np.median(np.abs(by_sampler - by_estimator) / by_estimator) * 100
    print(f"median |sampler − estimator| / estimator point: {difference:.3f}%")


if __name__ == "__main__":
    main()
