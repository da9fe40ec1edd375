"""Streaming reader of the instrumented vLLM's OTLP/JSON-lines ``traces.json``.

Trace files reach a gigabyte, so they are read one export batch (line) at a time and only
the extracted rows are kept. Bad input never aborts a parse: each malformed line or event
is skipped, reported with its file and line number, and counted in a :class:`ParseReport`.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import sys
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep.schema import STEP_ATTRIBUTES

logger = logging.getLogger(__name__)

STEP_SCOPE = "vllm.scheduler.step"
JOURNEY_SCOPE = "vllm.scheduler"
API_SCOPE = "vllm.api"
BATCH_SUMMARY = "step.BATCH_SUMMARY"
REQUEST_SNAPSHOT = "step.REQUEST_SNAPSHOT"
REQUEST_ID_KEYS = ("gen_ai.request.id", "request.id")
REQUEST_COLUMNS = ("request_id", "scope", "event", "time_unix_nano")

PROBLEMS_KEPT = 20  # problems stored in a report and logged per file; the rest are counted
PROGRESS_MIN_BYTES = 64 * 2**20  # below this a progress bar is noise
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class ParseReport:
    """What one trace file yielded and what had to be skipped (and why)."""

    path: str
    lines_read: int = 0
    lines_skipped: int = 0
    events_skipped: int = 0
    step_events: int = 0
    request_events: int = 0
    snapshots_ignored: int = 0
    duplicates_dropped: int = 0
    problem_count: int = 0
    problems: list[str] = field(default_factory=list)

    def add_problem(self, message: str, log: bool = True) -> None:
        """Count a problem; keep and log only the first :data:`PROBLEMS_KEPT`."""
        self.problem_count += 1
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(message)
            if log:
                logger.warning(message)


class _LineError(ValueError):
    """A line whose JSON is valid but is not an OTLP export batch."""


def _attributes(items: object) -> dict[str, dict]:
    """``[{"key": k, "value": {...}}, ...]`` → ``{k: {...}}`` (raw OTLP values)."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _LineError("attributes is not a list")
    return {item["key"]: item.get("value") or {} for item in items}


def _plain(value: dict) -> object:
    """Decode an OTLP attribute value; an undecodable intValue stays a string."""
    if "intValue" in value:
        try:
            return int(value["intValue"])
        except (TypeError, ValueError):
            return value["intValue"]
    for kind in ("doubleValue", "stringValue", "boolValue"):
        if kind in value:
            return value[kind]
    return None


def _number(value: dict, kind: str) -> int | float:
    """Decode a numeric step attribute strictly; raise ``ValueError`` when it is not one."""
    raw = value.get("intValue", value.get("doubleValue", value.get("stringValue")))
    if raw is None or isinstance(raw, bool):
        raise ValueError
    if kind == "int":
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        number = int(raw)
        if not INT64_MIN <= number <= INT64_MAX:
            raise ValueError
        return number
    number = float(raw)
    if not math.isfinite(number):
        raise ValueError
    return number


class _Parser:
    """Accumulates the rows of one file; see :func:`read_traces`."""

    def __init__(self, path: Path, log_problems: bool) -> None:
        self.name = str(path)
        self.log = log_problems
        self.report = ParseReport(path=self.name)
        # Typed arrays: 8 bytes a value, so memory grows with the rows and little else.
        self.steps: dict[str, array] = {
            column: array("q" if kind == "int" else "d") for column, kind in STEP_ATTRIBUTES.items()
        }
        self.requests: list[dict] = []

    def problem(self, lineno: int, message: str) -> None:
        self.report.add_problem(f"{self.name}:{lineno}: {message}", self.log)

    def line(self, lineno: int, text: bytes) -> None:
        """Parse one export batch; commit its rows only if its structure is sound."""
        try:
            batch = json.loads(text)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            self.report.lines_skipped += 1
            reason = getattr(err, "msg", None) or type(err).__name__
            self.problem(lineno, f"malformed JSON line skipped ({reason})")
            return
        steps: list[list] = []
        requests: list[dict] = []
        counts = {"events_skipped": 0, "snapshots_ignored": 0}
        problems: list[str] = []
        try:
            if not isinstance(batch, dict) or not isinstance(batch.get("resourceSpans"), list):
                raise _LineError("no resourceSpans list")
            for resource in batch["resourceSpans"]:
                for scope_spans in resource.get("scopeSpans") or []:
                    scope = (scope_spans.get("scope") or {}).get("name")
                    for span in scope_spans.get("spans") or []:
                        self._span(scope, span, steps, requests, counts, problems)
        except (_LineError, AttributeError, TypeError, KeyError) as err:
            self.report.lines_skipped += 1
            detail = str(err) if isinstance(err, _LineError) else f"{type(err).__name__}: {err}"
            self.problem(lineno, f"line is not an OTLP export batch, skipped ({detail})")
            return
        for message in problems:
            self.problem(lineno, message)
        for row in steps:
            for column, value in zip(self.steps, row, strict=True):
                self.steps[column].append(value)
        self.requests.extend(requests)
        self.report.step_events += len(steps)
        self.report.request_events += len(requests)
        self.report.events_skipped += counts["events_skipped"]
        self.report.snapshots_ignored += counts["snapshots_ignored"]

    def _span(self, scope, span, steps, requests, counts, problems) -> None:
        events = span.get("events") or []
        if scope == STEP_SCOPE:
            for event in events:
                name = event.get("name")
                if name == BATCH_SUMMARY:
                    row = self._step(event, problems)
                    if row is None:
                        counts["events_skipped"] += 1
                    else:
                        steps.append(row)
                elif name == REQUEST_SNAPSHOT:
                    counts["snapshots_ignored"] += 1
            return
        if scope == JOURNEY_SCOPE and span.get("name") == "llm_core":
            prefix = "journey."
        elif scope == API_SCOPE and span.get("name") == "llm_request":
            prefix = "api."
        else:
            return
        wanted = [event for event in events if str(event.get("name", "")).startswith(prefix)]
        if not wanted:
            return
        span_attrs = _attributes(span.get("attributes"))
        request_id = next(
            (_plain(span_attrs[key]) for key in REQUEST_ID_KEYS if key in span_attrs), None
        )
        if request_id is None:
            counts["events_skipped"] += len(wanted)
            problems.append(f"{span.get('name')} span without gen_ai.request.id: events skipped")
            return
        for event in wanted:
            record = {
                "request_id": str(request_id),
                "scope": scope,
                "event": event["name"],
                "time_unix_nano": _plain({"intValue": event.get("timeUnixNano")}),
            }
            for key, value in _attributes(event.get("attributes")).items():
                record.setdefault(key, _plain(value))
            requests.append(record)

    @staticmethod
    def _step(event: dict, problems: list[str]) -> list | None:
        """The 16 typed attributes of a BATCH_SUMMARY, or ``None`` (with a problem noted)."""
        attrs = _attributes(event.get("attributes"))
        row = []
        for name, kind in STEP_ATTRIBUTES.items():
            if name not in attrs:
                problems.append(f"{BATCH_SUMMARY} missing attribute {name}: event skipped")
                return None
            try:
                row.append(_number(attrs[name], kind))
            except (TypeError, ValueError, OverflowError):
                shown = json.dumps(attrs[name])[:60]
                problems.append(
                    f"{BATCH_SUMMARY} attribute {name} has non-numeric value {shown}: event skipped"
                )
                return None
        return row

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        steps = pd.DataFrame(
            {
                column: np.array(values, dtype="int64" if values.typecode == "q" else "float64")
                for column, values in self.steps.items()
            }
        )
        return steps, pd.DataFrame(self.requests) if self.requests else None


def trace_file(folder: str | Path) -> Path | None:
    """The ``traces.json`` or ``traces.json.gz`` of an experiment folder, if any."""
    for name in ("traces.json", "traces.json.gz"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def read_traces(
    path: str | Path, log_problems: bool = True, progress: bool | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None, ParseReport]:
    """Stream one OTLP/JSON-lines file (``.gz`` allowed) into step rows and request events.

    Returns the BATCH_SUMMARY rows (the 16 :data:`STEP_ATTRIBUTES`, typed), the request
    journey/API events (``request_id, scope, event, time_unix_nano`` plus the event's
    attributes; ``None`` when there are none) and the :class:`ParseReport`. ``progress``
    forces the byte progress bar on or off; by default it shows for big files on a tty.
    """
    path = Path(path)
    parser = _Parser(path, log_problems)
    size = path.stat().st_size
    if progress is None:
        progress = size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
    lineno = 0
    with (
        open(path, "rb") as raw,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar,
    ):
        stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        done = 0
        try:
            for lineno, text in enumerate(stream, 1):
                parser.report.lines_read += 1
                if text.strip():
                    parser.line(lineno, text)
                position = raw.tell()
                bar.update(position - done)
                done = position
        except (EOFError, OSError, zlib.error) as err:
            parser.report.lines_skipped += 1
            parser.problem(lineno + 1, f"corrupt or truncated file, rest ignored ({err})")
    report = parser.report
    hidden = report.problem_count - len(report.problems)
    if log_problems and hidden:
        logger.warning("%s: … %d more problems", parser.name, hidden)
    steps, requests = parser.frames()
    return steps, requests, report
