"""The Llama-family forward on tiny random models, against transformers (float64) on the same weights.

Fixtures: tests/fixtures/tiny/<arch>/ made by tests/fixtures/make_tiny_models.py — an HF directory (safetensors)
and GGUF files from llama.cpp's converter and quantizer. References come from tests/reference.py, which uses
transformers and gguf-py only.
"""
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from engine.runtime.generate import GenerationStats, generate_tokens
from engine.runtime.runner import DirectRunner
from engine.runtime.sampler import SamplingParams
from gguf_copy import copy_gguf
from reference import hf_greedy, hf_logits
from tiny_models import TINY, fresh_cache, load, reference

ARCHS = ["llama", "qwen2", "qwen3"]
FORMATS = ["hf", "model-F32.gguf", "model-F16.gguf", "model-Q8_0.gguf", "model-Q4_K_M.gguf"]
IDS = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2, 64, 128, 33, 9, 101]


def tolerance(fmt: str) -> float:
    return 1e-4 if fmt in ("hf", "model-F32.gguf") else 5e-3


def test_tiny_models_exercise_the_features():
    """The fixtures really have what the tests claim to cover."""
    configs = {a: load(TINY / a / "hf").config for a in ARCHS}
    assert configs["llama"].rope_scaling["rope_type"] == "llama3" and not configs["llama"].tie_embeddings
    assert configs["llama"].n_kv_heads < configs["llama"].n_heads
    assert configs["qwen2"].qkv_bias and configs["qwen2"].tie_embeddings
    q3 = configs["qwen3"]
    assert q3.qk_norm and q3.head_dim != q3.hidden_size // q3.n_heads
    gg = load(TINY / "llama" / "model-F32.gguf")
    assert gg.config.rope_interleaved and gg.model.inv_freq is not None
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(TINY / "llama" / "model-F32.gguf").tensors}
    q4 = gguf.GGUFReader(TINY / "qwen3" / "model-Q4_K_M.gguf")
    assert {t.tensor_type.name for t in q4.tensors} >= {"Q4_K", "Q6_K"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch, fmt):
    path = TINY / arch / fmt
    loaded = load(path)
    ours = loaded.model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(loaded))
    ref = reference(path, IDS)
    assert ref.std() > 0.5  # non-trivial logits
    np.testing.assert_array_less(np.abs(ours - ref).max(), tolerance(fmt))


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_decode_equals_one_forward(arch):
    """Logits computed a chunk and a token at a time against the cache equal the one-shot forward."""
    path = TINY / arch / "model-F32.gguf"
    loaded = load(path)
    cache = fresh_cache(loaded)
    parts = [loaded.model.forward(np.array(IDS[:6]), np.arange(6), cache),
             loaded.model.forward(np.array(IDS[6:9]), np.arange(6, 9), cache)]
    parts += [loaded.model.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(IDS[9:], 9)]
    np.testing.assert_array_less(np.abs(np.concatenate(parts) - reference(path, IDS)).max(), 1e-4)


@pytest.mark.parametrize("fmt", ["hf", "model-F32.gguf", "model-Q8_0.gguf", "model-Q4_K_M.gguf"])
@pytest.mark.parametrize("arch", ARCHS)
def test_32_greedy_tokens_identical(arch, fmt):
    path = TINY / arch / fmt
    loaded = load(path)
    prompt = IDS[:5]
    ours = list(generate_tokens(DirectRunner(loaded.model), fresh_cache(loaded), prompt, SamplingParams(), 32,
                                frozenset(), GenerationStats()))
    assert ours == hf_greedy(path, prompt, 32)


def test_split_gguf_loads_like_the_single_file(tmp_path):
    """A GGUF split in three with gguf-py's writer gives the same logits as the original file."""
    src = TINY / "qwen2" / "model-Q8_0.gguf"
    copy_gguf(src, tmp_path / "tiny.gguf", split_max_tensors=10)
    parts = sorted(tmp_path.glob("tiny-*-of-*.gguf"))
    assert len(parts) >= 2
    split = load(parts[-1])  # any part names the whole set
    single = load(src)
    ours = split.model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(split))
    np.testing.assert_array_equal(ours, single.model.forward(np.array(IDS), np.arange(len(IDS)),
                                                             fresh_cache(single)))


def test_sharded_safetensors_in_bf16_and_f16(tmp_path):
    """model.safetensors.index.json with two shards; one shard BF16, the other F16; compared with transformers on
    the same (rounded) weights."""
    src = TINY / "qwen3" / "hf"
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    tensors = load_file(src / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    bf16 = {n: (tensors[n].view(np.uint32) + 0x8000 >> 16).astype(np.uint16) for n in names[:half]}
    f16 = {n: tensors[n].astype(np.float16) for n in names[half:]}
    save_file_bf16(bf16, tmp_path / "model-00001-of-00002.safetensors")
    save_file(f16, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {n: "model-00001-of-00002.safetensors" for n in bf16}
    weight_map.update({n: "model-00002-of-00002.safetensors" for n in f16})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = load(tmp_path)
    ours = loaded.model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(loaded))
    np.testing.assert_array_less(np.abs(ours - hf_logits(tmp_path, IDS)).max(), 1e-4)


def save_file_bf16(tensors: dict, path: Path) -> None:
    """Write uint16 arrays as a BF16 safetensors file (safetensors.numpy has no bfloat16 dtype)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        blob = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
