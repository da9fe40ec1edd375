"""Throughput and memory of the streaming trace reader on a large synthetic ``traces.json``.

Writes a file of realistic export batches (BATCH_SUMMARY events with REQUEST_SNAPSHOTs and
request-journey spans, step ids increasing) to a temporary folder, parses it, and prints
rows/s, MB/s and peak RSS, which should stay far below the file size.

    .venv/bin/python benchmarks/bench_prep.py [--mb 300]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from data_prep.schema import STEP_ATTRIBUTES
from data_prep.traces import read_traces

STEPS_PER_LINE = 50  # sampled steps in one scheduler_steps_N span (~500 steps at 10%)
SNAPSHOTS_PER_STEP = 4
JOURNEY_EVENTS = ("QUEUED", "SCHEDULED", "FIRST_TOKEN", "FINISHED")


def _attr(key: str, value: int | float | str) -> dict:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def _line(first_step: int) -> str:
    """One export batch: a span of sampled steps plus one request's journey."""
    events = []
    for k in range(STEPS_PER_LINE):
        step = first_step + 10 * k + k % 3
        start = 20_000_000_000_000 + step * 19_000_000
        running = 20 + step % 50
        values = [
            step,
            start,
            start + 600_000,
            600,
            running,
            step % 7,
            step % 2,
            running - step % 2,
            running + 500 * (step % 2),
            500 * (step % 2),
            running - step % 2,
            step % 5 == 0,
            0,
            0.3 + (step % 100) / 1000,
            20_000 - step % 4000,
            31_356,
        ]
        attributes = [
            _attr(k, int(v) if kind == "int" else float(v))
            for (k, kind), v in zip(STEP_ATTRIBUTES.items(), values, strict=True)
        ]
        events.append(
            {
                "timeUnixNano": str(start + 600_000),
                "name": "step.BATCH_SUMMARY",
                "attributes": attributes,
            }
        )
        for r in range(SNAPSHOTS_PER_STEP):
            snapshot = {
                "request.id": f"cmpl-{step}-{r}",
                "request.phase": "DECODE",
                "request.num_prompt_tokens": 1000 + r,
                "request.num_computed_tokens": 1200,
                "request.num_output_tokens": 200,
                "request.scheduled_tokens_this_step": 1,
                "kv.blocks_allocated_gpu": 75,
                "kv.blocks_cached_gpu": 0,
            }
            events.append(
                {
                    "timeUnixNano": str(start + 600_000),
                    "name": "step.REQUEST_SNAPSHOT",
                    "attributes": [_attr(k, v) for k, v in snapshot.items()],
                }
            )
    journey = [
        {
            "timeUnixNano": str(first_step * 19_000_000 + i),
            "name": f"journey.{name}",
            "attributes": [
                _attr("ts.monotonic_ns", first_step * 19_000_000 + i),
                _attr("scheduler.step", first_step + i),
                _attr("phase", "DECODE"),
            ],
        }
        for i, name in enumerate(JOURNEY_EVENTS)
    ]
    spans = [
        {
            "scope": {"name": "vllm.scheduler.step"},
            "spans": [
                {"name": f"scheduler_steps_{first_step}", "attributes": [], "events": events}
            ],
        },
        {
            "scope": {"name": "vllm.scheduler"},
            "spans": [
                {
                    "name": "llm_core",
                    "events": journey,
                    "attributes": [_attr("gen_ai.request.id", f"cmpl-{first_step}")],
                }
            ],
        },
    ]
    return json.dumps({"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": spans}]})


def write_trace(path: Path, megabytes: float) -> int:
    """Write lines until the file reaches ``megabytes``; returns the number of lines."""
    lines, written, first_step = 0, 0, 0
    with open(path, "w") as out:
        while written < megabytes * 2**20:
            text = _line(first_step) + "\n"
            out.write(text)
            written += len(text)
            lines += 1
            first_step += 10 * STEPS_PER_LINE
    return lines


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=300, help="size of the synthetic file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traces.json"
        began = time.perf_counter()
        lines = write_trace(path, args.mb)
        size_mb = path.stat().st_size / 2**20
        print(
            f"wrote {size_mb:.0f} MB, {lines} lines in {time.perf_counter() - began:.1f} s; "
            f"peak RSS so far {peak_rss_mb():.0f} MB"
        )
        began = time.perf_counter()
        steps, requests, report = read_traces(path)
        elapsed = time.perf_counter() - began
    events = report.step_events + report.request_events + report.snapshots_ignored
    print(
        f"parsed {len(steps)} step rows, {len(requests)} request events, "
        f"{report.snapshots_ignored} snapshots ignored in {elapsed:.1f} s"
    )
    print(
        f"{len(steps) / elapsed:,.0f} step rows/s, {events / elapsed:,.0f} events/s, "
        f"{size_mb / elapsed:.1f} MB/s"
    )
    print(
        f"peak RSS {peak_rss_mb():.0f} MB for a {size_mb:.0f} MB file "
        f"(step table {steps.memory_usage(deep=True).sum() / 2**20:.0f} MB)"
    )


if __name__ == "__main__":
    main()
