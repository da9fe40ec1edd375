"""Leave-one-group-out cross-validation (LOMO by model, LOWO by workload).

For each group the model is refitted on every other group's rows and predicts the
held-out group through the hyperpriors (an unseen model from its config alone); the
blackbox (pooled fit for an unseen model), naive mean and roofline are scored alongside.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.schema import TARGETS
from data_prep.splits import subsample_rows
from diagnostics.metrics import interval_coverage, mape, median_ape

BY_COLUMNS = {"model": "model", "workload": "workload"}


class SingleGroupError(ValueError):
    """Cross-validation needs at least two groups."""


def crossval(
    steps: pd.DataFrame,
    target: str,
    by: str,
    *,
    draws: int = 500,
    tune: int = 500,
    chains: int = 2,
    seed: int = 0,
    n_draws: int = 1000,
    model_config_dirs: tuple[str, ...] = (),
    kernel_dir: str | Path | None = None,
    max_train_rows: int | None = None,
    host_bound: bool = False,
    init: str = "map",
    log=None,
) -> dict:
    """``{"target", "by", "folds": [{held_out, n_rows, mape, median_ape, coverage_90, …}]}``."""
    from inference.estimator import StepTimeModel
    from inference.predictive import mape_optimal_point
    from models.baselines import Blackbox, NaiveMean, Roofline
    from models.priors import DEFAULT_PRIORS

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if by not in BY_COLUMNS:
        raise ValueError(f"--by must be one of {sorted(BY_COLUMNS)}, not {by!r}")
    column = BY_COLUMNS[by]
    y_column = TARGETS[target]
    has_target = steps[y_column].notna().to_numpy()
    groups = sorted(steps.loc[has_target, column].astype(str).unique())
    if len(groups) < 2:
        raise SingleGroupError(
            f"cross-validation by {by} needs at least two {by}s with a {target} target; "
            f"the data has {len(groups)}: {groups}"
        )
    folds = []
    for i, group in enumerate(groups, 1):
        held = (steps[column].astype(str) == group).to_numpy()
        train = has_target & ~held
        test = has_target & held
        train = subsample_rows(train, max_train_rows, seed)
        log(
            f"[{i}/{len(groups)}] hold out {by} {group!r}: fit on {int(train.sum())} rows, "
            f"predict {int(test.sum())}"
        )
        priors = DEFAULT_PRIORS[target].with_host() if host_bound else DEFAULT_PRIORS[target]
        model = StepTimeModel(
            target=target, priors=priors, model_config_dirs=tuple(model_config_dirs)
        )
        model.fit(
            steps,
            train.copy(),
            draws=draws,
            tune=tune,
            chains=chains,
            seed=seed,
            progressbar=False,
            init=init,
        )
        samples = model.sample_posterior_predictive(steps, test.copy(), n_draws=n_draws, seed=seed)
        samples = samples.values
        y = steps.loc[test, y_column].to_numpy(dtype=float)
        point = mape_optimal_point(samples)
        lo, hi = np.quantile(samples, [0.05, 0.95], axis=0)
        fold = {
            "held_out": group,
            "n_rows": int(test.sum()),
            "n_train_rows": int(train.sum()),
            "mape": mape(y, point),
            "median_ape": median_ape(y, point),
            "coverage_90": interval_coverage(y, lo, hi),
        }
        from diagnostics.convergence import convergence_summary

        summary = convergence_summary(model.idata_)
        fold["max_rhat"] = summary["max_rhat"]
        fold["divergences"] = summary["divergences"]
        fold["naive_mean_mape"] = mape(y, NaiveMean(target).fit(steps, train).predict(steps, test))
        fold["blackbox_mape"] = mape(y, Blackbox(target).fit(steps, train).predict(steps, test))
        if target == "cycle":
            roofline = Roofline(
                target,
                specs=model.resolve_specs([group]) if by == "model" else None,
                kernel_dir=kernel_dir,
                model_config_dirs=tuple(model_config_dirs),
            )
            fold["roofline_mape"] = mape(y, roofline.predict(steps, test))
        else:
            fold["roofline_mape"] = None
        log(
            f"    {group}: n={fold['n_rows']} MAPE {fold['mape']:.2f}% median APE "
            f"{fold['median_ape']:.2f}% 90% cover {fold['coverage_90']:.2f} | blackbox "
            f"{fold['blackbox_mape']:.2f}%"
            + (
                f" | roofline {fold['roofline_mape']:.2f}%"
                if fold["roofline_mape"] is not None
                else ""
            )
            + f" | R-hat {fold['max_rhat']:.3f}, {fold['divergences']} divergences"
        )
        folds.append(fold)
    return {
        "target": target,
        "by": by,
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "host_bound": host_bound,
        "folds": folds,
    }


def crossval_markdown(result: dict) -> str:
    kind = {"model": "leave-one-model-out", "workload": "leave-one-workload-out"}[result["by"]]
    lines = [
        f"# Cross-validation: {kind}, `{result['target']}` target",
        "",
        f"Each fold refits the hierarchical model on every other {result['by']}'s rows "
        f"({result['chains']} chains × {result['draws']} draws) and predicts the held-out "
        f"{result['by']} through the hyperpriors. Baselines: the blackbox falls back to its "
        "pooled fit for an unseen model; the roofline has no fitted parameters.",
        "",
        "| held out | rows | Bayes MAPE | median APE | 90% cover | naive MAPE | blackbox MAPE "
        "| roofline MAPE | max R-hat |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(v):
        return "—" if v is None else f"{v:.1f}%"

    for f in result["folds"]:
        lines.append(
            f"| `{f['held_out']}` | {f['n_rows']} | {pct(f['mape'])} | {pct(f['median_ape'])} | "
            f"{f['coverage_90']:.2f} | {pct(f.get('naive_mean_mape'))} | "
            f"{pct(f.get('blackbox_mape'))} | {pct(f.get('roofline_mape'))} | "
            f"{f.get('max_rhat') or float('nan'):.3f} |"
        )
    return "\n".join(lines) + "\n"
