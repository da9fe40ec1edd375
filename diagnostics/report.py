"""Score a fitted model and the baselines on held-out rows, and write the report.

:func:`evaluate` returns the ``metrics.json`` object (the ``steptime evaluate --json``
contract) plus the arrays the figures need; :func:`write_report` renders ``report.md``,
``metrics.json`` and the PNG figures into one folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.schema import TARGETS
from diagnostics.metrics import BREAKDOWN_GROUPS, breakdown, load_terciles, score

METHODS = ("bayes", "naive_mean", "blackbox", "roofline")
METHOD_LABELS = {
    "bayes": "Bayesian hierarchical",
    "naive_mean": "naive mean",
    "blackbox": "blackbox (BLIS)",
    "roofline": "roofline (BLIS)",
}
QUANTILES = (0.05, 0.25, 0.75, 0.95)
DIAGNOSTIC_KEYS = ("max_rhat", "min_ess_bulk", "min_ess_tail", "divergences", "bfmi_min")


@dataclass
class Evaluation:
    """The metrics object plus what the figures and tables need."""

    metrics: dict
    frame: pd.DataFrame  # evaluated rows: groups, y, per-method predictions, bands
    samples: np.ndarray  # (draw, row) Bayesian predictive of the evaluated rows
    idata: object = None
    notes: list[str] = field(default_factory=list)
    context: dict = field(default_factory=dict)


def _bayes_predictions(model, steps, rows, n_draws, seed):
    from inference.predictive import mape_optimal_point

    samples = model.sample_posterior_predictive(steps, rows, n_draws=n_draws, seed=seed).values
    q = np.quantile(samples, QUANTILES, axis=0)
    return samples, mape_optimal_point(samples), q


def _baseline_predictions(steps, rows, train_steps, train_rows, target, kernel_dir, specs, notes):
    """Point predictions of each baseline (None where it cannot be made)."""
    from models.baselines import Blackbox, NaiveMean, Roofline

    out: dict[str, np.ndarray | None] = {}
    for name, cls in (("naive_mean", NaiveMean), ("blackbox", Blackbox)):
        if train_steps is None:
            out[name] = None
            continue
        out[name] = cls(target=target).fit(train_steps, train_rows).predict(steps, rows)
    if target == "cycle":
        roofline = Roofline(target=target, specs=specs, kernel_dir=kernel_dir)
        out["roofline"] = roofline.predict(steps, rows)
    else:
        out["roofline"] = None
        notes.append(
            "The roofline predicts GPU step time; it is not a model of the scheduler's CPU "
            "time, so it is reported as null for the `schedule` target."
        )
    return out


def _score_rows(model, steps, rows, target, baselines_fit, n_draws, seed, kernel_dir, notes):
    """Predictions of every method on ``rows`` (rows with a target only)."""
    column = TARGETS[target]
    rows = np.array(rows, dtype=bool, copy=True) & steps[column].notna().to_numpy()
    samples, point, q = _bayes_predictions(model, steps, rows, n_draws, seed)
    frame = steps.loc[rows].reset_index(drop=True)
    frame = frame.assign(
        y=frame[column].to_numpy(dtype=float),
        bayes=point,
        lo90=q[0],
        lo50=q[1],
        hi50=q[2],
        hi90=q[3],
    )
    train_steps, train_rows = baselines_fit
    specs = model.resolve_specs(frame["model"].unique())
    for name, values in _baseline_predictions(
        steps, rows, train_steps, train_rows, target, kernel_dir, specs, notes
    ).items():
        frame[name] = np.nan if values is None else values
    return frame, samples


def _method_scores(frame, samples, methods=METHODS) -> dict:
    out = {}
    for method in methods:
        if method not in frame or frame[method].isna().all():
            out[method] = None
            continue
        if method == "bayes":
            out[method] = score(
                frame["y"],
                frame["bayes"],
                samples,
                *(frame[k] for k in ("lo50", "hi50", "lo90", "hi90")),
            )
        else:
            out[method] = score(frame["y"], frame[method])
    return out


def _group_scores(frame, samples, groups=BREAKDOWN_GROUPS) -> dict:
    """Per-group metrics: ``by[group][value] = {method: metrics, "n_rows": n}``."""
    by: dict = {}
    for method in METHODS:
        if method not in frame or frame[method].isna().all():
            continue
        is_bayes = method == "bayes"
        per = breakdown(
            frame,
            groups,
            point=method,
            samples=samples if is_bayes else None,
            intervals=is_bayes,
        )
        for group, values in per.items():
            for value, metrics in values.items():
                slot = by.setdefault(group, {}).setdefault(value, {"n_rows": metrics["n_rows"]})
                slot[method] = {k: v for k, v in metrics.items() if k != "n_rows"}
    return by


def evaluate(
    model,
    steps: pd.DataFrame,
    rows,
    *,
    train_steps: pd.DataFrame | None = None,
    train_rows=None,
    valid_rows=None,
    kernel_dir: str | Path | None = None,
    n_draws: int = 1000,
    seed: int = 0,
    description: dict | None = None,
) -> Evaluation:
    """Score ``model`` (a fitted ``StepTimeModel``) and the baselines on ``steps[rows]``.

    Baselines are fitted on ``train_steps[train_rows]`` (the fit's training rows); without
    ``train_steps`` the fitted baselines are null. ``valid_rows`` adds a "val MAPE" per
    method. Groups the fit never saw are predicted through the hyperpriors.
    """
    from diagnostics.convergence import convergence_summary

    target = model.target
    notes: list[str] = []
    if train_steps is None:
        notes.append(
            "No training rows were given for the baselines (pass --train-data), so the naive "
            "mean and blackbox are null."
        )
    fit_baselines = (train_steps, train_rows)
    frame, samples = _score_rows(
        model, steps, rows, target, fit_baselines, n_draws, seed, kernel_dir, notes
    )
    if len(frame) == 0:
        raise ValueError(f"no rows to evaluate have a {target} target")
    missing = int(np.asarray(rows, bool).sum()) - len(frame)
    if missing:
        notes.append(
            f"{missing} selected rows have no {target} target (e.g. the last sampled step of a "
            "run, or a gap too long for a cycle time) and are not scored."
        )
    labels, edges = load_terciles(frame["queue.running_depth"])
    frame["load"] = labels
    methods = _method_scores(frame, samples)
    val = None
    if valid_rows is not None and np.asarray(valid_rows, bool).any():
        valid_frame, valid_samples = _score_rows(
            model, steps, valid_rows, target, fit_baselines, n_draws, seed, kernel_dir, []
        )
        val = _method_scores(valid_frame, valid_samples)
    diagnostics = convergence_summary(model.idata_)
    metrics = {
        "target": target,
        "n_rows": int(len(frame)),
        "methods": methods,
        "by": _group_scores(frame, samples),
        "diagnostics": {k: diagnostics.get(k) for k in DIAGNOSTIC_KEYS},
        "validation": None
        if val is None
        else {
            m: (None if s is None else {"mape": s["mape"], "n_rows": s["n_rows"]})
            for m, s in val.items()
        },
        "load_terciles": edges,
        "fit": {
            k: model.idata_.posterior.attrs.get(k)
            for k in ("data_hash", "n_observations", "code_version", "sampling_seconds")
        },
        "fitted_groups": {
            "models": [str(m) for m in model.idata_.posterior["model"].values],
            "workloads": [str(w) for w in model.idata_.posterior["workload"].values],
        },
        "description": description or {},
        "notes": notes,
    }
    return Evaluation(
        metrics=_jsonable(metrics), frame=frame, samples=samples, idata=model.idata_, notes=notes
    )


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --- Markdown -------------------------------------------------------------------------


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _num(value, fmt=".3f") -> str:
    return "—" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def generalisation_by_method(crossval: dict | None) -> dict[str, str]:
    """ "LOMO 12.3%" (mean MAPE over folds) per method, from a ``crossval.json`` object."""
    if not crossval or not crossval.get("folds"):
        return {}
    kind = {"model": "LOMO", "workload": "LOWO"}.get(crossval.get("by"), crossval.get("by"))
    keys = {
        "bayes": "mape",
        "blackbox": "blackbox_mape",
        "roofline": "roofline_mape",
        "naive_mean": "naive_mean_mape",
    }
    out = {}
    for method, key in keys.items():
        values = [f[key] for f in crossval["folds"] if f.get(key) is not None]
        if values:
            per = ", ".join(
                f"{f['held_out']} {f[key]:.1f}%"
                for f in crossval["folds"]
                if f.get(key) is not None
            )
            out[method] = f"{kind} {np.mean(values):.1f}% ({per})"
    return out


def leaderboard(metrics: dict, crossval: dict | None = None) -> str:
    """The seed's leaderboard: method | val MAPE | test MAPE | Pearson r | dense | MoE | gen."""
    general = generalisation_by_method(crossval)
    arch = metrics["by"].get("architecture", {})
    validation = metrics.get("validation") or {}
    rows = []
    for method in METHODS:
        scores = metrics["methods"].get(method)
        if scores is None:
            rows.append([METHOD_LABELS[method], "—", "—", "—", "—", "—", general.get(method, "—")])
            continue
        val = validation.get(method)
        rows.append(
            [
                METHOD_LABELS[method],
                _pct(val["mape"] if val else None),
                _pct(scores["mape"]),
                _num(scores["pearson_r"]),
                _pct((arch.get("dense", {}).get(method) or {}).get("mape")),
                _pct((arch.get("moe", {}).get(method) or {}).get("mape")),
                general.get(method, "—"),
            ]
        )
    header = [
        "method",
        "val MAPE",
        "test MAPE",
        "Pearson r",
        "dense MAPE",
        "MoE MAPE",
        "generalisation",
    ]
    return _table(header, rows)


def metrics_table(metrics: dict) -> str:
    rows = []
    for method in METHODS:
        s = metrics["methods"].get(method)
        if s is None:
            rows.append([METHOD_LABELS[method]] + ["—"] * 7)
            continue
        rows.append(
            [
                METHOD_LABELS[method],
                _pct(s["mape"]),
                _pct(s["median_ape"]),
                _pct(s["p90_ape"]),
                _num(s["pearson_r"]),
                _num(s["coverage_50"], ".2f"),
                _num(s["coverage_90"], ".2f"),
                _num(s["crps"], ".0f"),
            ]
        )
    header = [
        "method",
        "MAPE",
        "median APE",
        "p90 APE",
        "Pearson r",
        "50% cov.",
        "90% cov.",
        "CRPS (µs)",
    ]
    return _table(header, rows)


def group_table(metrics: dict, group: str) -> str:
    values = metrics["by"].get(group, {})
    header = [
        "value",
        "rows",
        "Bayes MAPE",
        "Bayes median APE",
        "50% cov.",
        "90% cov.",
        "naive MAPE",
        "blackbox MAPE",
        "roofline MAPE",
    ]
    rows = []
    for value, entry in values.items():
        bayes = entry.get("bayes") or {}
        rows.append(
            [
                f"`{value}`",
                str(entry["n_rows"]),
                _pct(bayes.get("mape")),
                _pct(bayes.get("median_ape")),
                _num(bayes.get("coverage_50"), ".2f"),
                _num(bayes.get("coverage_90"), ".2f"),
                *(
                    _pct((entry.get(m) or {}).get("mape"))
                    for m in ("naive_mean", "blackbox", "roofline")
                ),
            ]
        )
    return _table(header, rows)


GROUP_TITLES = {
    "model": "Per model",
    "architecture": "Per architecture",
    "workload": "Per workload",
    "phase": "Per phase (decode-only / mixed / prefill-heavy)",
    "load": "Per load (terciles of the running-queue depth)",
}


def render_markdown(evaluation: Evaluation, figures: dict[str, str], crossval: dict | None) -> str:
    m = evaluation.metrics
    desc = m.get("description", {})
    target = m["target"]
    what = {
        "cycle": "the step **cycle time** (wall time from one scheduler step to the next, "
        "what a simulator's `StepTime` returns)",
        "schedule": "the **scheduler's CPU time** per step (`step.duration_us`)",
    }[target]
    fitted = m["fitted_groups"]
    eval_models = sorted(evaluation.frame["model"].unique())
    unseen = [x for x in eval_models if x not in fitted["models"]]
    lines = [
        f"# Step-time evaluation: `{target}` target",
        "",
        f"This report scores a fitted hierarchical Bayesian model of {what} on "
        f"**{m['n_rows']:,} rows it did not fit** ({desc.get('rows', 'held-out rows')}), "
        f"from `{desc.get('data', '?')}`, against three baselines: the mean training target, "
        "BLIS's per-model linear blackbox and BLIS's roofline. "
        f"The fit saw models {', '.join(f'`{x}`' for x in fitted['models'])} and workloads "
        f"{', '.join(f'`{x}`' for x in fitted['workloads'])} "
        f"({m['fit'].get('n_observations')} observations, data hash `{m['fit'].get('data_hash')}`)."
        + (
            f" Models predicted from their config alone through the hyperprior: "
            f"{', '.join(f'`{x}`' for x in unseen)}."
            if unseen
            else ""
        ),
        "",
        "The Bayesian point forecast is the MAPE-optimal 1/y-weighted median of the predictive; "
        "its 50% and 90% bands are central predictive quantiles. Percentage errors are in "
        "percent, coverage is the fraction of observations inside the band (nominal 0.50 / 0.90).",
        "",
    ]
    lines += [f"> {note}" for note in m.get("notes", [])]
    lines += ["", "## Leaderboard", "", leaderboard(m, crossval), ""]
    if not crossval:
        lines.append(
            "_Generalisation: run `steptime crossval` and pass its folder with `--crossval`._"
        )
    lines += ["", "## All metrics (evaluated rows)", "", metrics_table(m), ""]
    for group in BREAKDOWN_GROUPS:
        if group in m["by"]:
            lines += [f"### {GROUP_TITLES[group]}", "", group_table(m, group), ""]
    edges = m.get("load_terciles")
    if edges:
        lines += [
            f"Load terciles: low ≤ {edges[0]:g} running requests < mid ≤ {edges[1]:g} < high.",
            "",
        ]
    lines += ["## Convergence", "", _convergence_markdown(evaluation), ""]
    lines += ["## Figures", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines)


def _convergence_markdown(evaluation: Evaluation) -> str:
    from diagnostics.convergence import convergence_summary, convergence_table, format_convergence

    summary = convergence_summary(evaluation.idata)
    table = convergence_table(evaluation.idata)
    columns = [
        c
        for c in ("mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk", "ess_tail", "r_hat")
        if c in table.columns
    ]
    rows = [
        [f"`{name}`", *(_num(row[c], ".3g") for c in columns)] for name, row in table.iterrows()
    ]
    return f"`{format_convergence(summary)}`\n\n" + _table(["parameter", *columns], rows)


def write_report(evaluation: Evaluation, out_dir: str | Path, crossval: dict | None = None) -> Path:
    """``report.md``, ``metrics.json`` and the figures in ``out_dir``; returns the report path."""
    from diagnostics import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(evaluation.metrics)
    if crossval:
        metrics["generalisation"] = generalisation_by_method(crossval)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    figures = plots.all_figures(evaluation, out_dir)
    report = out_dir / "report.md"
    report.write_text(render_markdown(evaluation, figures, crossval))
    return report
