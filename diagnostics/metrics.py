"""Accuracy and calibration metrics over plain arrays, and per-group breakdowns.

Percentage errors are in percent; coverages are fractions. ``samples`` arrays are laid out
(draw, row) like ``StepTimeModel.sample_posterior_predictive``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BREAKDOWN_GROUPS = ("model", "architecture", "workload", "phase", "load")
LOAD_COLUMN = "queue.running_depth"
LOAD_LABELS = ("low", "mid", "high")


def _arrays(y, point) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float)
    point = np.asarray(point, dtype=float)
    if y.shape != point.shape:
        raise ValueError(f"shapes differ: y {y.shape} vs prediction {point.shape}")
    return y, point


def ape(y, point) -> np.ndarray:
    """Absolute percentage error per row, in percent."""
    y, point = _arrays(y, point)
    return 100.0 * np.abs(point - y) / np.abs(y)


def mape(y, point) -> float:
    """Mean absolute percentage error (%)."""
    return float(np.mean(ape(y, point)))


def median_ape(y, point) -> float:
    """Median absolute percentage error (%)."""
    return float(np.median(ape(y, point)))


def p90_ape(y, point) -> float:
    """90th percentile of the absolute percentage error (%)."""
    return float(np.quantile(ape(y, point), 0.9))


def pearson_r(y, point) -> float | None:
    """Pearson correlation of prediction and observation (None when either is constant)."""
    y, point = _arrays(y, point)
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(point) == 0:
        return None
    return float(np.corrcoef(y, point)[0, 1])


def interval_coverage(y, lo, hi) -> float:
    """Fraction of observations inside the closed interval [lo, hi]."""
    y = np.asarray(y, dtype=float)
    return float(np.mean((y >= np.asarray(lo, dtype=float)) & (y <= np.asarray(hi, dtype=float))))


CRPS_WINSOR = 0.005


def crps_from_samples(y, samples, winsor: float = 0.0) -> np.ndarray:
    """CRPS per row from predictive samples (draw, row), energy form.

    ``CRPS = E|X − y| − ½·E|X − X'|`` with both expectations over the empirical sample
    distribution (the "NRG" estimator, as in ``properscoring.crps_ensemble``): the pair
    term is computed exactly in O(n log n) from the sorted samples,
    ``E|X − X'| = 2/n² · Σ_i (2i − n − 1)·x_(i)``. Units are those of ``y``.
    ``winsor`` > 0 first clips each row's samples to its [winsor, 1 − winsor] quantiles.
    """
    y = np.asarray(y, dtype=float)
    samples = np.asarray(samples, dtype=float)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.shape[1] != y.shape[0]:
        raise ValueError(f"samples {samples.shape} do not match {y.shape[0]} rows")
    if winsor > 0:
        low, high = np.quantile(samples, [winsor, 1.0 - winsor], axis=0)
        samples = np.clip(samples, low, high)
    n = samples.shape[0]
    spread = np.abs(samples - y[None, :]).mean(axis=0)
    ordered = np.sort(samples, axis=0)
    weights = (2.0 * np.arange(1, n + 1) - n - 1.0)[:, None]
    pair = 2.0 * (weights * ordered).sum(axis=0) / n**2
    return spread - 0.5 * pair


def pit_values(y, samples) -> np.ndarray:
    """Probability integral transform per row: fraction of predictive draws below y
    (ties count half)."""
    y = np.asarray(y, dtype=float)
    samples = np.asarray(samples, dtype=float)
    below = (samples < y[None, :]).mean(axis=0)
    equal = (samples == y[None, :]).mean(axis=0)
    return below + 0.5 * equal


def coverage_curve(
    y, samples, levels: Sequence[float] = tuple(np.round(np.arange(0.1, 1.0, 0.1), 2))
):
    """Empirical coverage of central predictive intervals at each nominal level."""
    y = np.asarray(y, dtype=float)
    out = []
    for level in levels:
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out.append(interval_coverage(y, lo, hi))
    return np.asarray(levels, dtype=float), np.asarray(out)


def score(
    y,
    point,
    samples=None,
    lo50=None,
    hi50=None,
    lo90=None,
    hi90=None,
) -> dict:
    """All metrics of one method on one set of rows (None where it has no intervals).

    CRPS uses samples winsorised at 0.5% / 99.5% per row, as the point forecast does: a
    log-Student-t predictive with ν near 2 has rare draws so large that the raw mean
    CRPS over rows is set by a handful of them (1.6e18 µs on the synthetic campaign).
    """
    y, point = _arrays(y, point)
    if len(y) == 0:
        return {
            "n_rows": 0,
            **dict.fromkeys(
                ("mape", "median_ape", "p90_ape", "pearson_r", "coverage_50", "coverage_90", "crps")
            ),
        }
    crps = None
    if samples is not None:
        crps = float(np.mean(crps_from_samples(y, samples, winsor=CRPS_WINSOR)))
    return {
        "n_rows": int(len(y)),
        "mape": mape(y, point),
        "median_ape": median_ape(y, point),
        "p90_ape": p90_ape(y, point),
        "pearson_r": pearson_r(y, point),
        "coverage_50": None if lo50 is None else interval_coverage(y, lo50, hi50),
        "coverage_90": None if lo90 is None else interval_coverage(y, lo90, hi90),
        "crps": crps,
    }


def load_terciles(running_depth, edges: Sequence[float] | None = None) -> tuple[np.ndarray, list]:
    """Label rows low / mid / high by terciles of the running-queue depth.

    ``low`` ≤ first tercile < ``mid`` ≤ second tercile < ``high``; pass ``edges`` to reuse
    another set's terciles. Returns the labels and the edges used.
    """
    depth = np.asarray(running_depth, dtype=float)
    if edges is None:
        edges = list(np.quantile(depth, [1 / 3, 2 / 3])) if len(depth) else [0.0, 0.0]
    labels = np.where(
        depth <= edges[0],
        LOAD_LABELS[0],
        np.where(depth <= edges[1], LOAD_LABELS[1], LOAD_LABELS[2]),
    )
    return labels.astype(object), [float(e) for e in edges]


def breakdown(
    frame: pd.DataFrame,
    groups: Sequence[str] = BREAKDOWN_GROUPS,
    *,
    y: str = "y",
    point: str = "point",
    samples: np.ndarray | None = None,
    intervals: bool = True,
) -> dict[str, dict[str, dict]]:
    """:func:`score` per value of each grouping column of ``frame``.

    ``frame`` holds the observation column ``y``, the prediction ``point`` and, when
    ``intervals``, ``lo50, hi50, lo90, hi90`` where present; ``samples`` (draw, row) aligns
    positionally with ``frame``. The ``load`` group is made from ``queue.running_depth``
    terciles when the frame has no ``load`` column. A missing grouping column is skipped.
    """
    frame = frame.reset_index(drop=True)
    if "load" in groups and "load" not in frame.columns and LOAD_COLUMN in frame.columns:
        frame = frame.assign(load=load_terciles(frame[LOAD_COLUMN])[0])
    bands = {}
    if intervals:
        bands = {k: k for k in ("lo50", "hi50", "lo90", "hi90") if k in frame.columns}
    out: dict[str, dict[str, dict]] = {}
    for group in groups:
        if group not in frame.columns:
            continue
        out[group] = {}
        indices = frame.groupby(group, sort=True).indices
        if group == "load":
            indices = {k: indices[k] for k in LOAD_LABELS if k in indices}
        for value, index in indices.items():
            part = frame.iloc[index]
            kwargs = {k: part[c].to_numpy() for k, c in bands.items()}
            out[group][str(value)] = score(
                part[y].to_numpy(),
                part[point].to_numpy(),
                samples=None if samples is None else np.asarray(samples)[:, index],
                **kwargs,
            )
    return out
