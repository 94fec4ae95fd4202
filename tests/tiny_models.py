"""The tiny random fixture models (tests/fixtures/tiny/<arch>/, made by fixtures/make_tiny_models.py): loading
them in our engine, their transformers references, and a fresh KV cache."""
from pathlib import Path

from engine.formats.hub import resolve
from engine.formats.loader import load_source
from engine.runtime.kvcache import KVCache
from reference import gguf_logits, hf_logits

TINY = Path(__file__).parent / "fixtures" / "tiny"  # one folder per architecture


def load(path: Path):
    """Our engine's Loaded (config, model, tokenizer, ...) for a fixture file or HF directory."""
    return load_source(resolve(str(path)))


def reference(path: Path, ids):
    """transformers logits [len(ids), vocab] float64: on the HF directory, or on a GGUF's dequantized weights."""
    return hf_logits(path, ids) if path.is_dir() else gguf_logits(path, ids)


def fresh_cache(loaded, n: int = 64) -> KVCache:
    c = loaded.config
    return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, n)
