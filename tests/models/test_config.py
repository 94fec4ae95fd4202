"""ModelConfig.from_hf: Qwen2's sliding window applies to the layers transformers gives it (layer_types, else
layers >= max_window_layers), checked against transformers (float64) on the tiny Qwen2's weights; malformed
config.json values are typed errors naming their key."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFileError, UnsupportedModelError
from engine.formats.hub import resolve
from engine.runtime.kvcache import KVCache
from engine.formats.loader import load_source
from models.config import ModelConfig
from reference import hf_logits

TINY = Path(__file__).parent.parent / "fixtures" / "tiny" / "qwen2" / "hf"
IDS = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2, 64, 128, 33, 9, 101]  # 17 > window 4


def _qwen2_dir(root: Path, name: str, **config) -> Path:
    hf = root / name
    shutil.copytree(TINY, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(config)
    (hf / "config.json").write_text(json.dumps(cfg))
    return hf


def _logits(hf: Path) -> np.ndarray:
    loaded = load_source(resolve(str(hf)))
    c = loaded.config
    return loaded.model.forward(np.array(IDS), np.arange(len(IDS)), KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 64))


@pytest.mark.parametrize(("config", "sliding"), [
    (dict(max_window_layers=1), (False, True)),  # layers >= max_window_layers slide
    (dict(max_window_layers=2), None),  # none does: no window at all
    (dict(max_window_layers=0, layer_types=["sliding_attention", "full_attention"]), (True, False)),
])
def test_qwen2_window_layers_match_transformers(tmp_path, config, sliding):
    hf = _qwen2_dir(tmp_path, "windowed", use_sliding_window=True, sliding_window=4, **config)
    cfg = load_source(resolve(str(hf))).config
    assert cfg.sliding_layers == sliding and cfg.sliding_window == (4 if sliding else None)
    ours, ref = _logits(hf), hf_logits(hf, IDS)
    assert np.abs(ours - ref).max() < 1e-4
    full = hf_logits(_qwen2_dir(tmp_path, "full"), IDS)
    if sliding:  # the window matters for this prompt, so the check above saw it
        assert np.abs(ref[:4] - full[:4]).max() < 1e-6 and np.abs(ref[4:] - full[4:]).max() > 1e-2
    else:
        assert np.abs(ref - full).max() < 1e-9


# --- config.json values are checked as they are read --------------------------------------------------------------

GEMMA3 = json.loads((Path(__file__).parent.parent / "fixtures" / "tiny" / "gemma3" / "hf" / "config.json").read_text())
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


@pytest.mark.parametrize(("change", "error", "message"), [
    (dict(hidden_size=None), ModelFileError, "config.json hidden_size is missing"),
    (dict(vocab_size="512"), ModelFileError, "config.json vocab_size is str '512', expected an integer"),
    (dict(num_hidden_layers=7.5), ModelFileError, "num_hidden_layers is float 7.5, expected an integer"),
    (dict(num_hidden_layers=10**6), ModelFileError, "num_hidden_layers is 1000000, but must be >= 1 and <= 4096"),
    (dict(num_attention_heads=0), ModelFileError, "num_attention_heads is 0, but must be >= 1"),
    (dict(num_attention_heads=[4]), ModelFileError, "num_attention_heads is list"),
    (dict(num_key_value_heads=True), ModelFileError, "num_key_value_heads is bool True, expected an integer"),
    (dict(intermediate_size=-1), ModelFileError, "intermediate_size is -1, but must be >= 1"),
    (dict(rms_norm_eps=float("nan")), ModelFileError, "rms_norm_eps is float nan, expected a finite number"),
    (dict(rms_norm_eps=0), ModelFileError, "rms_norm_eps is 0.0, but must be > 0"),
    (dict(rope_theta=float("inf")), ModelFileError, "rope_theta is float inf, expected a finite number"),
    (dict(rope_local_base_freq=0.5), ModelFileError, "rope_local_base_freq is 0.5, but must be >= 1"),
    (dict(query_pre_attn_scalar=0), ModelFileError, "query_pre_attn_scalar is 0.0, but must be > 0"),
    (dict(final_logit_softcapping=-3.0), ModelFileError, "final_logit_softcapping is -3.0, but must be >= 0"),
    (dict(tie_word_embeddings="true"), ModelFileError, "tie_word_embeddings is str 'true', expected true or false"),
    (dict(hidden_activation=5), ModelFileError, "hidden_activation is int 5, expected a string"),
    (dict(layer_types=[0] * 7), ModelFileError, "layer_types is a list that is not all strings"),
    (dict(layer_types=["linear_attention"] * 7), UnsupportedModelError, "layer_types holds 'linear_attention'"),
    (dict(sliding_window_pattern=[1, 0]), ModelFileError, "sliding_window_pattern is a list that is not all true"),
    (dict(sliding_window=-5), ModelFileError, "sliding_window is -5, but must be >= 0"),
    (dict(rope_scaling="linear"), ModelFileError, "rope_scaling is str 'linear', expected an object"),
    (dict(rope_scaling={"rope_type": "linear"}), ModelFileError, "rope_scaling.factor is missing"),
    (dict(rope_scaling={"type": "linear", "factor": 0}), ModelFileError, "rope_scaling.factor is 0.0, but must be > 0"),
    (dict(rope_scaling={"factor": 2.0}), ModelFileError, "rope_scaling.rope_type is None, expected a string"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), UnsupportedModelError, "RoPE scaling 'yarn'"),
    (dict(rope_scaling={**LLAMA3_SCALING, "high_freq_factor": 1.0}), ModelFileError,
     "rope_scaling.high_freq_factor is 1.0, but must be > 1.0"),
    (dict(rope_scaling={**LLAMA3_SCALING, "original_max_position_embeddings": "8k"}), ModelFileError,
     "rope_scaling.original_max_position_embeddings is str '8k'"),
    (dict(rope_parameters={"full_attention": 5}), ModelFileError, "rope_parameters.full_attention is int 5"),
    (dict(rope_parameters={"full_attention": {"rope_theta": -1}, "sliding_attention": {}}), ModelFileError,
     "rope_parameters.full_attention.rope_theta is -1.0, but must be >= 1"),
    (dict(architectures="Gemma3ForCausalLM"), ModelFileError, "architectures is str"),
    (dict(architectures=[["x"]], model_type=["gemma3"]), UnsupportedModelError, "is not supported"),
])
def test_malformed_config_values_name_their_key(change, error, message):
    with pytest.raises(error, match=message):
        ModelConfig.from_hf({**GEMMA3, **change})


def test_equivalent_spellings_are_accepted():
    """Integral floats for integers, ints for floats, null for absent keys: as transformers reads them."""
    cfg = ModelConfig.from_hf({**GEMMA3, "hidden_size": 64.0, "rope_theta": 1000000, "num_key_value_heads": None,
                               "rope_scaling": {"type": "linear", "factor": 4}})
    ref = ModelConfig.from_hf({**GEMMA3, "num_key_value_heads": 4})
    assert cfg == ref and cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert ModelConfig.from_hf({**GEMMA3, "rope_scaling": {"rope_type": "default"}}).rope_scaling is None


# -- ModelConfig.from_gguf and __post_init__: GGUF hyperparameters are typed errors naming their key ---------------

GGUF_TINY = Path(__file__).parent.parent / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def qwen3_gguf():
    from engine.formats.gguf import GGUFFile
    g = GGUFFile(GGUF_TINY / "qwen3" / "model-Q8_0.gguf")
    return g.metadata, {n: i.shape for n, i in g.infos.items()}


WRONG = ["32", [4, 4], [], float("inf"), float("-inf"), float("nan"), 0, -1, True, None]
SIZES = ["block_count", "embedding_length", "feed_forward_length", "attention.head_count",
         "attention.head_count_kv", "attention.key_length"]
REALS = ["rope.freq_base", "attention.layer_norm_rms_epsilon"]


@pytest.mark.parametrize("key,value", [(k, v) for k in SIZES for v in WRONG + [2.5, 2**31, 2**63 - 1, 2**64 - 1]]
                         + [(k, v) for k in REALS for v in WRONG + [-1e-6, 5e-324 * 0]]
                         + [("context_length", v) for v in WRONG + [1.5]]
                         + [("attention.sliding_window", v) for v in ["4", [4], 2**64 - 1, -1, 1.5, float("nan")]])
def test_bad_gguf_hyperparameters_name_their_key(qwen3_gguf, key, value):
    metadata, shapes = qwen3_gguf
    metadata = {**metadata, f"qwen3.{key}": value}
    if value is None and key in ("attention.head_count_kv", "attention.key_length", "rope.freq_base"):
        return  # absent: these have defaults
    with pytest.raises(ModelFileError, match=f"qwen3.{key}" if value is not None else f"lacks qwen3.{key}"):
        ModelConfig.from_gguf(metadata, shapes)


@pytest.mark.parametrize("change,error,message", [
    ({"attention.head_count_kv": 3}, ModelFileError, "4 attention heads is not a multiple of 3 KV heads"),
    ({"block_count": 3}, ModelFileError, "block_count is 3 but the file has no tensors of layer 2"),
    ({"block_count": 2**31 - 1}, ModelFileError, "no tensors of layer 2147483646"),
    ({"attention.value_length": 64}, UnsupportedModelError, "value_length is 64, not the head size 128"),
    ({"rope.dimension_count": 64}, UnsupportedModelError, "dimension_count is 64, not the head size 128"),
    ({"rope.scaling.type": "linear", "rope.scaling.factor": 0.0}, ModelFileError, "rope.scaling.factor is float"),
    ({"rope.scaling.type": "yarn"}, UnsupportedModelError, "RoPE scaling type 'yarn'"),
    ({"attention.key_length": 127, "attention.value_length": 127}, ModelFileError, "head_dim 127 is odd"),
])
def test_inconsistent_gguf_hyperparameters(qwen3_gguf, change, error, message):
    metadata, shapes = qwen3_gguf
    with pytest.raises(error, match=message):
        ModelConfig.from_gguf({**metadata, **{f"qwen3.{k}": v for k, v in change.items()}}, shapes)


def test_a_huge_context_length_is_left_to_the_kv_cache_check(qwen3_gguf):
    """The file's context_length only bounds n_ctx by default; engine.load refuses it against memory, naming
    --ctx-size (tests/engine/test_llm.py), so a smaller n_ctx still loads such a file."""
    metadata, shapes = qwen3_gguf
    assert ModelConfig.from_gguf({**metadata, "qwen3.context_length": 2**63 - 1}, shapes).max_context == 2**63 - 1


def test_gemma3_window_settings_are_checked():
    from engine.formats.gguf import GGUFFile
    g = GGUFFile(GGUF_TINY / "gemma3" / "model-Q8_0.gguf")
    shapes = {n: i.shape for n, i in g.infos.items()}
    for key, value, message in [("sliding_window_pattern", "6", "pattern str '6'"),
                                ("sliding_window_pattern", -6, "pattern int -6"),
                                ("sliding_window_pattern", [True, False], "names 2 layers for a model of 7"),
                                ("rope.freq_base_swa", 0.0, "gemma3.rope.freq_base_swa"),
                                ("final_logit_softcapping", float("nan"), "gemma3.final_logit_softcapping")]:
        with pytest.raises(ModelFileError, match=message):
            ModelConfig.from_gguf({**g.metadata, f"gemma3.attention.{key}" if "pattern" in key else f"gemma3.{key}":
                                   value}, shapes)
    pattern = ModelConfig.from_gguf({**g.metadata, "gemma3.attention.sliding_window_pattern": 3}, shapes)
    assert pattern.sliding_layers == (True, True, False, True, True, False, True)


BASE = dict(arch="llama", vocab_size=32, hidden_size=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
            intermediate_size=32, rms_eps=1e-5, rope_theta=10000.0, max_context=64)


@pytest.mark.parametrize("change,message", [
    (dict(n_kv_heads=0), "n_kv_heads is 0, outside 1 .. 2147483647"),
    (dict(n_layers=-1), "n_layers is -1"),
    (dict(vocab_size=2**31), "vocab_size is 2147483648"),
    (dict(hidden_size="16"), "hidden_size is str '16'"),
    (dict(max_context=0), "max_context is 0"),
    (dict(sliding_window=2**64 - 1), "sliding_window is 18446744073709551615"),
    (dict(rms_eps=float("nan")), "rms_eps is float nan"),
    (dict(rope_theta=0.0), "rope_theta is float 0.0"),
    (dict(rope_theta_swa=-1.0), "rope_theta_swa is float -1.0"),
    (dict(final_softcap=float("inf")), "final_softcap is float inf"),
    (dict(head_dim=5, n_heads=4), "head_dim 5 is odd"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}), "high_freq_factor 4.0 is not above"),
    (dict(rope_scaling={"rope_type": "linear", "factor": "2"}), "rope_scaling factor is str '2'"),
])
def test_post_init_refuses_what_no_model_has(change, message):
    with pytest.raises(ModelFileError, match=message):
        ModelConfig(**{**BASE, **change})
    assert ModelConfig(**BASE).n_kv_heads == 2
