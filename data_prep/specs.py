"""Typed model and hardware specs read from Hugging Face ``config.json`` files.

Everything the basis functions need about a model is derived here once, so that a
model the fit never saw can be described from its config alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1, "fp8": 1}
KV_BLOCK_TOKENS = 16


def canonical_model_name(raw: str) -> str:
    """One name per model family: ``meta-llama/Llama-2-70b-hf`` and ``llama-2-70b`` agree.

    Drops the organisation, lower-cases, turns dots into dashes and strips the
    ``-hf`` / ``-instruct`` / ``-chat`` / ``-vX-Y`` suffixes that vary between slugs.
    """
    name = raw.strip().split("/")[-1].lower().replace(".", "-").replace("_", "-")
    previous = None
    while previous != name:
        previous = name
        name = re.sub(r"-(hf|instruct|chat|v\d+(-\d+)*)$", "", name)
    return name


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of one transformer, with the derived quantities of BRIEF §4."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 1
    experts_per_token: int = 1
    dtype_bytes: int = 2
    hf_id: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def architecture(self) -> str:
        return "moe" if self.is_moe else "dense"

    @property
    def attention_params_per_layer(self) -> int:
        """Q, K, V and O projection weights (elements)."""
        q_out = self.num_heads * self.head_dim
        kv_out = 2 * self.num_kv_heads * self.head_dim
        return self.hidden_size * (q_out + kv_out) + q_out * self.hidden_size

    @property
    def expert_params(self) -> int:
        """Gate, up and down projections of one FFN expert (elements)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        """Input embedding plus LM head (elements)."""
        return 2 * self.vocab_size * self.hidden_size

    @property
    def params_total(self) -> int:
        per_layer = self.attention_params_per_layer + self.num_experts * self.expert_params
        return self.num_layers * per_layer + self.embedding_params

    @property
    def params_active_per_token(self) -> int:
        """Parameters one token multiplies through (top-k experts for MoE)."""
        per_layer = self.attention_params_per_layer + self.experts_per_token * self.expert_params
        return self.num_layers * per_layer + self.embedding_params

    def weight_bytes_per_gpu(self, tp: int, active_experts: float | None = None) -> float:
        """Bytes of weights one GPU streams from HBM per step at tensor-parallel degree ``tp``.

        ``active_experts`` is how many distinct experts a step touches (all of them by
        default); dense models have one.
        """
        experts = self.num_experts if active_experts is None else active_experts
        per_layer = self.attention_params_per_layer + experts * self.expert_params
        return (self.num_layers * per_layer + self.embedding_params / 2) * self.dtype_bytes / tp

    def kv_bytes_per_token(self, tp: int = 1) -> float:
        """KV-cache bytes one token occupies on one GPU (K and V, every layer)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes / tp

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HardwareSpec:
    """Datasheet peaks of one accelerator."""

    name: str
    bf16_dense_tflops: float
    hbm_bandwidth_tb_s: float
    nvlink_bandwidth_gb_s: float
    hbm_capacity_gb: float

    @property
    def flops_per_us(self) -> float:
        return self.bf16_dense_tflops * 1e6

    @property
    def hbm_bytes_per_us(self) -> float:
        return self.hbm_bandwidth_tb_s * 1e6

    @property
    def nvlink_bytes_per_us(self) -> float:
        return self.nvlink_bandwidth_gb_s * 1e3

    def to_dict(self) -> dict:
        return asdict(self)


def model_spec_from_config(config: dict, name: str | None = None) -> ModelSpec:
    """Build a spec from a parsed HF ``config.json`` (Llama/Mistral/Mixtral/Qwen style)."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        layers = int(config["num_hidden_layers"])
        ffn = int(config.get("moe_intermediate_size") or config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except KeyError as missing:
        raise ValueError(f"config.json lacks required field {missing}") from None
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    hf_id = str(config.get("hf_id") or config.get("_name_or_path") or "")
    return ModelSpec(
        name=canonical_model_name(name or config.get("name") or hf_id or "unnamed"),
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate_size=ffn,
        vocab_size=vocab,
        num_experts=experts,
        experts_per_token=int(config.get("num_experts_per_tok") or 1) if experts > 1 else 1,
        dtype_bytes=DTYPE_BYTES.get(dtype, 2),
        hf_id=hf_id,
    )


def load_model_spec(path: str | Path, name: str | None = None) -> ModelSpec:
    """Read a ``config.json`` (or a folder holding one) into a :class:`ModelSpec`."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read model config: {err}") from None
    if name is None and not config.get("name") and not config.get("_name_or_path"):
        name = path.stem if path.stem != "config" else path.parent.name
    try:
        return model_spec_from_config(config, name=name)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _packaged(kind: str):
    return resources.files("data_prep").joinpath("specs_data", kind)


def known_models() -> dict[str, ModelSpec]:
    """The seed models shipped with the package, by canonical name."""
    specs = {}
    for entry in _packaged("models").iterdir():
        if entry.name.endswith(".json"):
            spec = model_spec_from_config(json.loads(entry.read_text()))
            specs[spec.name] = spec
    return specs


def get_model_spec(name_or_path: str, extra_dirs: list[Path] | tuple = ()) -> ModelSpec:
    """Find a model by any of its slugs among shipped configs, ``extra_dirs`` or a path."""
    candidate = Path(name_or_path)
    if candidate.exists():
        return load_model_spec(candidate)
    wanted = canonical_model_name(name_or_path)
    for folder in extra_dirs:
        for path in sorted(Path(folder).glob("*.json")):
            spec = load_model_spec(path)
            if spec.name == wanted or canonical_model_name(path.stem) == wanted:
                return spec
    specs = known_models()
    if wanted in specs:
        return specs[wanted]
    raise KeyError(
        f"unknown model {name_or_path!r} (canonical {wanted!r}); known: {sorted(specs)}; "
        "pass its config.json"
    )


def load_hardware(name_or_path: str = "h100-sxm") -> HardwareSpec:
    """Hardware constants by shipped name or from a JSON file with the same keys."""
    path = Path(name_or_path)
    if path.exists():
        data = json.loads(path.read_text())
    else:
        entry = _packaged("hardware").joinpath(f"{name_or_path}.json")
        if not entry.is_file():
            raise KeyError(f"unknown hardware {name_or_path!r}")
        data = json.loads(entry.read_text())
    fields = HardwareSpec.__dataclass_fields__
    return HardwareSpec(**{k: data[k] for k in fields})
