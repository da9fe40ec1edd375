"""The portable step-time artifact: a compact, versioned JSON file a simulator loads.

``export_artifact(fit_dir, out)`` thins a saved fit (``steptime fit --out FITDIR``) to a
few hundred posterior draws and writes everything a numpy-only (or Go) sampler needs:
the basis-set definition and its nominal constants, hardware constants, the fitted
models' architecture specs, per-group coefficient draws, the noise parameters and the
fixed hyperparameters that predict a model or workload the fit never saw, and — for a
``schedule`` fit with the scheduler's slow regime — the regime's draws (``regime``), for
a ``cycle`` fit the rare-stall draws (``stall``), and for a ``--host-bound`` cycle fit its
scheduler regression as a nested ``schedule`` artifact (``host``).

``load_artifact(path)`` reads it back and validates it against
``inference/steptime_artifact.schema.json`` (a small built-in validator for the subset of
JSON Schema the file uses, so no dependency is needed) plus the cross-field shape checks
a schema cannot express. Importing this module never imports PyMC, PyTensor or ArviZ.
The format is documented field by field in ``docs/artifact.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from inference.predictive import PosteriorDraws, RegimeDraws, StallDraws

ARTIFACT_FORMAT = "steptime-artifact"
# 2: optional "stall" section; 3: optional "host" sub-artifact; 4: the regime's per-model
# p_max, growth and learnt width
ARTIFACT_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)  # earlier versions read as version 4 unless they hold a regime
REGIME_FORM_VERSION = 4  # the version whose regime form this code reads
SCHEMA_FILE = "steptime_artifact.schema.json"
SIGNIFICANT_DIGITS = 6
MAX_ARTIFACT_BYTES = 2_000_000
PER_DRAW_FIELDS = PosteriorDraws.PER_DRAW


class ArtifactError(ValueError):
    """The artifact file is missing, unreadable or does not follow the format."""


# --- writing -----------------------------------------------------------------------------


def _round(values: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """Nested lists of floats rounded to ``digits`` significant digits."""
    array = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ArtifactError("posterior draws contain non-finite values")
    flat = [float(f"{v:.{digits}g}") for v in array.ravel().tolist()]
    return np.asarray(flat).reshape(array.shape).tolist()


def basis_constants() -> dict[str, float]:
    """The constants the basis functions use: every ``NOMINAL_*`` of models.basis, the KV
    block size and the power of the host-bound soft max."""
    from data_prep.specs import KV_BLOCK_TOKENS
    from models import basis

    constants = {
        name: float(getattr(basis, name))
        for name in sorted(dir(basis))
        if name.startswith("NOMINAL_")
    }
    constants["KV_BLOCK_TOKENS"] = float(KV_BLOCK_TOKENS)
    constants["HOST_OVERLAP_POWER"] = float(basis.HOST_OVERLAP_POWER)
    return constants


def regime_section(regime: RegimeDraws) -> dict[str, Any]:
    """The ``regime`` object of an artifact: fixed hyperparameters plus per-draw arrays."""
    return {name: float(getattr(regime, name)) for name in RegimeDraws.HYPERPARAMETERS} | {
        name: _round(getattr(regime, name)) for name in RegimeDraws.PER_DRAW
    }


def build_artifact(fit_dir: str | Path, n_draws: int = 400, seed: int = 0) -> dict[str, Any]:
    """The artifact of a saved fit as a JSON-ready dict (``n_draws`` thinned draws).

    A ``--host-bound`` cycle fit carries its scheduler regression as ``host``: a complete
    ``schedule`` artifact over the same groups and the same thinned draws.
    """
    from inference.estimator import StepTimeModel  # ArviZ: only the exporter needs it

    fit_dir = Path(fit_dir)
    model = StepTimeModel.load(fit_dir)
    full = model.posterior_draws()
    draws = full.thin(n_draws, np.random.default_rng(seed))
    attrs = dict(model.idata_.posterior.attrs)
    architectures = json.loads(attrs.get("model_architectures", "{}"))
    for name in draws.models:
        if name not in architectures:
            architectures[name] = model.specs_[name].architecture
    shared = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "basis_set_version": str(attrs.get("basis_set_version", "")),
        "basis_constants": basis_constants(),
        "hardware": model.hardware_spec.to_dict(),
        "model_specs": {
            name: model.specs_[name].to_dict() for name in draws.models if name in model.specs_
        },
        "groups": {
            "models": list(draws.models),
            "model_architectures": [architectures[m] for m in draws.models],
            "workloads": list(draws.workloads),
        },
        "provenance": {
            "fit_dir": str(fit_dir.resolve()),
            "created_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "thin_seed": int(seed),
            "n_draws_in_fit": int(full.n_draws),
            "data_hash": str(attrs.get("data_hash", "")),
            "code_version": str(attrs.get("code_version", "")),
            "sampler": str(attrs.get("sampler", "")),
            "n_observations": int(attrs.get("n_observations", 0)),
        },
    }
    artifact = shared | _regression_sections(model.target, model.priors, draws)
    if draws.host is not None:
        artifact["host"] = shared | _regression_sections("schedule", model.priors.host, draws.host)
    return artifact


def _regression_sections(target: str, priors, draws: PosteriorDraws) -> dict[str, Any]:
    """The sections of one regression: target, bases, priors, draws, regime, stall."""
    coefficient_priors = priors.for_bases(draws.basis_names)
    out: dict[str, Any] = {
        "target": target,
        "basis_names": list(draws.basis_names),
        "priors": {
            "model_sd": _round(draws.model_sd),
            "moe_sd": _round(draws.moe_sd),
            "workload_sd": float(draws.workload_sd),
            "coefficient_medians": _round([c.median for c in coefficient_priors]),
            "coefficient_log_sd": _round([c.log_sd for c in coefficient_priors]),
        },
        "draws": {"n_draws": int(draws.n_draws)}
        | {name: _round(getattr(draws, name)) for name in PER_DRAW_FIELDS},
    }
    if draws.regime is not None:
        out["regime"] = regime_section(draws.regime)
    if draws.stall is not None:
        out["stall"] = {name: _round(getattr(draws.stall, name)) for name in StallDraws.PER_DRAW}
    return out


def export_artifact(
    fit_dir: str | Path, out: str | Path, n_draws: int = 400, seed: int = 0
) -> Path:
    """Write the artifact of ``fit_dir`` to ``out``; validates it and checks the size limit."""
    artifact = build_artifact(fit_dir, n_draws=n_draws, seed=seed)
    validate_artifact(artifact)
    text = json.dumps(artifact, separators=(",", ":"))
    if len(text) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(
            f"artifact is {len(text)} bytes, over the {MAX_ARTIFACT_BYTES} limit; "
            "export fewer draws (--draws)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return out


# --- reading and validation -----------------------------------------------------------------


def load_schema() -> dict:
    """The JSON Schema shipped next to this module."""
    return json.loads(resources.files("inference").joinpath(SCHEMA_FILE).read_text())


_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def _schema_errors(value: Any, schema: dict, path: str) -> list[str]:
    """Errors of ``value`` against the JSON Schema subset the artifact schema uses."""
    kind = schema.get("type")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{path}: expected a number, got {type(value).__name__}"]
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: expected an integer, got {type(value).__name__}"]
    elif kind is not None and not isinstance(value, _TYPES[kind]):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: must be {schema['const']!r}, not {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}, not {value!r}")
    if "minimum" in schema and isinstance(value, int | float) and value < schema["minimum"]:
        errors.append(f"{path}: must be ≥ {schema['minimum']}, not {value}")
    if "maximum" in schema and isinstance(value, int | float) and value > schema["maximum"]:
        errors.append(f"{path}: must be ≤ {schema['maximum']}, not {value}")
    low = schema.get("exclusiveMinimum")
    if low is not None and isinstance(value, int | float) and value <= low:
        errors.append(f"{path}: must be > {schema['exclusiveMinimum']}, not {value}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items, has {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += _schema_errors(item, schema["items"], f"{path}[{i}]")
                if len(errors) > 20:
                    return errors
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key in value:
                errors += _schema_errors(value[key], sub, f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in properties:
                    errors += _schema_errors(item, extra, f"{path}.{key}")
    return errors


def _shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _array_shape_errors(section: dict, expected: dict, path: str) -> list[str]:
    errors = []
    for name, shape in expected.items():
        try:
            got = np.asarray(section[name], dtype=float).shape
        except ValueError:
            got = "ragged"
        if got != shape:
            errors.append(f"{path}.{name}: shape {got}, expected {shape} (draw, ...)")
    return errors


def _shape_errors(artifact: dict) -> list[str]:
    """Cross-field consistency: every draw array has the dims its groups imply."""
    draws = artifact["draws"]
    d = draws["n_draws"]
    k = len(artifact["basis_names"])
    m = len(artifact["groups"]["models"])
    w = len(artifact["groups"]["workloads"])
    expected = {
        "log_beta_population": (d, k),
        "a_moe": (d, k),
        "log_beta": (d, m, k),
        "workload_effect": (d, w),
        "sigma_floor": (d, m),
        "sigma_step": (d, m),
        "nu": (d,),
    }
    errors = _array_shape_errors(draws, expected, "$.draws")
    if artifact.get("regime") is not None:
        regime_shapes = {
            name: (d, m) if name in RegimeDraws.PER_MODEL else (d,) for name in RegimeDraws.PER_DRAW
        }
        errors += _array_shape_errors(artifact["regime"], regime_shapes, "$.regime")
    if artifact.get("stall") is not None:
        stall_shapes = dict.fromkeys(StallDraws.PER_DRAW, (d,))
        errors += _array_shape_errors(artifact["stall"], stall_shapes, "$.stall")
    for name in ("model_sd", "moe_sd", "coefficient_medians", "coefficient_log_sd"):
        if name in artifact["priors"] and _shape(artifact["priors"][name]) != (k,):
            errors.append(f"$.priors.{name}: needs one value per basis ({k})")
    if len(artifact["groups"]["model_architectures"]) != m:
        errors.append("$.groups.model_architectures: needs one entry per model")
    missing = [x for x in artifact["groups"]["models"] if x not in artifact["model_specs"]]
    if missing:
        errors.append(f"$.model_specs: no spec for fitted models {missing}")
    return errors


def validate_artifact(artifact: Any, source: str = "artifact") -> dict:
    """Raise :class:`ArtifactError` listing what is wrong; returns the artifact when valid."""
    if not isinstance(artifact, dict):
        raise ArtifactError(f"{source}: the top level must be a JSON object")
    if artifact.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{source}: not a steptime artifact (format {artifact.get('format')!r}, "
            f"expected {ARTIFACT_FORMAT!r})"
        )
    if artifact.get("version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{source}: unsupported artifact version {artifact.get('version')!r} "
            f"(this steptime reads versions {list(READABLE_VERSIONS)})"
        )
    if artifact.get("regime") is not None and artifact["version"] < REGIME_FORM_VERSION:
        raise ArtifactError(
            f"{source}: a version-{artifact['version']} artifact's scheduler regime is the "
            f"old form (one p_max, fixed width, no growth); re-fit and re-export it"
        )
    errors = _schema_errors(artifact, load_schema(), "$")
    if not errors:
        errors = _shape_errors(artifact)
    if not errors and artifact.get("host") is not None:
        host = validate_artifact(artifact["host"], f"{source} $.host")
        errors = _host_errors(artifact, host)
    if errors:
        shown = "\n  ".join(errors[:20])
        raise ArtifactError(f"{source}: invalid steptime artifact:\n  {shown}")
    return artifact


def _host_errors(artifact: dict, host: dict) -> list[str]:
    """A ``host`` sub-artifact prices the scheduler of the same groups and draws."""
    errors = []
    if artifact["target"] != "cycle" or host["target"] != "schedule":
        errors.append("$.host: only a cycle artifact carries a host, and it is a schedule one")
    if host["groups"] != artifact["groups"]:
        errors.append("$.host.groups: must equal $.groups")
    if host["draws"]["n_draws"] != artifact["draws"]["n_draws"]:
        errors.append("$.host.draws.n_draws: must equal $.draws.n_draws")
    if host.get("host") is not None:
        errors.append("$.host.host: a host has no host")
    return errors


def load_artifact(path: str | Path) -> dict:
    """Read and validate an artifact file."""
    path = Path(path)
    try:
        artifact = json.loads(path.read_text())
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read artifact: {err}") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not JSON: {err}") from None
    return validate_artifact(artifact, str(path))


def posterior_draws(artifact: dict) -> PosteriorDraws:
    """The artifact's draws in the layout :mod:`inference.predictive` works on."""
    draws = artifact["draws"]
    priors = artifact["priors"]
    return PosteriorDraws(
        basis_names=tuple(artifact["basis_names"]),
        models=tuple(artifact["groups"]["models"]),
        workloads=tuple(artifact["groups"]["workloads"]),
        **{name: np.asarray(draws[name], dtype=float) for name in PER_DRAW_FIELDS},
        model_sd=np.asarray(priors["model_sd"], dtype=float),
        moe_sd=np.asarray(priors["moe_sd"], dtype=float),
        workload_sd=float(priors["workload_sd"]),
        regime=_regime_draws(artifact.get("regime")),
        stall=_stall_draws(artifact.get("stall")),
        host=None if artifact.get("host") is None else posterior_draws(artifact["host"]),
    )


def _stall_draws(stall: dict | None) -> StallDraws | None:
    """The artifact's ``stall`` section as :class:`StallDraws` (None when absent)."""
    if stall is None:
        return None
    return StallDraws(
        **{name: np.asarray(stall[name], dtype=float) for name in StallDraws.PER_DRAW}
    )


def _regime_draws(regime: dict | None) -> RegimeDraws | None:
    """The artifact's ``regime`` section as :class:`RegimeDraws` (None when absent)."""
    if regime is None:
        return None
    return RegimeDraws(
        **{name: np.asarray(regime[name], dtype=float) for name in RegimeDraws.PER_DRAW},
        **{name: float(regime[name]) for name in RegimeDraws.HYPERPARAMETERS},
    )
