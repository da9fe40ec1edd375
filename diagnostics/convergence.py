"""Convergence checks of a NUTS posterior (R-hat, ESS, divergences, BFMI, tree depth)."""

from __future__ import annotations

import contextlib

import numpy as np

# Free parameters of models.hierarchical and the deterministics people read.
DEFAULT_VAR_NAMES = (
    "log_beta_population",
    "log_beta",
    "workload_effect",
    "sigma_floor",
    "sigma_step",
    "nu",
    "stall_rate",
    "stall_log_jump",
)

RHAT_OK = 1.01
ESS_OK = 400


def _present(idata, var_names) -> list[str]:
    names = list(idata.posterior.data_vars)
    if var_names is None:
        return names
    return [v for v in var_names if v in names]


def _min_or_none(values) -> float | None:
    finite = [float(v) for v in values if np.isfinite(v)]
    return min(finite) if finite else None


def convergence_summary(idata, var_names=None) -> dict:
    """Worst-case convergence numbers over the posterior (all variables by default).

    Keys: ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``, ``divergences``, ``bfmi_min``,
    ``max_tree_depth_hits`` (None when the sampler did not record it), ``n_draws``,
    ``n_chains``. R-hat and ESS skip constant entries (e.g. fixed deterministics).
    """
    import arviz as az

    post = idata.posterior
    names = _present(idata, var_names)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant entries give NaN
        rhat = az.rhat(post, var_names=names)
        ess_bulk = az.ess(post, var_names=names, method="bulk")
        ess_tail = az.ess(post, var_names=names, method="tail")

    def flat(ds):
        return np.concatenate([np.ravel(ds[v].values) for v in ds.data_vars]) if names else []

    rhats = [float(r) for r in flat(rhat) if np.isfinite(r)]
    out = {
        "max_rhat": max(rhats) if rhats else None,
        "min_ess_bulk": _min_or_none(flat(ess_bulk)),
        "min_ess_tail": _min_or_none(flat(ess_tail)),
        "divergences": None,
        "bfmi_min": None,
        "max_tree_depth_hits": None,
        "n_chains": int(post.sizes.get("chain", 0)),
        "n_draws": int(post.sizes.get("draw", 0)),
    }
    stats = getattr(idata, "sample_stats", None)
    if stats is not None:
        if "diverging" in stats:
            out["divergences"] = int(stats["diverging"].values.sum())
        if "energy" in stats:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out["bfmi_min"] = float(np.min(az.bfmi(idata)))
        for name in ("maxdepth_reached", "reached_max_treedepth"):
            if name in stats:
                out["max_tree_depth_hits"] = int(stats[name].values.sum())
                break
    return out


def convergence_ok(summary: dict, rhat: float = RHAT_OK, ess: float = ESS_OK) -> bool:
    """True when R-hat, bulk ESS and divergences all pass the usual thresholds."""
    return (
        summary.get("max_rhat") is not None
        and summary["max_rhat"] <= rhat
        and (summary.get("min_ess_bulk") or 0) >= ess
        and not summary.get("divergences")
    )


def format_convergence(summary: dict) -> str:
    """One line for a terminal: ``max R-hat 1.004 · min ESS bulk 812 / tail 655 · …``."""

    def number(key, fmt):
        value = summary.get(key)
        return "n/a" if value is None else format(value, fmt)

    parts = [
        f"max R-hat {number('max_rhat', '.3f')}",
        f"min ESS bulk {number('min_ess_bulk', '.0f')} / tail {number('min_ess_tail', '.0f')}",
        f"divergences {number('divergences', 'd')}",
        f"min BFMI {number('bfmi_min', '.2f')}",
    ]
    if summary.get("max_tree_depth_hits") is not None:
        parts.append(f"max-tree-depth hits {summary['max_tree_depth_hits']}")
    verdict = "OK" if convergence_ok(summary) else "CHECK"
    return f"{verdict}: " + " · ".join(parts)


def convergence_table(idata, var_names=DEFAULT_VAR_NAMES):
    """``az.summary`` of the named variables (those present), as a DataFrame."""
    import arviz as az

    with np.errstate(invalid="ignore", divide="ignore"):  # constant entries give NaN
        return az.summary(idata, var_names=_present(idata, var_names), round_to=4)
