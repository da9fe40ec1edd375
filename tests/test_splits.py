"""Fixed splits: determinism, stratification, temporal holdout, folds, row selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_prep.splits import load_splits, make_splits, save_splits, select_rows
from steptime.cli import main


@pytest.fixture
def steps() -> pd.DataFrame:
    """Three models × two workloads, runs of different lengths, step ids shuffled."""
    rng = np.random.default_rng(42)
    frames = []
    for m, model in enumerate(["llama-2-7b", "llama-2-70b", "mixtral-8x7b"]):
        for w, workload in enumerate(["chat", "code"]):
            n = 100 + 50 * m + 30 * w
            ids = rng.permutation(np.arange(n) * 7 + 3)
            frames.append(
                pd.DataFrame(
                    {
                        "experiment_id": f"{model}-{workload}",
                        "step.id": ids,
                        "model": model,
                        "workload": workload,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _keys(rows: list) -> set:
    return {tuple(key) for key in rows}


def test_same_seed_same_json_other_seed_differs(steps, tmp_path):
    a = save_splits(make_splits(steps, seed=3), tmp_path / "a.json")
    b = save_splits(make_splits(steps.sample(frac=1, random_state=1), seed=3), tmp_path / "b.json")
    c = save_splits(make_splits(steps, seed=4), tmp_path / "c.json")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert load_splits(a) == make_splits(steps, seed=3)


def test_stratified_proportions_and_disjoint(steps):
    splits = make_splits(steps, seed=0)
    parts = {name: _keys(rows) for name, rows in splits["stratified"].items()}
    assert not parts["train"] & parts["valid"] and not parts["train"] & parts["test"]
    assert not parts["valid"] & parts["test"]
    everything = set(zip(steps["experiment_id"], steps["step.id"].astype(int), strict=True))
    assert parts["train"] | parts["valid"] | parts["test"] == everything
    for run, group in steps.groupby("experiment_id"):
        n = len(group)
        share = {name: sum(1 for key in keys if key[0] == run) / n for name, keys in parts.items()}
        assert share["train"] == pytest.approx(0.6, abs=1 / n)
        assert share["valid"] == pytest.approx(0.2, abs=1 / n)
        assert share["test"] == pytest.approx(0.2, abs=1.5 / n)


def test_temporal_test_is_last_fifth_of_each_run(steps):
    splits = make_splits(steps, seed=0)
    train, test = _keys(splits["temporal"]["train"]), _keys(splits["temporal"]["test"])
    assert not train & test and len(train) + len(test) == len(steps)
    for run, group in steps.groupby("experiment_id"):
        ids = np.sort(group["step.id"].to_numpy())
        n_test = round(0.2 * len(ids))
        assert {key[1] for key in test if key[0] == run} == set(ids[-n_test:].tolist())


def test_folds_and_select_rows(steps):
    splits = make_splits(steps, seed=0)
    assert [f["held_out"] for f in splits["lomo"]] == ["llama-2-70b", "llama-2-7b", "mixtral-8x7b"]
    assert splits["lowo"] == [
        {"held_out": "chat", "column": "workload"},
        {"held_out": "code", "column": "workload"},
    ]
    test = select_rows(steps, splits, "lomo:llama-2-70b", "test")
    train = select_rows(steps, splits, "lomo:llama-2-70b", "train")
    assert (steps.loc[test, "model"] == "llama-2-70b").all() and not (test & train).any()
    assert (test | train).all()
    masks = [select_rows(steps, splits, "stratified", p) for p in ("train", "valid", "test")]
    assert (sum(m.astype(int) for m in masks) == 1).all()
    assert masks[0].sum() == len(splits["stratified"]["train"])
    late = select_rows(steps, splits, "temporal", "test")
    assert late.sum() == len(splits["temporal"]["test"])
    with pytest.raises(KeyError, match="lomo:llama-2-7b"):
        select_rows(steps, splits, "lomo:gpt-5", "test")
    with pytest.raises(KeyError, match="no part"):
        select_rows(steps, splits, "temporal", "valid")


def test_single_workload_has_no_lowo(steps):
    assert make_splits(steps[steps["workload"] == "chat"])["lowo"] == []


def test_bad_fractions_rejected(steps):
    with pytest.raises(ValueError, match="summing to 1"):
        make_splits(steps, fractions=(0.5, 0.2, 0.2))


def test_cli_split(tmp_path, capsys):
    assert main(["split", str(tmp_path / "absent.parquet"), "--out", str(tmp_path / "s.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_prep_then_split(tmp_path, capsys):
    from conftest import steps_line, write_experiment

    runs = [
        write_experiment(
            tmp_path / f"20260101-00000{i}-llama-2-7b-tp1-{w}",
            [steps_line(list(range(1, 51)))],
            model="llama-2-7b",
            tp=1,
        )
        for i, w in enumerate(["chat", "code"])
    ]
    assert main(["prep", *map(str, runs), "--out", str(tmp_path / "steps.parquet")]) == 0
    out = tmp_path / "split.json"
    assert main(["split", str(tmp_path / "steps.parquet"), "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "stratified: train 60, valid 20, test 20" in printed
    assert "temporal: train 80, test 20" in printed and "lowo:chat: train 50, test 50" in printed
    assert load_splits(out)["seed"] == 1
