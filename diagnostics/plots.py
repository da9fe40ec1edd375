"""Figures of the evaluation report (matplotlib Agg, ArviZ 0.23 plots).

Each function writes one PNG and returns its file name; :func:`all_figures` draws the set
and returns ``{title: relative path}`` in report order.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diagnostics.metrics import coverage_curve, pit_values  # noqa: E402

POPULATION_VARS = ("log_beta_population", "sigma_floor", "sigma_step", "nu")
MAX_POINTS = 600
DPI = 110


def _save(fig, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return name


def _present(idata, names) -> list[str]:
    return [v for v in names if v in idata.posterior]


def _subsample(n: int, k: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def rank_plot(idata, out_dir: Path) -> str:
    """ArviZ trace + rank plots of the population coefficients and the noise parameters."""
    import arviz as az

    names = _present(idata, POPULATION_VARS)
    axes = az.plot_trace(
        idata, var_names=names, kind="rank_vlines", compact=True, figsize=(12, 2.4 * len(names))
    )
    fig = np.ravel(axes)[0].figure
    fig.suptitle("Population coefficients and noise: posterior densities and rank plots", y=1.0)
    fig.tight_layout()
    return _save(fig, out_dir, "trace_rank.png")


def forest_plot(idata, out_dir: Path) -> str:
    """Forest plot of the per-model log coefficients, one colour per model."""
    import arviz as az

    n_basis = idata.posterior.sizes.get("basis", 6)
    n_model = idata.posterior.sizes.get("model", 1)
    axes = az.plot_forest(
        idata,
        var_names=["log_beta"],
        combined=True,
        hdi_prob=0.9,
        figsize=(8, 0.5 + 0.35 * n_basis * n_model),
    )
    ax = np.ravel(axes)[0]
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_title("log β per model (90% HDI); 0 = nominal physics")
    return _save(ax.figure, out_dir, "forest_log_beta.png")


def ppc_plot(evaluation, out_dir: Path, n_curves: int = 60) -> str:
    """Observed vs posterior-predictive densities of log step time, per model."""
    import arviz as az

    frame, samples = evaluation.frame, evaluation.samples
    models = sorted(frame["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    draws = samples[_subsample(samples.shape[0], n_curves)]
    for ax, model in zip(axes[0], models, strict=True):
        cols = (frame["model"] == model).to_numpy()
        data = az.from_dict(
            posterior_predictive={"log_y": np.log(draws[:, cols])[None]},
            observed_data={"log_y": np.log(frame.loc[cols, "y"].to_numpy())},
        )
        az.plot_ppc(data, ax=ax, num_pp_samples=n_curves, legend=True, random_seed=0)
        ax.set_title(f"{model}: log(step time / µs)")
        ax.set_xlabel("log µs")
    fig.tight_layout()
    return _save(fig, out_dir, "ppc_log.png")


def calibration_plot(evaluation, out_dir: Path) -> str:
    """Nominal vs empirical central-interval coverage, and the PIT histogram, per model."""
    frame, samples = evaluation.frame, evaluation.samples
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="ideal")
    models = sorted(frame["model"].unique())
    y = frame["y"].to_numpy()
    levels, cover = coverage_curve(y, samples)
    left.plot(levels, cover, "o-", color="black", lw=2, label="all rows")
    pits = []
    for model in models:
        cols = (frame["model"] == model).to_numpy()
        levels, cover = coverage_curve(y[cols], samples[:, cols])
        left.plot(levels, cover, "o-", ms=3, lw=1, label=model)
        pits.append(pit_values(y[cols], samples[:, cols]))
    left.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0, 1), ylim=(0, 1))
    left.set_title("Central predictive intervals")
    left.legend(fontsize=8)
    right.hist(pits, bins=20, range=(0, 1), stacked=True, label=models, density=True)
    right.axhline(1.0, color="black", ls="--", lw=1)
    right.set(xlabel="PIT = P(predicted < observed)", ylabel="density")
    right.set_title("PIT histogram (flat = calibrated)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir, "calibration.png")


def predicted_vs_observed(evaluation, out_dir: Path) -> str:
    """Point prediction with 90% band against observation, log-log, one panel per model."""
    frame = evaluation.frame
    models = sorted(frame["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        part = frame[frame["model"] == model]
        part = part.iloc[_subsample(len(part))]
        y, point = part["y"].to_numpy(), part["bayes"].to_numpy()
        err = np.vstack([point - part["lo90"].to_numpy(), part["hi90"].to_numpy() - point])
        ax.errorbar(
            y,
            point,
            yerr=np.maximum(err, 0),
            fmt="o",
            ms=2.5,
            lw=0.5,
            alpha=0.5,
            color="C0",
            ecolor="C0",
            label="Bayes point ± 90% band",
        )
        lo, hi = np.min([y.min(), part["lo90"].min()]), np.max([y.max(), part["hi90"].max()])
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x")
        ax.set(xscale="log", yscale="log", xlabel="observed (µs)", ylabel="predicted (µs)")
        inside = ((part["y"] >= part["lo90"]) & (part["y"] <= part["hi90"])).mean()
        ax.set_title(f"{model} ({len(part)} shown, 90% cover {inside:.2f})")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, out_dir, "predicted_vs_observed.png")


def residual_plot(evaluation, out_dir: Path) -> str:
    """log(observed / point) against batch size and KV occupancy, coloured by model."""
    frame = evaluation.frame
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), sharey=True)
    batch = frame["batch.num_decode_reqs"] + frame["batch.num_prefill_reqs"]
    residual = np.log(frame["y"] / frame["bayes"])
    for model in sorted(frame["model"].unique()):
        cols = (frame["model"] == model).to_numpy()
        keep = np.flatnonzero(cols)[_subsample(int(cols.sum()), 1500)]
        axes[0].scatter(
            batch.to_numpy()[keep], residual.to_numpy()[keep], s=4, alpha=0.4, label=model
        )
        axes[1].scatter(
            frame["kv_tokens"].to_numpy()[keep],
            residual.to_numpy()[keep],
            s=4,
            alpha=0.4,
            label=model,
        )
    for ax, label in zip(
        axes, ("batch size (decode + prefill requests)", "KV tokens resident"), strict=True
    ):
        ax.axhline(0.0, color="black", lw=1)
        ax.set_xlabel(label)
        ax.legend(fontsize=8, markerscale=3)
    axes[0].set_ylabel("log(observed / predicted)")
    fig.suptitle("Residuals of the Bayesian point forecast")
    fig.tight_layout()
    return _save(fig, out_dir, "residuals.png")


def all_figures(evaluation, out_dir: str | Path) -> dict[str, str]:
    """Draw every figure into ``out_dir``; ``{title: file name}`` in report order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    if evaluation.idata is not None:
        figures["Trace and rank plots of the population parameters"] = rank_plot(
            evaluation.idata, out_dir
        )
        figures["Per-model coefficients"] = forest_plot(evaluation.idata, out_dir)
    figures["Posterior predictive check (log scale)"] = ppc_plot(evaluation, out_dir)
    figures["Calibration: coverage curve and PIT"] = calibration_plot(evaluation, out_dir)
    figures["Predicted vs observed with 90% bands"] = predicted_vs_observed(evaluation, out_dir)
    figures["Residuals vs batch size and KV occupancy"] = residual_plot(evaluation, out_dir)
    return figures
