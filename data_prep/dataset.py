"""Experiments on disk → one step table with targets, derived features and experiment facts.

Every later stage (fits, baselines, evaluation) reads the table written here, so the
targets (``schedule_us``, ``cycle_us``) and the leak-free predictor list are defined once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from data_prep.schema import (
    CYCLE_GAP,
    CYCLE_TARGET,
    EXPERIMENT_COLUMNS,
    KV_TOKENS,
    ROW_KEY,
    SCHEDULE_TARGET,
    STEP_ATTRIBUTES,
)
from data_prep.specs import KV_BLOCK_TOKENS, canonical_model_name, get_model_spec
from data_prep.traces import ParseReport, read_traces, trace_file

logger = logging.getLogger(__name__)

NEW_KV_BLOCKS = "new_kv_blocks"  # mean newly allocated KV blocks per step since the last sample
PHASE = "phase"  # "decode" | "mixed" | "prefill_heavy"
DERIVED_COLUMNS: tuple[str, ...] = (
    SCHEDULE_TARGET,
    CYCLE_TARGET,
    CYCLE_GAP,
    KV_TOKENS,
    NEW_KV_BLOCKS,
    PHASE,
)
STEP_COLUMNS: tuple[str, ...] = (*EXPERIMENT_COLUMNS, *STEP_ATTRIBUTES, *DERIVED_COLUMNS)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in STEP_COLUMNS if not c.startswith("max_"))
TABULAR_REQUIRED: tuple[str, ...] = (*STEP_ATTRIBUTES, "experiment_id", "model", "workload", "tp")
CONFIG_LIMITS = ("max_num_batched_tokens", "max_num_seqs", "max_model_len")

# Columns a model may use as predictors: numeric, known before the step runs. Targets, the
# outcome counts, ids and timestamps (and step.duration_us, which *is* the schedule target)
# are excluded so that no fit picks up the answer by accident.
PREDICTOR_COLUMNS: tuple[str, ...] = (
    "tp",
    "max_num_batched_tokens",
    "max_num_seqs",
    "max_model_len",
    "queue.running_depth",
    "queue.waiting_depth",
    "batch.num_prefill_reqs",
    "batch.num_decode_reqs",
    "batch.scheduled_tokens",
    "batch.prefill_tokens",
    "batch.decode_tokens",
    "kv.usage_gpu_ratio",
    "kv.blocks_free_gpu",
    "kv.blocks_total_gpu",
    KV_TOKENS,
    NEW_KV_BLOCKS,
)

FOLDER_PATTERN = re.compile(r"^(?P<stamp>\d{8}-\d{6})-(?P<slug>.+)-tp(?P<tp>\d+)-(?P<workload>.+)$")


def predictor_columns(steps: pd.DataFrame | None = None) -> list[str]:
    """The allowed predictors (:data:`PREDICTOR_COLUMNS`), restricted to those in ``steps``."""
    if steps is None:
        return list(PREDICTOR_COLUMNS)
    return [column for column in PREDICTOR_COLUMNS if column in steps.columns]


@dataclass
class PrepResult:
    """Output of :func:`prepare_steps`: the step table, request events and per-run reports."""

    steps: pd.DataFrame
    requests: pd.DataFrame | None
    reports: dict[str, ParseReport]
    summary: pd.DataFrame


def _architecture(model: str, model_config_dirs: Sequence[str | Path]) -> str:
    try:
        return get_model_spec(model, model_config_dirs).architecture
    except KeyError:
        logger.warning(
            "unknown model %r: architecture set to 'dense' (pass its config.json)", model
        )
        return "dense"


def _read_config(folder: Path) -> dict:
    path = folder / "exp-config.yaml"
    if not path.is_file():
        logger.warning("%s: no exp-config.yaml; model and tp taken from the folder name", folder)
        return {}
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: unreadable YAML: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of keys, got {type(config).__name__}")
    return config


def read_experiment(
    folder: str | Path, max_gap: int = 32, model_config_dirs: Sequence[str | Path] = ()
) -> tuple[pd.DataFrame, pd.DataFrame | None, ParseReport]:
    """Parse one experiment folder into its finished step rows, request events and report.

    The folder name ``<date>-<time>-<slug>-tp<N>-<workload>`` gives the workload (and the
    model and TP when ``exp-config.yaml`` lacks them); model names are canonicalised so that
    differently spelt slugs of one model agree.
    """
    folder = Path(folder)
    traces = trace_file(folder)
    if traces is None:
        raise ValueError(f"{folder}: no traces.json or traces.json.gz in this folder")
    config = _read_config(folder)
    match = FOLDER_PATTERN.match(folder.name)
    if match is None:
        logger.warning("%s: folder name is not <date>-<time>-<model>-tp<N>-<workload>", folder)
    parts = match.groupdict() if match else {"slug": folder.name, "tp": None, "workload": None}
    raw_model = config.get("model") or parts["slug"]
    tp = config.get("tensor_parallelism") or parts["tp"] or 1
    model = canonical_model_name(str(raw_model))
    facts = {
        "experiment_id": folder.name,
        "model": model,
        "architecture": _architecture(model, model_config_dirs),
        "tp": int(tp),
        "workload": str(parts["workload"] or config.get("workload") or "unknown"),
        **{key: config.get(key) for key in CONFIG_LIMITS},
    }
    steps, requests, report = read_traces(traces)
    for column, value in facts.items():
        steps[column] = value
    steps, duplicates = finish_steps(steps, max_gap)
    report.duplicates_dropped = duplicates
    if requests is not None:
        requests.insert(0, "experiment_id", folder.name)
    return steps, requests, report


def finish_steps(steps: pd.DataFrame, max_gap: int = 32) -> tuple[pd.DataFrame, int]:
    """Type, sort and de-duplicate raw rows and add the derived columns.

    Returns the table in :data:`STEP_COLUMNS` order and how many duplicate
    ``(experiment_id, step.id)`` rows were dropped (the first one is kept).
    """
    steps = steps.sort_values(list(ROW_KEY), kind="stable")
    duplicated = steps.duplicated(list(ROW_KEY), keep="first")
    steps = steps.loc[~duplicated].reset_index(drop=True)
    for column in ("experiment_id", "model", "architecture", "workload"):
        steps[column] = steps[column].astype("str")
    steps["tp"] = steps["tp"].astype("int64")
    for column in CONFIG_LIMITS:
        steps[column] = pd.to_numeric(steps[column]).astype("Int64")
    for column, kind in STEP_ATTRIBUTES.items():
        steps[column] = steps[column].astype("int64" if kind == "int" else "float64")

    run = steps["experiment_id"]
    step_id = steps["step.id"]
    same_next = run.shift(-1) == run
    gap = (step_id.shift(-1) - step_id).where(same_next)
    valid = same_next & (gap <= max_gap)
    span_ns = steps["step.ts_start_ns"].shift(-1) - steps["step.ts_start_ns"]
    cycle = (span_ns / gap / 1000.0).where(valid)
    valid &= cycle > 0  # a clock going backwards gives no usable cycle time
    steps[SCHEDULE_TARGET] = steps["step.duration_us"].astype("float64")
    steps[CYCLE_TARGET] = cycle.where(valid).astype("float64")
    steps[CYCLE_GAP] = gap.where(valid).astype("Int64")
    used = steps["kv.blocks_total_gpu"] - steps["kv.blocks_free_gpu"]
    steps[KV_TOKENS] = (used * KV_BLOCK_TOKENS).astype("int64")

    same_prev = run.shift(1) == run
    freed = steps["kv.blocks_free_gpu"].shift(1) - steps["kv.blocks_free_gpu"]
    since = (step_id - step_id.shift(1)).clip(lower=1)
    new_blocks = (freed.clip(lower=0) / since).where(same_prev, 0.0)
    steps[NEW_KV_BLOCKS] = new_blocks.fillna(0.0).astype("float64")

    prefill = steps["batch.prefill_tokens"]
    phase = np.where(
        prefill == 0,
        "decode",
        np.where(prefill >= steps["batch.decode_tokens"], "prefill_heavy", "mixed"),
    )
    steps[PHASE] = pd.Series(phase, index=steps.index, dtype="str")
    return steps[list(STEP_COLUMNS)], int(duplicated.sum())


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read table: {err}") from None
    raise ValueError(f"{path}: not an experiment folder nor a .parquet/.csv/.csv.gz table")


def _require(table: pd.DataFrame, columns, path: Path) -> None:
    for column in columns:
        if column not in table.columns:
            raise ValueError(f"{path}: missing required column {column!r}")


def _read_tabular(
    path: Path, max_gap: int, model_config_dirs: Sequence[str | Path]
) -> tuple[pd.DataFrame, dict[str, ParseReport]]:
    """A seed-style table (dotted columns + experiment facts) → finished rows and reports."""
    table = _read_table(path)
    _require(table, TABULAR_REQUIRED, path)
    incomplete = table[list(STEP_ATTRIBUTES)].isna().any(axis=1)
    dropped = table.loc[incomplete].groupby("experiment_id").size()
    table = table.loc[~incomplete].copy()
    table["model"] = table["model"].astype(str).map(canonical_model_name)
    if "architecture" not in table.columns:
        archs = {m: _architecture(m, model_config_dirs) for m in table["model"].unique()}
        table["architecture"] = table["model"].map(archs)
    for column in CONFIG_LIMITS:
        if column not in table.columns:
            table[column] = pd.NA
    steps, _ = finish_steps(table, max_gap)
    reports = {}
    raw_counts = table.groupby("experiment_id").size()
    for experiment, rows in steps.groupby("experiment_id").size().items():
        report = ParseReport(path=str(path), step_events=int(raw_counts[experiment]))
        report.duplicates_dropped = int(raw_counts[experiment] - rows)
        report.events_skipped = int(dropped.get(experiment, 0))
        if report.events_skipped:
            report.add_problem(
                f"{path}: {report.events_skipped} rows of {experiment} "
                "with missing attributes dropped"
            )
        reports[experiment] = report
    return steps, reports


def _experiment_folders(path: Path) -> list[Path]:
    if trace_file(path) is not None:
        return [path]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and trace_file(p) is not None)
    if not folders:
        raise ValueError(f"{path}: no traces.json here nor in any sub-folder")
    return folders


def _summary(steps: pd.DataFrame, reports: dict[str, ParseReport]) -> pd.DataFrame:
    rows = []
    for experiment, report in reports.items():
        part = steps[steps["experiment_id"] == experiment]
        first = part.iloc[0] if len(part) else None
        rows.append(
            {
                "experiment_id": experiment,
                "rows": len(part),
                "model": None if first is None else first["model"],
                "workload": None if first is None else first["workload"],
                "tp": None if first is None else int(first["tp"]),
                "cycle_coverage": float(part[CYCLE_TARGET].notna().mean()) if len(part) else 0.0,
                "lines_skipped": report.lines_skipped,
                "events_skipped": report.events_skipped,
                "duplicates": report.duplicates_dropped,
            }
        )
    return pd.DataFrame(rows)


def prepare_steps(
    inputs: list[str | Path], max_gap: int = 32, model_config_dirs: Sequence[str | Path] = ()
) -> PrepResult:
    """Build the step table from experiment folders, folders of them, or seed-style tables."""
    frames, request_frames, reports = [], [], {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        if path.is_dir():
            for folder in _experiment_folders(path):
                if folder.name in reports:
                    raise ValueError(f"{folder}: experiment {folder.name} given twice")
                steps, requests, report = read_experiment(folder, max_gap, model_config_dirs)
                frames.append(steps)
                reports[folder.name] = report
                if requests is not None:
                    request_frames.append(requests)
        else:
            steps, table_reports = _read_tabular(path, max_gap, model_config_dirs)
            twice = sorted(set(table_reports) & set(reports))
            if twice:
                raise ValueError(f"{path}: experiment {twice[0]} given twice")
            frames.append(steps)
            reports.update(table_reports)
    steps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STEP_COLUMNS)
    steps = steps.sort_values(list(ROW_KEY), kind="stable").reset_index(drop=True)
    requests = pd.concat(request_frames, ignore_index=True) if request_frames else None
    return PrepResult(steps, requests, reports, _summary(steps, reports))


def _uniform_object_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Cast object columns holding mixed Python types to strings so Arrow can store them."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object:
            kinds = {type(v) for v in table[column].dropna()}
            if len(kinds) > 1:
                table[column] = table[column].map(lambda v: v if pd.isna(v) else str(v))
    return table


def write_steps(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a step (or request) table as Parquet via pyarrow; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _uniform_object_columns(table).to_parquet(path, engine="pyarrow", index=False)
    return path


def load_steps(path: str | Path) -> pd.DataFrame:
    """Read a step table written by :func:`write_steps` (or a CSV of it), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    table = _read_table(path)
    _require(table, REQUIRED_COLUMNS, path)
    if CYCLE_GAP in table.columns:
        table[CYCLE_GAP] = table[CYCLE_GAP].astype("Int64")
    for column in CONFIG_LIMITS:
        if column in table.columns:
            table[column] = pd.to_numeric(table[column]).astype("Int64")
    return table
