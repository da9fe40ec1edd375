"""Model and hardware specs against hand-computed facts of the seed models."""

import json

import pytest

from data_prep.specs import (
    canonical_model_name,
    get_model_spec,
    known_models,
    load_hardware,
    load_model_spec,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("llama-2-70b", "llama-2-70b"),
        ("llama-2-70b-hf", "llama-2-70b"),
        ("meta-llama/Llama-2-70b-hf", "llama-2-70b"),
        ("codellama/CodeLlama-34b-Instruct-hf", "codellama-34b"),
        ("mixtral-8x7b-v0-1", "mixtral-8x7b"),
        ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),
    ],
)
def test_canonical_names_merge_slug_variants(raw, canonical):
    assert canonical_model_name(raw) == canonical


def test_seed_models_are_shipped_with_known_sizes():
    specs = known_models()
    assert set(specs) == {"llama-2-7b", "llama-2-70b", "codellama-34b", "mixtral-8x7b"}
    # Published parameter counts (billions).
    expected = {
        "llama-2-7b": 6.74,
        "llama-2-70b": 68.98,
        "codellama-34b": 33.74,
        "mixtral-8x7b": 46.70,
    }
    for name, billions in expected.items():
        assert specs[name].params_total / 1e9 == pytest.approx(billions, rel=0.01)
    assert specs["mixtral-8x7b"].architecture == "moe"
    assert specs["llama-2-70b"].architecture == "dense"


def test_derived_quantities_of_llama_70b():
    spec = get_model_spec("llama-2-70b-hf")
    assert spec.head_dim == 128
    # K and V, 80 layers, 8 kv heads × 128, 2 bytes: 327,680 bytes per token.
    assert spec.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
    assert spec.kv_bytes_per_token(tp=4) == spec.kv_bytes_per_token() / 4
    # Attention: q 8192×8192, k/v 8192×1024 each, o 8192×8192.
    assert spec.attention_params_per_layer == 8192 * (8192 + 2 * 1024) + 8192 * 8192
    per_layer = spec.attention_params_per_layer + 3 * 8192 * 28672
    streamed = (80 * per_layer + 32000 * 8192) * 2 / 4  # LM head, not the input embedding
    assert spec.weight_bytes_per_gpu(4) == pytest.approx(streamed)


def test_moe_streams_only_active_experts():
    spec = get_model_spec("mixtral-8x7b")
    all_experts = spec.weight_bytes_per_gpu(2)
    two_experts = spec.weight_bytes_per_gpu(2, active_experts=2)
    assert two_experts < all_experts
    assert all_experts - two_experts == pytest.approx(32 * 6 * spec.expert_params * 2 / 2)


def test_config_without_head_dim_or_kv_heads(tmp_path):
    config = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 100,
        "torch_dtype": "float32",
    }
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    spec = load_model_spec(path.parent)
    assert spec.name == "tiny"
    assert (spec.head_dim, spec.num_kv_heads, spec.dtype_bytes) == (16, 4, 4)


def test_bad_config_names_the_file_and_field(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match=r"broken\.json.*num_attention_heads|broken\.json"):
        load_model_spec(path)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown model"):
        get_model_spec("gpt-17")


def test_hardware_constants():
    hw = load_hardware()
    assert hw.hbm_bytes_per_us == pytest.approx(3.35e6)
    assert hw.flops_per_us == pytest.approx(989.5e6)
