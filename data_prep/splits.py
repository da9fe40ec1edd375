"""Fixed train/valid/test splits of the step table, saved as row keys.

Splits are made once and stored (``split_indices.json``) so every model and baseline is
scored on the same held-out rows; rows are named by ``(experiment_id, step.id)``, which
survives re-sorting and re-preparing the table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.schema import ROW_KEY

EXPLICIT = ("stratified", "temporal")
FOLD_COLUMNS = {"lomo": "model", "lowo": "workload"}


def _keys(table: pd.DataFrame) -> list[list]:
    ordered = table.sort_values(list(ROW_KEY))
    return [
        [str(run), int(step)]
        for run, step in zip(ordered[ROW_KEY[0]], ordered[ROW_KEY[1]], strict=True)
    ]


def make_splits(
    steps: pd.DataFrame,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    temporal_test_fraction: float = 0.2,
) -> dict:
    """Stratified (by model × workload), temporal (last part of each run) and LOMO/LOWO splits.

    Deterministic for a given ``seed`` and table. LOMO/LOWO folds are stored as rules
    (held-out value of ``column``) because they follow from the table itself.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    if not 0 <= temporal_test_fraction <= 1:
        raise ValueError(f"temporal_test_fraction must be in [0, 1]: {temporal_test_fraction}")
    keyed = steps[[*ROW_KEY, "model", "workload"]].sort_values(list(ROW_KEY))
    rng = np.random.default_rng(seed)
    stratified: dict[str, list] = {"train": [], "valid": [], "test": []}
    for _, group in keyed.groupby(["model", "workload"], sort=True):
        order = group.iloc[rng.permutation(len(group))]
        n_train = round(fractions[0] * len(group))
        n_valid = round(fractions[1] * len(group))
        stratified["train"].append(order.iloc[:n_train])
        stratified["valid"].append(order.iloc[n_train : n_train + n_valid])
        stratified["test"].append(order.iloc[n_train + n_valid :])
    temporal: dict[str, list] = {"train": [], "test": []}
    for _, run in keyed.groupby(ROW_KEY[0], sort=True):
        n_test = round(temporal_test_fraction * len(run))
        temporal["train"].append(run.iloc[: len(run) - n_test])
        temporal["test"].append(run.iloc[len(run) - n_test :])
    empty = keyed.iloc[:0]
    splits: dict = {
        "seed": int(seed),
        "row_key": list(ROW_KEY),
        "fractions": [float(f) for f in fractions],
        "temporal_test_fraction": float(temporal_test_fraction),
        "n_rows": len(keyed),
    }
    for name, parts in (("stratified", stratified), ("temporal", temporal)):
        splits[name] = {part: _keys(pd.concat(frames or [empty])) for part, frames in parts.items()}
    for name, column in FOLD_COLUMNS.items():
        values = sorted(keyed[column].astype(str).unique())
        splits[name] = (
            [{"held_out": value, "column": column} for value in values] if len(values) > 1 else []
        )
    return splits


def save_splits(splits: dict, path: str | Path) -> Path:
    """Write the splits as compact JSON (byte-identical for identical splits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits, separators=(",", ":")) + "\n")
    return path


def load_splits(path: str | Path) -> dict:
    """Read splits written by :func:`save_splits`, checking the parts later code relies on."""
    path = Path(path)
    try:
        splits = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read splits: {err}") from None
    for key in ("seed", "row_key", *EXPLICIT, *FOLD_COLUMNS):
        if key not in splits:
            raise ValueError(f"{path}: splits lack the {key!r} entry")
    return splits


def select_rows(steps: pd.DataFrame, splits: dict, name: str, part: str) -> pd.Series:
    """Boolean mask over ``steps`` for one part, e.g. ``("temporal", "test")`` or
    ``("lomo:llama-2-70b", "train")``."""
    if name in EXPLICIT:
        if part not in splits[name]:
            raise KeyError(f"split {name!r} has no part {part!r}; parts: {sorted(splits[name])}")
        wanted = pd.MultiIndex.from_tuples(
            [tuple(key) for key in splits[name][part]], names=list(ROW_KEY)
        )
        rows = pd.MultiIndex.from_arrays(
            [steps[ROW_KEY[0]].astype(str), steps[ROW_KEY[1]].astype("int64")]
        )
        return pd.Series(rows.isin(wanted), index=steps.index, name=f"{name}:{part}")
    kind, _, held_out = name.partition(":")
    folds = (
        {fold["held_out"]: fold for fold in splits.get(kind, [])} if kind in FOLD_COLUMNS else {}
    )
    if held_out not in folds:
        names = [*EXPLICIT] + [f"{k}:{f['held_out']}" for k in FOLD_COLUMNS for f in splits[k]]
        raise KeyError(f"unknown split {name!r}; available: {names}")
    if part not in ("train", "test"):
        raise KeyError(f"split {name!r} has parts 'train' and 'test', not {part!r}")
    test = steps[folds[held_out]["column"]].astype(str) == held_out
    return (test if part == "test" else ~test).rename(f"{name}:{part}")


def subsample_rows(rows: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """At most ``max_rows`` of the True rows of a mask, chosen with ``seed`` (a new mask)."""
    rows = np.asarray(rows, dtype=bool)
    if not max_rows or rows.sum() <= max_rows:
        return rows.copy()
    chosen = np.random.default_rng(seed).choice(np.flatnonzero(rows), size=max_rows, replace=False)
    out = np.zeros(rows.shape, dtype=bool)
    out[chosen] = True
    return out
