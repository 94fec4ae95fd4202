"""ModelConfig.from_hf: Qwen2's sliding window applies to the layers transformers gives it (layer_types, else
layers >= max_window_layers), checked against transformers (float64) on the tiny Qwen2's weights; malformed
config.json values are typed errors naming their key."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFileError, UnsupportedModelError
from engine.hub import resolve
from engine.kvcache import KVCache
from engine.loader import load_source
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
