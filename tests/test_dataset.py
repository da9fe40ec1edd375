"""Experiment folders → the step table: facts, derived targets, CLI, and the real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import batch, span, step_event, step_values, steps_line, write_experiment

from data_prep.dataset import (
    PREDICTOR_COLUMNS,
    STEP_COLUMNS,
    load_steps,
    predictor_columns,
    prepare_steps,
    read_experiment,
    write_steps,
)
from data_prep.schema import CYCLE_TARGET, OUTCOME_COLUMNS, STEP_ATTRIBUTES, TARGETS
from steptime.cli import main

RUN = "20260217-203421-llama-2-70b-hf-tp4-codegen"


def _irregular_run(folder, gz=False):
    """Steps 10, 13, 20, 60, 61 with hand-set start times and free blocks."""
    starts = {
        10: 1_000_000_000,
        13: 1_060_000_000,
        20: 1_200_000_000,
        60: 2_000_000_000,
        61: 2_030_000_000,
    }
    free = {10: 900, 13: 870, 20: 880, 60: 800, 61: 790}
    prefill = {10: 0, 13: 100, 20: 4, 60: 0, 61: 0}
    events = [
        step_event(
            step_values(
                i, starts[i], **{"kv.blocks_free_gpu": free[i], "batch.prefill_tokens": prefill[i]}
            )
        )
        for i in (20, 10, 13, 61, 60)
    ]  # out of order on purpose
    line = batch(("vllm.scheduler.step", [span("scheduler_steps_0", events)]))
    return write_experiment(folder, [line], gz=gz)


def test_read_experiment_facts_and_derived_columns(tmp_path):
    steps, requests, report = read_experiment(_irregular_run(tmp_path / RUN), max_gap=32)
    assert list(steps.columns) == list(STEP_COLUMNS)
    assert list(steps["step.id"]) == [10, 13, 20, 60, 61]
    row = steps.iloc[0]
    assert (row["experiment_id"], row["model"], row["architecture"]) == (
        RUN,
        "llama-2-70b",
        "dense",
    )
    assert (row["workload"], row["tp"], row["max_num_seqs"]) == ("codegen", 4, 128)
    # (1.06e9 - 1.0e9) ns / 3 steps = 20 ms; (1.2e9 - 1.06e9) / 7 = 20 ms; gap 40 > 32 → null.
    expected = [60e6 / 3 / 1000, 140e6 / 7 / 1000, np.nan, 30e6 / 1 / 1000, np.nan]
    np.testing.assert_allclose(steps[CYCLE_TARGET].to_numpy(), expected)
    assert steps["cycle_gap_steps"].tolist() == [3, 7, pd.NA, 1, pd.NA]
    assert steps["schedule_us"].tolist() == [500.0] * 5
    assert steps["kv_tokens"].tolist() == [100 * 16, 130 * 16, 120 * 16, 200 * 16, 210 * 16]
    # free blocks 900→870 over 3 steps = 10/step; 870→880 frees (0); 880→800 over 40 = 2.
    np.testing.assert_allclose(steps["new_kv_blocks"], [0, 10, 0, 2, 10])
    assert steps["phase"].tolist() == ["decode", "prefill_heavy", "mixed", "decode", "decode"]
    assert requests is None and report.step_events == 5


def test_max_gap_controls_nulling(tmp_path):
    folder = _irregular_run(tmp_path / RUN)
    wide, _, _ = read_experiment(folder, max_gap=40)
    narrow, _, _ = read_experiment(folder, max_gap=5)
    assert wide[CYCLE_TARGET].notna().sum() == 4
    assert wide.loc[2, CYCLE_TARGET] == pytest.approx(800e6 / 40 / 1000)
    assert narrow[CYCLE_TARGET].notna().tolist() == [True, False, False, True, False]


def test_slug_variants_are_one_model(tmp_path):
    a = write_experiment(
        tmp_path / "20260101-000000-llama-2-70b-tp4-chat", [steps_line([1, 2])], model="llama-2-70b"
    )
    b = write_experiment(
        tmp_path / "20260102-000000-llama-2-70b-hf-tp4-code",
        [steps_line([1])],
        model="meta-llama/Llama-2-70b-hf",
        gz=True,
    )
    result = prepare_steps([a, b])
    assert set(result.steps["model"]) == {"llama-2-70b"}
    assert sorted(result.steps["workload"].unique()) == ["chat", "code"]
    assert result.summary["rows"].tolist() == [2, 1]


def test_model_from_folder_when_config_lacks_it(tmp_path):
    folder = tmp_path / "20260101-000000-codellama-34b-instruct-hf-tp2-general"
    write_experiment(folder, [steps_line([1])])
    (folder / "exp-config.yaml").write_text("max_num_seqs: 64\n")
    steps, _, _ = read_experiment(folder)
    assert (steps.loc[0, "model"], steps.loc[0, "tp"]) == ("codellama-34b", 2)
    assert steps.loc[0, "max_num_seqs"] == 64 and pd.isna(steps.loc[0, "max_model_len"])


def test_unknown_model_warns_and_is_dense(tmp_path, caplog):
    folder = write_experiment(
        tmp_path / "20260101-000000-foo-7b-tp1-chat", [steps_line([1])], model="acme/foo-7b"
    )
    steps, _, _ = read_experiment(folder)
    assert steps.loc[0, "architecture"] == "dense"
    assert "unknown model 'foo-7b'" in caplog.text


def test_moe_architecture_from_spec(tmp_path):
    folder = write_experiment(
        tmp_path / "20260101-000000-mixtral-8x7b-tp2-chat",
        [steps_line([1])],
        model="mistralai/Mixtral-8x7B-v0.1",
        tp=2,
    )
    steps, _, _ = read_experiment(folder)
    assert steps.loc[0, "architecture"] == "moe"


def test_folder_without_traces_is_an_error(tmp_path):
    empty = tmp_path / RUN
    empty.mkdir()
    with pytest.raises(ValueError, match=RUN):
        read_experiment(empty)
    with pytest.raises(ValueError, match="no traces.json"):
        prepare_steps([tmp_path])


def test_duplicates_dropped_and_counted(tmp_path):
    folder = write_experiment(tmp_path / RUN, [steps_line([1, 2]), steps_line([2, 3], cycle_ns=1)])
    steps, _, report = read_experiment(folder)
    assert steps["step.id"].tolist() == [1, 2, 3]
    assert steps.loc[1, "step.ts_start_ns"] == 1_000_000_000 + 2 * 20_000_000  # first kept
    assert report.duplicates_dropped == 1


def test_requests_carry_experiment_id(tmp_path):
    from conftest import event

    journey = batch(
        (
            "vllm.scheduler",
            [span("llm_core", [event("journey.QUEUED", 1)], **{"gen_ai.request.id": "r9"})],
        )
    )
    result = prepare_steps([write_experiment(tmp_path / RUN, [steps_line([1]), journey])])
    assert result.requests[["experiment_id", "request_id", "event"]].values.tolist() == [
        [RUN, "r9", "journey.QUEUED"]
    ]


def test_predictors_exclude_outcomes_targets_ids_and_times():
    banned = {
        *OUTCOME_COLUMNS,
        *TARGETS.values(),
        "cycle_gap_steps",
        "step.id",
        "step.ts_start_ns",
        "step.ts_end_ns",
        "step.duration_us",
        "experiment_id",
    }
    assert not banned & set(PREDICTOR_COLUMNS)
    assert set(PREDICTOR_COLUMNS) <= set(STEP_COLUMNS)
    assert predictor_columns(pd.DataFrame(columns=["tp", "batch.num_finished"])) == ["tp"]


def test_write_load_round_trip_and_missing_column(tmp_path):
    result = prepare_steps([_irregular_run(tmp_path / RUN)])
    path = write_steps(result.steps, tmp_path / "out" / "steps.parquet")
    pd.testing.assert_frame_equal(load_steps(path), result.steps)
    csv = tmp_path / "steps.csv"
    result.steps.to_csv(csv, index=False)
    assert load_steps(csv)["cycle_gap_steps"].dtype == "Int64"
    result.steps.drop(columns="kv_tokens").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet: missing required column 'kv_tokens'"):
        load_steps(tmp_path / "bad.parquet")


def test_tabular_input(tmp_path):
    table = pd.DataFrame([step_values(i, 1_000_000 * i) for i in (1, 2, 2, 4)])
    table["experiment_id"], table["model"], table["workload"], table["tp"] = (
        "run-a",
        "meta-llama/Llama-2-7b-hf",
        "chat",
        1,
    )
    table.loc[3, "batch.decode_tokens"] = None
    table.to_csv(tmp_path / "seed.csv.gz", index=False)
    result = prepare_steps([tmp_path / "seed.csv.gz"])
    assert result.steps["step.id"].tolist() == [1, 2]
    assert result.steps["model"].iloc[0] == "llama-2-7b"
    assert result.steps["max_num_seqs"].isna().all()
    report = result.reports["run-a"]
    assert (report.duplicates_dropped, report.events_skipped) == (1, 1)
    with pytest.raises(ValueError, match="missing required column 'tp'"):
        table.drop(columns="tp").to_parquet(tmp_path / "no_tp.parquet")
        prepare_steps([tmp_path / "no_tp.parquet"])


def test_cli_prep_exit_codes(tmp_path, capsys):
    good = _irregular_run(tmp_path / "ok" / RUN)
    out = tmp_path / "steps.parquet"
    assert (
        main(
            ["prep", str(good), "--out", str(out), "--requests-out", str(tmp_path / "req.parquet")]
        )
        == 0
    )
    assert len(load_steps(out)) == 5
    printed = capsys.readouterr().out
    assert RUN in printed and "llama-2-70b" in printed and "0.600" in printed
    junk = write_experiment(tmp_path / "bad" / RUN, ["nonsense", "{}"])
    assert main(["prep", str(junk), "--out", str(tmp_path / "none.parquet")]) == 1
    captured = capsys.readouterr()
    assert "malformed JSON" in captured.out and "nothing usable" in captured.err
    assert not (tmp_path / "none.parquet").exists()
    assert main(["prep", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err


def _real_steps(real_data, tmp_path):
    result = prepare_steps([real_data / "real" / "otlp"])
    return result, pd.read_parquet(real_data / "real" / "steps_h100_vllm0151.parquet")


def test_real_otlp_matches_seed_table(real_data, tmp_path):
    result, seed = _real_steps(real_data, tmp_path)
    counts = result.steps.groupby("experiment_id").size().to_dict()
    assert counts == {
        "20260217-202857-llama-2-70b-tp4-general": 5992,
        "20260218-150304-codellama-34b-tp2-general": 7441,
    }
    columns = ["experiment_id", *STEP_ATTRIBUTES]
    seed = seed.sort_values(["experiment_id", "step.id"]).reset_index(drop=True)
    ours = result.steps[columns].reset_index(drop=True)
    for column in STEP_ATTRIBUTES:
        np.testing.assert_array_equal(
            ours[column].to_numpy(), seed[column].to_numpy(dtype=ours[column].dtype), err_msg=column
        )
    assert (ours["experiment_id"].to_numpy() == seed["experiment_id"].to_numpy()).all()
    assert sorted(result.steps["model"].unique()) == sorted(seed["model"].unique())


def test_real_cycle_medians(real_data, tmp_path):
    result, _ = _real_steps(real_data, tmp_path)
    medians = result.steps.groupby("model")[CYCLE_TARGET].median() / 1000
    assert medians["llama-2-70b"] == pytest.approx(19.0, rel=0.03)
    assert medians["codellama-34b"] == pytest.approx(15.1, rel=0.03)
    assert (result.summary["cycle_coverage"] > 0.9).all()


def test_real_table_input_derives_the_same_targets(real_data, tmp_path):
    from_otlp, _ = _real_steps(real_data, tmp_path)
    from_table = prepare_steps([real_data / "real" / "steps_h100_vllm0151.parquet"])
    columns = ["experiment_id", "model", "architecture", "tp", "step.id", "cycle_us", "kv_tokens"]
    pd.testing.assert_frame_equal(from_table.steps[columns], from_otlp.steps[columns])
    assert from_table.steps["max_num_seqs"].isna().all()
