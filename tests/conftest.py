"""Shared fixtures: a writer of OTLP/JSON-lines traces in the exporter's format, real data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from data_prep.schema import STEP_ATTRIBUTES

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def attr(key: str, value) -> dict:
    """One OTLP attribute; ints become string ``intValue`` as the exporter writes them."""
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def step_values(step_id: int, ts_start_ns: int, **overrides) -> dict:
    """Plausible BATCH_SUMMARY attribute values for one step."""
    values = {
        "step.id": step_id,
        "step.ts_start_ns": ts_start_ns,
        "step.ts_end_ns": ts_start_ns + 500_000,
        "step.duration_us": 500,
        "queue.running_depth": 8,
        "queue.waiting_depth": 0,
        "batch.num_prefill_reqs": 0,
        "batch.num_decode_reqs": 8,
        "batch.scheduled_tokens": 8,
        "batch.prefill_tokens": 0,
        "batch.decode_tokens": 8,
        "batch.num_finished": 0,
        "batch.num_preempted": 0,
        "kv.usage_gpu_ratio": 0.25,
        "kv.blocks_free_gpu": 750,
        "kv.blocks_total_gpu": 1000,
    }
    values.update(overrides)
    return values


def step_event(values: dict, drop: tuple[str, ...] = (), raw: dict | None = None) -> dict:
    """A ``step.BATCH_SUMMARY`` event; ``drop`` removes attributes, ``raw`` sets OTLP values."""
    attributes = [attr(k, values[k]) for k in STEP_ATTRIBUTES if k not in drop]
    for key, value in (raw or {}).items():
        attributes = [a if a["key"] != key else {"key": key, "value": value} for a in attributes]
    return {
        "timeUnixNano": str(values["step.ts_end_ns"]),
        "name": "step.BATCH_SUMMARY",
        "attributes": attributes,
    }


def event(name: str, time_ns: int, **attributes) -> dict:
    return {
        "timeUnixNano": str(time_ns),
        "name": name,
        "attributes": [attr(k, v) for k, v in attributes.items()],
    }


def span(name: str, events: list[dict], **attributes) -> dict:
    return {
        "traceId": "0" * 32,
        "spanId": "0" * 16,
        "name": name,
        "kind": 1,
        "attributes": [attr(k, v) for k, v in attributes.items()],
        "events": events,
    }


def batch(*scopes: tuple[str, list[dict]]) -> str:
    """One export batch (one line) holding ``(scope name, spans)`` pairs."""
    scope_spans = [{"scope": {"name": name}, "spans": spans} for name, spans in scopes]
    return json.dumps(
        {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": scope_spans}]}
    )


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write JSON lines, gzip-compressed when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def write_experiment(
    folder: Path,
    lines: list[str],
    model: str = "meta-llama/Llama-2-70b-hf",
    tp: int = 4,
    gz: bool = False,
) -> Path:
    """An experiment folder: traces plus ``exp-config.yaml``."""
    write_lines(folder / ("traces.json.gz" if gz else "traces.json"), lines)
    (folder / "exp-config.yaml").write_text(
        f"model: {model}\ntensor_parallelism: {tp}\nmax_model_len: 4096\n"
        "max_num_batched_tokens: 2048\nmax_num_seqs: 128\n"
    )
    return folder


def steps_line(
    step_ids: list[int], start_ns: int = 1_000_000_000, cycle_ns: int = 20_000_000, **overrides
) -> str:
    """One line of step events at a constant cycle time (step ``i`` starts at ``i·cycle``)."""
    events = [step_event(step_values(i, start_ns + i * cycle_ns, **overrides)) for i in step_ids]
    return batch(("vllm.scheduler.step", [span("scheduler_steps_0", events)]))


@pytest.fixture
def real_data() -> Path:
    """The shared real data folder, or a skip when this checkout has no ``../shared/data``."""
    if not (SHARED_DATA / "real").is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA.resolve()} (../shared/data) absent")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def tiny_steps(tmp_path_factory):
    """The step dataset of the tiny synthetic campaign (needs no ../shared)."""
    from data_prep.dataset import prepare_steps
    from data_prep.synth.campaign import run_campaign

    root = tmp_path_factory.mktemp("campaign")
    run_campaign("tiny", 0, root / "campaign", workers=1, progress=False)
    return prepare_steps([root / "campaign"]).steps
