"""Convergence summary, the evaluate JSON contract on a tiny fit, the report, crossval."""

from __future__ import annotations

import json
import re
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from data_prep.splits import make_splits, save_splits
from diagnostics.convergence import convergence_summary, convergence_table, format_convergence
from steptime.cli import main

SHARED_STEPS = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "real"
    / "steps_h100_vllm0151.parquet"
)
ROWS_PER_MODEL = 150
METRIC_KEYS = {"mape", "median_ape", "p90_ape", "pearson_r", "coverage_50", "coverage_90", "crps"}


def test_convergence_summary_flags_stuck_chains():
    rng = np.random.default_rng(0)
    good = az.from_dict(
        posterior={"x": rng.normal(size=(2, 500)), "y": rng.normal(size=(2, 500, 3))},
        sample_stats={
            "diverging": np.zeros((2, 500), bool),
            "energy": rng.normal(size=(2, 500)),
            "maxdepth_reached": np.zeros((2, 500), bool),
        },
    )
    summary = convergence_summary(good)
    assert summary["max_rhat"] < 1.02 and summary["min_ess_bulk"] > 300
    assert summary["divergences"] == 0 and summary["max_tree_depth_hits"] == 0
    assert summary["bfmi_min"] > 0.5
    assert format_convergence(summary).startswith("OK")
    stuck = az.from_dict(
        posterior={"x": np.stack([rng.normal(0, 1, 500), rng.normal(5, 1, 500)])},
        sample_stats={"diverging": np.ones((2, 500), bool)},
    )
    bad = convergence_summary(stuck)
    assert bad["max_rhat"] > 1.5 and bad["divergences"] == 1000 and bad["bfmi_min"] is None
    assert format_convergence(bad).startswith("CHECK")
    assert list(convergence_table(good, ["x", "missing"]).index) == ["x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """150 rows per model of the real data, a split, and a 2×100-draw fit."""
    if not SHARED_STEPS.is_file():
        pytest.skip(f"real data not available: {SHARED_STEPS.resolve()} (../shared/data) absent")
    from data_prep.dataset import prepare_steps, write_steps
    from inference.estimator import StepTimeModel

    steps = prepare_steps([SHARED_STEPS]).steps
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [
            rng.choice(
                np.flatnonzero((steps["model"] == m).to_numpy()), ROWS_PER_MODEL, replace=False
            )
            for m in sorted(steps["model"].unique())
        ]
    )
    steps = steps.iloc[np.sort(keep)].reset_index(drop=True)
    folder = tmp_path_factory.mktemp("tiny")
    data = write_steps(steps, folder / "steps.parquet")
    splits = make_splits(steps, seed=0)
    split = save_splits(splits, folder / "split.json")
    from data_prep.splits import select_rows

    train = np.array(select_rows(steps, splits, "stratified", "train"), dtype=bool)
    model = StepTimeModel(target="cycle").fit(
        steps, train, draws=100, tune=100, chains=2, seed=0, progressbar=False
    )
    fit = model.save(folder / "fit")
    return {"steps": steps, "data": data, "split": split, "fit": fit, "folder": folder}


def run_evaluate(tiny, out, *extra: str) -> int:
    """`steptime evaluate` of the tiny fit on its split's test rows, writing to ``out``."""
    args = ["--fit", str(tiny["fit"]), "--data", str(tiny["data"]), "--split", str(tiny["split"])]
    return main(["evaluate", *args, "--out", str(out), *extra])


def test_evaluate_json_contract(tiny, capsys):
    out = tiny["folder"] / "report"
    code = run_evaluate(tiny, out, "--json", "--draws", "300")
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    metrics = json.loads(printed[0])
    assert metrics["target"] == "cycle"
    assert 0 < metrics["n_rows"] <= 2 * ROWS_PER_MODEL * 0.25
    assert set(metrics["methods"]) == {"bayes", "naive_mean", "blackbox", "roofline"}
    for method, values in metrics["methods"].items():
        assert set(values) >= METRIC_KEYS, method
        assert values["mape"] > 0
    bayes = metrics["methods"]["bayes"]
    assert 0 <= bayes["coverage_50"] <= bayes["coverage_90"] <= 1
    assert bayes["crps"] > 0
    assert bayes["mape"] < metrics["methods"]["naive_mean"]["mape"]
    for method in ("naive_mean", "blackbox", "roofline"):
        assert metrics["methods"][method]["coverage_90"] is None
        assert metrics["methods"][method]["crps"] is None
    assert set(metrics["by"]) == {"model", "architecture", "workload", "phase", "load"}
    assert set(metrics["by"]["model"]) == set(tiny["steps"]["model"])
    n_by_model = sum(v["n_rows"] for v in metrics["by"]["model"].values())
    assert n_by_model == metrics["n_rows"]
    assert set(metrics["diagnostics"]) >= {"max_rhat", "min_ess_bulk", "divergences", "bfmi_min"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["methods"] == metrics["methods"]


def test_report_renders_and_links_every_figure(tiny):
    out = tiny["folder"] / "report_md"
    crossval = tiny["folder"] / "cv"
    crossval.mkdir()
    (crossval / "crossval.json").write_text(
        json.dumps(
            {
                "target": "cycle",
                "by": "model",
                "folds": [
                    {
                        "held_out": "llama-2-70b",
                        "n_rows": 10,
                        "mape": 12.0,
                        "median_ape": 10.0,
                        "coverage_90": 0.9,
                        "blackbox_mape": 20.0,
                        "roofline_mape": 21.0,
                    }
                ],
            }
        )
    )
    code = run_evaluate(tiny, out, "--crossval", str(crossval), "--draws", "200")
    assert code == 0
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) >= 6
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report))
    assert linked == set(pngs)
    assert all(png.stat().st_size > 5_000 for png in out.glob("*.png"))
    assert "| method | val MAPE | test MAPE | Pearson r | dense MAPE | MoE MAPE |" in report
    assert "LOMO 12.0%" in report  # generalisation filled from the crossval JSON
    for section in ("Per model", "Per phase", "Per load", "Convergence"):
        assert section in report


def test_evaluate_all_rows_without_training_data_nulls_fitted_baselines(tiny, capsys):
    out = tiny["folder"] / "all_rows"
    code = main(
        [
            "evaluate",
            "--fit",
            str(tiny["fit"]),
            "--data",
            str(tiny["data"]),
            "--rows",
            "all",
            "--out",
            str(out),
            "--json",
            "--draws",
            "100",
        ]
    )
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["methods"]["blackbox"] is None and metrics["methods"]["naive_mean"] is None
    assert metrics["methods"]["roofline"]["mape"] > 0
    assert metrics["n_rows"] == int(tiny["steps"]["cycle_us"].notna().sum())


def test_evaluate_reports_missing_fit(tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--fit",
                str(tmp_path),
                "--data",
                str(tmp_path / "x.parquet"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "not a fit folder" in capsys.readouterr().err


def test_crossval_with_one_group_exits_with_a_message(tiny, capsys, tmp_path):
    code = main(
        [
            "crossval",
            "--data",
            str(tiny["data"]),
            "--target",
            "cycle",
            "--by",
            "workload",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "needs at least two workloads" in capsys.readouterr().err


def test_crossval_markdown_and_generalisation():
    from diagnostics.crossval import crossval_markdown
    from diagnostics.report import generalisation_by_method

    result = {
        "target": "cycle",
        "by": "model",
        "draws": 1,
        "tune": 1,
        "chains": 1,
        "folds": [
            {
                "held_out": "a",
                "n_rows": 5,
                "mape": 10.0,
                "median_ape": 8.0,
                "coverage_90": 0.8,
                "blackbox_mape": 30.0,
                "roofline_mape": None,
                "max_rhat": 1.0,
            },
            {
                "held_out": "b",
                "n_rows": 5,
                "mape": 20.0,
                "median_ape": 8.0,
                "coverage_90": 0.9,
                "blackbox_mape": 50.0,
                "roofline_mape": None,
                "max_rhat": 1.0,
            },
        ],
    }
    assert "| `a` | 5 | 10.0% |" in crossval_markdown(result)
    general = generalisation_by_method(result)
    assert general["bayes"].startswith("LOMO 15.0%")
    assert general["blackbox"].startswith("LOMO 40.0%")
    assert "roofline" not in general


@pytest.mark.slow
def test_crossval_by_model_on_the_tiny_frame(tiny, tmp_path, capsys):
    code = main(
        [
            "crossval",
            "--data",
            str(tiny["data"]),
            "--target",
            "cycle",
            "--by",
            "model",
            "--out",
            str(tmp_path),
            "--json",
            "--draws",
            "100",
            "--tune",
            "100",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [f["held_out"] for f in result["folds"]] == sorted(tiny["steps"]["model"].unique())
    assert all(f["n_rows"] > 0 and f["mape"] > 0 for f in result["folds"])
    assert (tmp_path / "crossval.md").is_file()


def test_crossval_passes_init_to_every_fit(tiny_steps):
    from diagnostics.crossval import crossval

    with pytest.raises(ValueError, match="unknown init 'bogus'"):
        crossval(tiny_steps, "cycle", "model", draws=10, tune=10, init="bogus", log=print)
