"""The baselines every evaluation reports (BRIEF §5), as small sklearn-like estimators.

Each has ``fit(steps, rows) -> self`` and ``predict(steps, rows) -> np.ndarray`` (µs) for
one target column (``schedule_us`` or ``cycle_us``); ``rows`` is a boolean mask (or
``None`` for all rows) over the step table.

- :class:`NaiveMean`: the mean training target.
- :class:`Blackbox` (BLIS): per model ``β0 + β1·prefill_tokens + β2·decode_tokens`` by least
  squares; a model the fit never saw gets the pooled fit over all training models.
- :class:`Roofline` (BLIS): ``max(compute, memory) + 100 µs·L/TP`` per step from the model's
  config; nothing is fitted. It predicts GPU step time, so it is meaningful for the
  ``cycle`` target only (``meaningful_for`` says so; the evaluation reports it as null for
  ``schedule``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.schema import TARGETS
from data_prep.specs import HardwareSpec, ModelSpec, get_model_spec, load_hardware
from models.basis import BatchFeatures, prefill_attention_us

ROOFLINE_BANDWIDTH_EFFICIENCY = 0.82
ROOFLINE_OVERHEAD_US_PER_LAYER = 100.0
DEFAULT_GEMM_MFU = 0.5
DEFAULT_ATTENTION_MFU = 0.35
DEFAULT_DECODE_ATTENTION_MFU = 0.35


def _target_column(target: str) -> str:
    if target in TARGETS:
        return TARGETS[target]
    if target in TARGETS.values():
        return target
    raise ValueError(f"target must be one of {sorted(TARGETS)} (or their columns), not {target!r}")


def _mask(steps: pd.DataFrame, rows) -> np.ndarray:
    if rows is None:
        return np.ones(len(steps), dtype=bool)
    return np.array(rows, dtype=bool, copy=True)


def _training_rows(steps: pd.DataFrame, rows, column: str) -> np.ndarray:
    mask = _mask(steps, rows) & steps[column].notna().to_numpy()
    if not mask.any():
        raise ValueError(f"no training rows with a {column} value")
    return mask


@dataclass
class NaiveMean:
    """Predicts the mean training target for every step."""

    target: str = "cycle"
    mean_: float | None = None

    def fit(self, steps: pd.DataFrame, rows=None) -> NaiveMean:
        column = _target_column(self.target)
        mask = _training_rows(steps, rows, column)
        self.mean_ = float(steps.loc[mask, column].to_numpy(dtype=float).mean())
        return self

    def predict(self, steps: pd.DataFrame, rows=None) -> np.ndarray:
        if self.mean_ is None:
            raise RuntimeError("NaiveMean is not fitted")
        return np.full(int(_mask(steps, rows).sum()), self.mean_)


BLACKBOX_FEATURES = ("batch.prefill_tokens", "batch.decode_tokens")


@dataclass
class Blackbox:
    """BLIS blackbox: per model, least squares ``β0 + β1·prefill_tokens + β2·decode_tokens``."""

    target: str = "cycle"
    coef_: dict[str, np.ndarray] = field(default_factory=dict)
    pooled_: np.ndarray | None = None

    @staticmethod
    def _design(frame: pd.DataFrame) -> np.ndarray:
        features = frame[list(BLACKBOX_FEATURES)].to_numpy(dtype=float, na_value=0.0)
        return np.column_stack([np.ones(len(frame)), features])

    @classmethod
    def _lstsq(cls, frame: pd.DataFrame, column: str) -> np.ndarray:
        X = cls._design(frame)
        y = frame[column].to_numpy(dtype=float)
        return np.linalg.lstsq(X, y, rcond=None)[0]

    def fit(self, steps: pd.DataFrame, rows=None) -> Blackbox:
        column = _target_column(self.target)
        train = steps.loc[_training_rows(steps, rows, column)]
        self.pooled_ = self._lstsq(train, column)
        self.coef_ = {
            str(model): self._lstsq(group, column)
            for model, group in train.groupby("model", sort=True)
        }
        return self

    def predict(self, steps: pd.DataFrame, rows=None) -> np.ndarray:
        if self.pooled_ is None:
            raise RuntimeError("Blackbox is not fitted")
        frame = steps.loc[_mask(steps, rows)]
        X = self._design(frame)
        if not len(frame):
            return np.empty(0)
        coef = np.array([self.coef_.get(str(m), self.pooled_) for m in frame["model"]])
        return np.einsum("ij,ij->i", X, coef)


# --- roofline --------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelTables:
    """InferSim-format H100 kernel tables (MFU by shape), looked up by nearest neighbour
    in log space."""

    gemm: pd.DataFrame | None
    decode: dict[tuple[int, int, int, int], pd.DataFrame]
    prefill: dict[tuple[int, int, int], pd.DataFrame]

    @classmethod
    def load(cls, folder: str | Path) -> KernelTables:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such kernel folder")
        gemm_path = folder / "gemm_data.csv"
        gemm = pd.read_csv(gemm_path) if gemm_path.is_file() else None
        decode, prefill = {}, {}
        for path in folder.glob("mha_decode_*.csv"):
            match = re.fullmatch(r"mha_decode_(\d+)-(\d+)-(\d+)-tp(\d+)\.csv", path.name)
            if match:
                decode[tuple(int(g) for g in match.groups())] = pd.read_csv(path)
        for path in folder.glob("mha_prefill_*.csv"):
            match = re.fullmatch(r"mha_prefill_(\d+)-(\d+)-(\d+)\.csv", path.name)
            if match:
                prefill[tuple(int(g) for g in match.groups())] = pd.read_csv(path)
        return cls(gemm=gemm, decode=decode, prefill=prefill)


def nearest_mfu(
    table: pd.DataFrame, keys: dict[str, np.ndarray], floor: float = 1e-3
) -> np.ndarray:
    """MFU of the table row nearest to each query point in log space (Euclidean over keys)."""
    columns = list(keys)
    grid = np.log(np.maximum(table[columns].to_numpy(dtype=float), 1.0))
    query = np.column_stack(
        [np.log(np.maximum(np.asarray(keys[c], dtype=float), 1.0)) for c in columns]
    )
    distance = ((query[:, None, :] - grid[None, :, :]) ** 2).sum(axis=2)
    mfu = table["mfu"].to_numpy(dtype=float)[distance.argmin(axis=1)]
    return np.maximum(mfu, floor)


@dataclass
class Roofline:
    """BLIS roofline: ``max(compute, memory) + 100 µs·L/TP`` per step, nothing fitted.

    compute = linear FLOPs ``2·T·(active params per token)/TP`` at peak × GEMM MFU
            + prefill attention ``4·H·d_h·L·Σ(new·ctx)/TP`` (Σ as in ``models.basis``) at
              peak × prefill-attention MFU
            + decode attention ``4·H·d_h·L·kv_tokens/TP`` at peak × decode-attention MFU;
    memory  = (weights per GPU + KV bytes per token × kv_tokens) / (HBM bandwidth × 0.82).

    MoE is ignored (BLIS's known weakness): a MoE model is treated as a dense model of its
    active parameters (top-k experts' weights streamed, no expert-routing term).

    MFUs are constants by default; with ``kernel_dir`` (InferSim format) they come from
    the nearest measured shape: GEMM by (m=T, k=hidden, n=FFN width/TP), decode attention
    by (decode requests, mean context = kv_tokens/decode requests), prefill attention by
    mean chunk length, falling back to the constants where no table matches the model.
    """

    target: str = "cycle"
    specs: dict[str, ModelSpec] | None = None
    hardware: str | HardwareSpec = "h100-sxm"
    kernel_dir: str | Path | None = None
    model_config_dirs: tuple[str, ...] = ()
    gemm_mfu: float = DEFAULT_GEMM_MFU
    attention_mfu: float = DEFAULT_ATTENTION_MFU
    decode_attention_mfu: float = DEFAULT_DECODE_ATTENTION_MFU
    bandwidth_efficiency: float = ROOFLINE_BANDWIDTH_EFFICIENCY
    overhead_us_per_layer: float = ROOFLINE_OVERHEAD_US_PER_LAYER

    meaningful_for = ("cycle",)

    def __post_init__(self) -> None:
        _target_column(self.target)
        self._tables = KernelTables.load(self.kernel_dir) if self.kernel_dir else None
        self._hw = self.hardware if isinstance(self.hardware, HardwareSpec) else None

    @property
    def hardware_spec(self) -> HardwareSpec:
        if self._hw is None:
            self._hw = load_hardware(str(self.hardware))
        return self._hw

    def spec(self, model: str) -> ModelSpec:
        if self.specs and model in self.specs:
            return self.specs[model]
        return get_model_spec(model, [Path(d) for d in self.model_config_dirs])

    def fit(self, steps: pd.DataFrame | None = None, rows=None) -> Roofline:
        """Nothing to fit; present for a uniform interface."""
        return self

    # MFU lookups -------------------------------------------------------------------------

    def _gemm_mfu(self, spec: ModelSpec, tp: int, tokens: np.ndarray) -> np.ndarray:
        if self._tables is None or self._tables.gemm is None:
            return np.full_like(tokens, self.gemm_mfu, dtype=float)
        n = np.full_like(tokens, spec.intermediate_size / tp, dtype=float)
        k = np.full_like(tokens, spec.hidden_size, dtype=float)
        return nearest_mfu(self._tables.gemm, {"m": tokens, "k": k, "n": n})

    def _decode_mfu(self, spec: ModelSpec, tp: int, reqs: np.ndarray, kv: np.ndarray):
        key = (spec.num_heads, spec.num_kv_heads, spec.head_dim, tp)
        table = None if self._tables is None else self._tables.decode.get(key)
        if table is None:
            return np.full_like(reqs, self.decode_attention_mfu, dtype=float)
        kv_len = kv / np.maximum(reqs, 1.0)
        return nearest_mfu(table, {"batch_size": np.maximum(reqs, 1.0), "kv_len": kv_len})

    def _prefill_mfu(self, spec: ModelSpec, tokens: np.ndarray, reqs: np.ndarray):
        key = (spec.num_heads, spec.num_kv_heads, spec.head_dim)
        table = None if self._tables is None else self._tables.prefill.get(key)
        if table is None:
            return np.full_like(tokens, self.attention_mfu, dtype=float)
        return nearest_mfu(table, {"seq_len": tokens / np.maximum(reqs, 1.0)})

    # prediction ----------------------------------------------------------------------

    def components(self, x: BatchFeatures, spec: ModelSpec, tp: int) -> dict[str, np.ndarray]:
        """Compute, memory and overhead time (µs) of steps sharing one model and TP."""
        hw = self.hardware_spec
        tokens = x.scheduled_tokens
        linear_flops = 2.0 * tokens * spec.params_active_per_token / tp
        linear = linear_flops / (hw.flops_per_us * self._gemm_mfu(spec, tp, tokens))
        prefill = prefill_attention_us(x, spec, hw, tp) / self._prefill_mfu(
            spec, x.prefill_tokens, x.prefill_reqs
        )
        decode_flops = 4.0 * spec.num_heads * spec.head_dim * spec.num_layers * x.kv_tokens / tp
        decode_flops = np.where(x.decode_reqs > 0, decode_flops, 0.0)
        decode = decode_flops / (
            hw.flops_per_us * self._decode_mfu(spec, tp, x.decode_reqs, x.kv_tokens)
        )
        weights = spec.weight_bytes_per_gpu(tp, active_experts=spec.experts_per_token)
        memory_bytes = weights + spec.kv_bytes_per_token(tp) * x.kv_tokens
        memory = memory_bytes / (hw.hbm_bytes_per_us * self.bandwidth_efficiency)
        overhead = np.full_like(tokens, self.overhead_us_per_layer * spec.num_layers / tp)
        return {
            "compute_us": linear + prefill + decode,
            "memory_us": memory,
            "overhead_us": overhead,
        }

    def predict(self, steps: pd.DataFrame, rows=None) -> np.ndarray:
        frame = steps.loc[_mask(steps, rows)]
        out = np.empty(len(frame))
        for (model, tp), index in frame.groupby(["model", "tp"], sort=False).indices.items():
            parts = self.components(
                BatchFeatures.from_frame(frame.iloc[index]), self.spec(str(model)), int(tp)
            )
            out[index] = np.maximum(parts["compute_us"], parts["memory_us"]) + parts["overhead_us"]
        return out


BASELINES = {"naive_mean": NaiveMean, "blackbox": Blackbox, "roofline": Roofline}
