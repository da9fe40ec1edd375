"""The streaming OTLP reader: extraction, typing, and reporting of bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import attr, batch, event, span, step_event, step_values, steps_line, write_lines

from data_prep.schema import STEP_ATTRIBUTES
from data_prep.traces import PROBLEMS_KEPT, read_traces


def _messy_lines() -> list[str]:
    """Line 1 good, 2 malformed JSON, 3 missing attribute + good event, 4 non-numeric + mixed
    scopes with snapshots and journey/API events, 5 blank, 6 valid JSON but not a batch."""
    good = steps_line([1, 2])
    missing = step_event(step_values(3, 3_000), drop=("batch.prefill_tokens",))
    kept = step_event(step_values(4, 4_000))
    line3 = batch(("vllm.scheduler.step", [span("scheduler_steps_0", [missing, kept])]))
    bad_value = step_event(step_values(5, 5_000), raw={"kv.blocks_free_gpu": {"stringValue": "x"}})
    snapshot = event("step.REQUEST_SNAPSHOT", 6_100, **{"request.id": "r1"})
    mixed = batch(
        (
            "vllm.scheduler.step",
            [span("scheduler_steps_1", [bad_value, step_event(step_values(6, 6_000)), snapshot])],
        ),
        (
            "vllm.scheduler",
            [
                span(
                    "llm_core",
                    [
                        event("journey.QUEUED", 10, **{"ts.monotonic_ns": 11, "phase": "WAITING"}),
                        event(
                            "journey.SCHEDULED",
                            20,
                            **{"scheduler.step": 6, "schedule.kind": "FIRST"},
                        ),
                        event(
                            "journey.FINISHED",
                            30,
                            **{"finish.status": "stopped", "num_preemptions": 0},
                        ),
                    ],
                    **{"gen_ai.request.id": "r1"},
                )
            ],
        ),
        (
            "vllm.api",
            [
                span(
                    "llm_request",
                    [event("api.ARRIVED", 5), event("api.DEPARTED", 40)],
                    **{"gen_ai.request.id": "r1"},
                )
            ],
        ),
    )
    return [good, '{"resourceSpans": [', line3, mixed, "", json.dumps([1, 2])]


def test_messy_file_counts_and_line_numbers(tmp_path):
    path = write_lines(tmp_path / "traces.json", _messy_lines())
    steps, requests, report = read_traces(path)
    assert list(steps["step.id"]) == [1, 2, 4, 6]
    assert report.lines_read == 6
    assert report.lines_skipped == 2  # malformed JSON, not-a-batch
    assert report.events_skipped == 2  # missing attribute, non-numeric value
    assert report.step_events == 4
    assert report.snapshots_ignored == 1
    assert report.request_events == 5
    assert report.problem_count == 4
    problems = "\n".join(report.problems)
    assert f"{path}:2: malformed JSON" in problems
    assert f"{path}:3: step.BATCH_SUMMARY missing attribute batch.prefill_tokens" in problems
    assert f"{path}:4: step.BATCH_SUMMARY attribute kv.blocks_free_gpu has non-numeric" in problems
    assert f"{path}:6: line is not an OTLP export batch" in problems


def test_step_columns_are_typed(tmp_path):
    path = write_lines(tmp_path / "traces.json", [steps_line([7])])
    steps, requests, _ = read_traces(path)
    assert list(steps.columns) == list(STEP_ATTRIBUTES)
    assert steps["step.ts_start_ns"].dtype == "int64"
    assert steps["kv.usage_gpu_ratio"].dtype == "float64"
    assert steps.loc[0, "step.ts_start_ns"] == 1_000_000_000 + 7 * 20_000_000
    assert requests is None


def test_request_events_keep_attributes(tmp_path):
    path = write_lines(tmp_path / "traces.json", _messy_lines())
    _, requests, _ = read_traces(path)
    assert list(requests["event"]) == [
        "journey.QUEUED",
        "journey.SCHEDULED",
        "journey.FINISHED",
        "api.ARRIVED",
        "api.DEPARTED",
    ]
    assert set(requests["request_id"]) == {"r1"}
    assert list(requests["scope"].unique()) == ["vllm.scheduler", "vllm.api"]
    queued = requests.iloc[0]
    assert queued["ts.monotonic_ns"] == 11 and queued["phase"] == "WAITING"
    assert requests.iloc[1]["scheduler.step"] == 6
    assert requests.iloc[2]["finish.status"] == "stopped"
    assert list(requests["time_unix_nano"]) == [10, 20, 30, 5, 40]


def test_span_without_request_id_is_reported(tmp_path):
    line = batch(("vllm.scheduler", [span("llm_core", [event("journey.QUEUED", 1)])]))
    _, requests, report = read_traces(write_lines(tmp_path / "traces.json", [line]))
    assert requests is None
    assert report.events_skipped == 1
    assert "gen_ai.request.id" in report.problems[0]


def test_gzip_reads_like_plain(tmp_path):
    lines = _messy_lines()
    plain, _, plain_report = read_traces(write_lines(tmp_path / "a" / "traces.json", lines))
    packed, _, packed_report = read_traces(write_lines(tmp_path / "b" / "traces.json.gz", lines))
    pd.testing.assert_frame_equal(plain, packed)
    assert packed_report.step_events == plain_report.step_events == 4
    assert packed_report.lines_skipped == 2


def test_truncated_gzip_keeps_rows_before_the_damage(tmp_path):
    path = write_lines(
        tmp_path / "traces.json.gz", [steps_line(list(range(i * 5, i * 5 + 5))) for i in range(200)]
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    steps, _, report = read_traces(path)
    assert 0 < len(steps) < 1000
    assert "corrupt or truncated" in report.problems[-1]


def test_problems_are_capped_but_all_counted(tmp_path, caplog):
    lines = ["not json"] * (PROBLEMS_KEPT + 15) + [steps_line([1])]
    with caplog.at_level("WARNING", logger="data_prep.traces"):
        steps, _, report = read_traces(write_lines(tmp_path / "traces.json", lines))
    assert len(steps) == 1
    assert report.problem_count == report.lines_skipped == PROBLEMS_KEPT + 15
    assert len(report.problems) == PROBLEMS_KEPT
    assert len(caplog.records) == PROBLEMS_KEPT + 1
    assert "15 more problems" in caplog.records[-1].getMessage()


def test_double_for_an_int_attribute_must_be_integral(tmp_path):
    good = step_event(step_values(1, 1_000), raw={"batch.decode_tokens": {"doubleValue": 8.0}})
    bad = step_event(step_values(2, 2_000), raw={"batch.decode_tokens": {"doubleValue": 8.5}})
    line = batch(("vllm.scheduler.step", [span("s", [good, bad])]))
    steps, _, report = read_traces(write_lines(tmp_path / "traces.json", [line]))
    assert list(steps["batch.decode_tokens"]) == [8]
    assert report.events_skipped == 1


def test_attribute_helper_writes_string_ints():
    assert attr("x", 42) == {"key": "x", "value": {"intValue": "42"}}


@pytest.mark.parametrize("progress", [True, False])
def test_progress_flag_does_not_change_output(tmp_path, progress):
    path = write_lines(tmp_path / "traces.json", [steps_line([1, 2, 3])])
    steps, _, _ = read_traces(path, progress=progress)
    assert len(steps) == 3
