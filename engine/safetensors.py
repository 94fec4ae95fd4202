"""HF-style model directories: config.json + model.safetensors, or model.safetensors.index.json and its shards.

A safetensors file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw data. We memory-map it: F32 tensors are zero-copy views, F16/BF16 matrices stay 16-bit as QTensors.
Tensor names are mapped to the GGUF names the models use (`model.layers.0.self_attn.q_proj.weight` →
`blk.0.attn_q.weight`).
"""
import json
import re
from pathlib import Path

import numpy as np

from engine.errors import ModelFileError, UnsupportedModelError
from kernels.qtensor import QTensor
from kernels.quants import GGMLType

_DTYPES = {"F32": (np.float32, GGMLType.F32), "F16": (np.float16, GGMLType.F16), "BF16": (np.uint16, GGMLType.BF16)}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Gemma 3 norms around attention and FFN (its post_attention_layernorm is not Llama's pre-FFN norm)
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def gguf_name(hf_name: str, layer_names: dict = _LAYER_NAMES) -> str | None:
    """The GGUF-style name for an HF tensor name, or None for tensors the models do not use."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER.match(hf_name)
    if m and m[2] in layer_names:
        return f"blk.{m[1]}.{layer_names[m[2]]}"
    return None


def _read_file(path: Path, layer_names: dict) -> dict[str, np.ndarray | QTensor]:
    """All tensors of one .safetensors file, keyed by GGUF-style name."""
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: cannot read ({e}).") from None
    size = len(mm)
    header_len = int(mm[:8].view("<u8")[0]) if size >= 8 else -1
    if header_len < 2 or 8 + header_len > size:
        raise ModelFileError(f"{path}: not a safetensors file or truncated (bad header length). Download it again.")
    try:
        header = json.loads(bytes(mm[8:8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: safetensors header is not valid JSON ({e}); the file is corrupt.") from None
    base = 8 + header_len
    tensors = {}
    for hf_name, entry in header.items():
        if hf_name == "__metadata__":
            continue
        name = gguf_name(hf_name, layer_names)
        if name is None:
            continue
        dtype = entry.get("dtype")
        if dtype not in _DTYPES:
            raise UnsupportedModelError(f"{path}: tensor {hf_name!r} has dtype {dtype}; supported: F32, F16, BF16.")
        np_dtype, ggml_type = _DTYPES[dtype]
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if base + end > size or end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize:
            raise ModelFileError(f"{path}: tensor {hf_name!r} lies outside the file or has the wrong size: the "
                                 "file is truncated or corrupt. Download it again.")
        raw = mm[base + start:base + end]
        if dtype == "F32":
            tensors[name] = raw.view(np.float32).reshape(shape)
        elif len(shape) == 2:
            tensors[name] = QTensor(raw.reshape(shape[0], -1), ggml_type, shape)
        else:
            tensors[name] = QTensor(raw.reshape(1, -1), ggml_type, (1, shape[-1])).dequantize().reshape(shape)
    return tensors


def load_hf_dir(path: str | Path) -> tuple[dict, dict[str, np.ndarray | QTensor]]:
    """Read config.json and every safetensors shard of an HF-style directory.

    Returns (config dict, tensors by GGUF-style name).
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelFileError(f"{path}: no config.json; an HF-style model directory needs config.json and "
                             "model.safetensors (or model.safetensors.index.json with its shards).")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{config_path}: not valid JSON ({e}).") from None
    index_path = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index_path.is_file():
        weight_map = json.loads(index_path.read_text()).get("weight_map", {})
        files = [path / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(f"{path}: shard(s) {', '.join(missing)} listed in model.safetensors.index.json "
                                 "are missing; download every shard.")
    else:
        raise ModelFileError(f"{path}: no model.safetensors or model.safetensors.index.json.")
    layer_names = _GEMMA3_LAYER_NAMES if config.get("model_type") == "gemma3_text" else _LAYER_NAMES
    tensors = {}
    for f in files:
        tensors.update(_read_file(f, layer_names))
    return config, tensors
