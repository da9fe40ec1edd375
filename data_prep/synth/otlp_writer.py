"""Write a twin run in the instrumented vLLM exporter's OTLP/JSON-lines layout.

One export batch per line: ``{"resourceSpans": [{"resource": ..., "scopeSpans": [...]}]}``.
Step events (``step.BATCH_SUMMARY``, the 16 attributes) of the *sampled* steps go to scope
``vllm.scheduler.step`` in spans ``scheduler_steps_N`` covering 100 steps each; every request
gets a ``llm_core`` span (scope ``vllm.scheduler``, journey events) and a ``llm_request`` span
(scope ``vllm.api``, ``api.ARRIVED`` / ``api.DEPARTED`` / ``api.ABORTED``), exported in the
line whose time window contains the request's end (so a line may mix scopes). Output is
byte-deterministic: keys in fixed order, ids derived by hashing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from data_prep.synth.twin import STEP_COLUMNS, TwinResult

STEPS_PER_SPAN = 100
SPANS_PER_LINE = 5
_DOUBLE = {"kv.usage_gpu_ratio"}
_RESOURCE = {
    "attributes": [
        {"key": "telemetry.sdk.language", "value": {"stringValue": "python"}},
        {"key": "service.name", "value": {"stringValue": "vllm"}},
    ]
}
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def _ival(v) -> dict:
    return {"intValue": str(int(v))}


def _attr(key: str, value) -> dict:
    if isinstance(value, str):
        return {"key": key, "value": {"stringValue": value}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": _ival(value)}


def _hex_id(text: str, nbytes: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=nbytes).hexdigest()


def _span(trace: str, name: str, start: int, end: int, attrs: list, events: list) -> dict:
    return {
        "traceId": _hex_id(trace, 16),
        "spanId": _hex_id(trace + "/" + name, 8),
        "flags": 256,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": attrs,
        "events": events,
    }


def request_id(experiment_id: str, index: int) -> str:
    return f"cmpl-{_hex_id(f'{experiment_id}/req/{index}', 12)}-0"


def _journey_events(journey: list[tuple], offset: int) -> list[dict]:
    out = []
    for ev, ts, step, phase, pdone, ptotal, ddone, dmax, npre, kind, status in journey:
        attrs = [
            _attr("ts.monotonic_ns", ts),
            _attr("scheduler.step", step),
            _attr("phase", phase),
            _attr("prefill.done_tokens", pdone),
            _attr("prefill.total_tokens", ptotal),
            _attr("decode.done_tokens", ddone),
            _attr("decode.max_tokens", dmax),
            _attr("num_preemptions", npre),
        ]
        if kind:
            attrs.append(_attr("schedule.kind", kind))
        if status:
            attrs.append(_attr("finish.status", status))
        out.append({"timeUnixNano": str(ts + offset), "name": f"journey.{ev}", "attributes": attrs})
    return out


def write_traces(
    result: TwinResult, sampled: np.ndarray, experiment_id: str, epoch_offset_ns: int, path: Path
) -> int:
    """Write ``traces.json``; returns the number of sampled step events written."""
    steps = result.steps
    idx = np.flatnonzero(sampled)
    cols = [steps[c].to_numpy() for c in STEP_COLUMNS]
    n_steps = len(steps)
    # step spans, keyed by their 100-step interval
    spans: list[tuple[int, dict]] = []
    if len(idx):
        groups = idx // STEPS_PER_SPAN
        bounds = np.flatnonzero(np.diff(groups)) + 1
        for chunk in np.split(idx, bounds):
            seq = int(chunk[0] // STEPS_PER_SPAN)
            events = []
            for i in chunk:
                attrs = []
                for c, name in zip(cols, STEP_COLUMNS, strict=True):
                    v = c[i]
                    if name in _DOUBLE:
                        attrs.append({"key": name, "value": {"doubleValue": float(v)}})
                    else:
                        attrs.append({"key": name, "value": {"intValue": str(int(v))}})
                events.append(
                    {
                        "timeUnixNano": str(int(cols[2][i]) + epoch_offset_ns),
                        "name": "step.BATCH_SUMMARY",
                        "attributes": attrs,
                    }
                )
            first, last = int(chunk[0]), int(chunk[-1])
            range_end = min((seq + 1) * STEPS_PER_SPAN - 1, n_steps - 1)
            attrs = [
                _attr("scheduler.span_sequence", seq),
                _attr("scheduler.step_range_start", int(cols[0][first])),
                _attr("scheduler.closure_interval", STEPS_PER_SPAN),
                _attr("scheduler.step_range_end", range_end),
            ]
            start = int(cols[1][first]) + epoch_offset_ns
            end = int(cols[2][last]) + epoch_offset_ns
            span = _span(
                f"{experiment_id}/steps/{seq}", f"scheduler_steps_{seq}", start, end, attrs, events
            )
            spans.append((end - epoch_offset_ns, span))

    # request spans, ordered by their end time
    reqs = result.requests
    req_items: list[tuple[int, int]] = []
    for i, fin in enumerate(reqs["finish_ns"].to_numpy()):
        end = int(fin) if fin == fin else int(result.end_ns)
        req_items.append((end, i))
    req_items.sort()

    def request_spans(i: int, end: int) -> tuple[dict, dict]:
        rid = request_id(experiment_id, i)
        journey = result.journeys[i]
        arrival = int(reqs["arrival_ns"].iat[i])
        core = _span(
            f"{experiment_id}/req/{i}",
            "llm_core",
            arrival + epoch_offset_ns,
            end + epoch_offset_ns,
            [_attr("gen_ai.request.id", rid)],
            _journey_events(journey, epoch_offset_ns),
        )
        status = reqs["status"].iat[i]
        last = "api.DEPARTED" if status == "finished" else "api.ABORTED"
        api_events = [
            {
                "timeUnixNano": str(arrival + epoch_offset_ns),
                "name": "api.ARRIVED",
                "attributes": [_attr("ts.monotonic_ns", arrival)],
            },
            {
                "timeUnixNano": str(end + 150_000 + epoch_offset_ns),
                "name": last,
                "attributes": [_attr("ts.monotonic_ns", end + 150_000)],
            },
        ]
        api = _span(
            f"{experiment_id}/api/{i}",
            "llm_request",
            arrival + epoch_offset_ns,
            end + 150_000 + epoch_offset_ns,
            [_attr("gen_ai.request.id", rid)],
            api_events,
        )
        return core, api

    n_events = 0
    r_pos = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        n_lines = max(1, -(-len(spans) // SPANS_PER_LINE))
        for line_no in range(n_lines):
            chunk = spans[line_no * SPANS_PER_LINE : (line_no + 1) * SPANS_PER_LINE]
            last_line = line_no == n_lines - 1
            window_end = chunk[-1][0] if chunk else 0
            core_spans, api_spans = [], []
            while r_pos < len(req_items) and (last_line or req_items[r_pos][0] <= window_end):
                end, i = req_items[r_pos]
                core, api = request_spans(i, end)
                core_spans.append(core)
                api_spans.append(api)
                r_pos += 1
            scope_spans = []
            if chunk:
                step_spans = [s for _, s in chunk]
                n_events += sum(len(s["events"]) for s in step_spans)
                scope_spans.append({"scope": {"name": "vllm.scheduler.step"}, "spans": step_spans})
            if core_spans:
                scope_spans.append({"scope": {"name": "vllm.scheduler"}, "spans": core_spans})
                scope_spans.append({"scope": {"name": "vllm.api"}, "spans": api_spans})
            if not scope_spans:
                continue
            line = {"resourceSpans": [{"resource": _RESOURCE, "scopeSpans": scope_spans}]}
            fh.write(_DUMPS(line))
            fh.write("\n")
    return n_events
