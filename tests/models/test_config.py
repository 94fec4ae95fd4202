"""ModelConfig.from_hf: Qwen2's sliding window applies to the layers transformers gives it (layer_types, else
layers >= max_window_layers), checked against transformers (float64) on the tiny Qwen2's weights."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.hub import resolve
from engine.kvcache import KVCache
from engine.loader import load_source
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
