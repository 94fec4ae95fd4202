"""HF-style model directories: config.json + model.safetensors, or model.safetensors.index.json and its shards.

A safetensors file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw data. We memory-map it: F32 tensors are zero-copy views, F16/BF16 matrices stay 16-bit as QTensors.
Tensor names are mapped to the GGUF names the models use (`model.layers.0.self_attn.q_proj.weight` →
`blk.0.attn_q.weight`).

The files are untrusted: the whole header is checked before any tensor is made (every entry an object with a
known dtype, a shape of non-negative ints, data_offsets inside the data and as long as the shape says, the
entries tiling the data without gaps or overlaps, as the format requires), and 1-D float tensors (norms, biases)
must be finite.
"""
import math
import re
from pathlib import Path

import numpy as np

from engine.errors import ModelFileError, UnsupportedModelError
from engine.formats import jsonfile
from kernels.qtensor import QTensor
from kernels.quants import GGMLType

_DTYPES = {"F32": GGMLType.F32, "F16": GGMLType.F16, "BF16": GGMLType.BF16}  # the dtypes the models take
# bytes per element of every dtype the format defines (tensors we do not use may have any of them)
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000  # as the safetensors library: real headers are at most a few MB
_MAX_NDIM = 8
_MAX_DIM = 1 << 40  # bounds the dimensions of empty tensors, which no data size limits
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _corrupt(path: Path, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: {what}; the safetensors file is corrupt or truncated. Download it again.")


def _check_entry(path: Path, name: str, entry, data_size: int) -> tuple[int, int]:
    """Validate one header entry against the data section's size; returns its (start, end) data offsets."""
    if not isinstance(entry, dict):
        raise _corrupt(path, f"header entry {name!r} is a {type(entry).__name__}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise _corrupt(path, f"tensor {name!r} has dtype {dtype!r}, which is not a safetensors dtype")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape)):
        raise _corrupt(path, f"tensor {name!r} has shape {str(shape)[:80]}, not a list of at most {_MAX_NDIM} "
                             "non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise _corrupt(path, f"tensor {name!r} has data_offsets {str(offsets)[:80]}, not two integers")
    start, end = offsets
    if not 0 <= start <= end <= data_size:
        raise _corrupt(path, f"tensor {name!r} has data_offsets [{start}, {end}] outside the {data_size}-byte data")
    nbytes = _ITEMSIZE[dtype] * math.prod(shape)  # Python ints: no overflow
    if end - start != nbytes:
        raise _corrupt(path, f"tensor {name!r} of shape {shape} ({dtype}) needs {nbytes} bytes but its "
                             f"data_offsets span {end - start}")
    return start, end


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors' byte ranges must cover the data exactly, without gaps or overlaps (a format rule)."""
    pos, prev = 0, None
    for start, end, name in sorted(spans):
        if start != pos:
            what = f"overlaps {prev!r}" if start < pos else f"leaves a gap of {start - pos} bytes before it"
            raise _corrupt(path, f"tensor {name!r} (data_offsets [{start}, {end}]) {what}")
        pos, prev = end, name
    if pos != data_size:
        raise _corrupt(path, f"the tensors cover {pos} bytes of the {data_size}-byte data section")


def _read_header(path: Path, mm: np.ndarray) -> tuple[dict, int]:
    """The validated header of a memory-mapped safetensors file: ({name: entry}, offset of the data section)."""
    size = len(mm)
    header_len = int(mm[:8].view("<u8")[0]) if size >= 8 else -1
    if not 2 <= header_len <= min(size - 8, MAX_HEADER_BYTES):
        raise _corrupt(path, f"header length {header_len} does not fit the {size}-byte file")
    try:
        header = jsonfile.loads(bytes(mm[8:8 + header_len]))
    except ValueError as e:
        raise _corrupt(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"header is a JSON {type(header).__name__}, not an object")
    base = 8 + header_len
    data_size = size - base
    header.pop("__metadata__", None)
    spans = [(*_check_entry(path, name, entry, data_size), name) for name, entry in header.items()]
    _check_tiling(path, spans, data_size)
    return header, base


def _tensor(path: Path, name: str, entry: dict, raw: np.ndarray) -> np.ndarray | QTensor:
    """One tensor from its validated entry and bytes raw (uint8): F32 as a view, F16/BF16 matrices as QTensors,
    other F16/BF16 tensors (and empty ones) as float32. 1-D tensors (norms, biases) must be finite."""
    dtype, shape = entry["dtype"], tuple(entry["shape"])
    if dtype not in _DTYPES:
        raise UnsupportedModelError(f"{path}: tensor {name!r} has dtype {dtype}; supported: F32, F16, BF16.")
    if raw.size == 0:
        return np.zeros(shape, np.float32)
    if dtype == "F32":
        t = raw.view(np.float32).reshape(shape)
    elif len(shape) == 2:
        return QTensor(raw.reshape(shape[0], -1), _DTYPES[dtype], shape)
    else:
        t = QTensor(raw.reshape(1, -1), _DTYPES[dtype], (1, raw.size // 2)).dequantize().reshape(shape)
    if t.ndim == 1 and not np.isfinite(t).all():
        raise ModelFileError(f"{path}: tensor {name!r} holds NaN or infinite values; the weights are corrupt. "
                             "Download them again.")
    return t


def _read_file(path: Path, layer_names: dict) -> dict[str, np.ndarray | QTensor]:
    """All tensors the models use of one .safetensors file, keyed by GGUF-style name."""
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:  # ValueError: an empty file
        raise ModelFileError(f"{path}: cannot read ({e}).") from None
    header, base = _read_header(path, mm)
    tensors = {}
    for hf_name, entry in header.items():
        name = gguf_name(hf_name, layer_names)
        if name is not None:
            start, end = entry["data_offsets"]
            tensors[name] = _tensor(path, hf_name, entry, mm[base + start:base + end])
    return tensors


def index_shards(index_path: Path) -> list[Path]:
    """The shard files a model.safetensors.index.json names (its weight_map values), each a plain file name in the
    index's folder."""
    weight_map = jsonfile.read(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(f"{index_path}: no weight_map object; the index is corrupt. Download it again.")
    bad = [n for n in weight_map.values() if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise ModelFileError(f"{index_path}: weight_map names {str(bad[0])[:80]!r}, not a file name in the model "
                             "directory; the index is corrupt.")
    return [index_path.parent / n for n in dict.fromkeys(weight_map.values())]


def load_hf_dir(path: str | Path) -> tuple[dict, dict[str, np.ndarray | QTensor]]:
    """Read config.json and every safetensors shard of an HF-style directory.

    Returns (config dict, tensors by GGUF-style name).
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelFileError(f"{path}: no config.json; an HF-style model directory needs config.json and "
                             "model.safetensors (or model.safetensors.index.json with its shards).")
    config = jsonfile.read(config_path)
    index_path = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index_path.is_file():
        files = index_shards(index_path)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(f"{path}: shard(s) {', '.join(missing)} listed in model.safetensors.index.json "
                                 "are missing; download every shard.")
    else:
        raise ModelFileError(f"{path}: no model.safetensors or model.safetensors.index.json.")
    layer_names = _GEMMA3_LAYER_NAMES if config.get("model_type") == "gemma3_text" else _LAYER_NAMES
    tensors = {}
    for f in files:
        for name, t in _read_file(f, layer_names).items():
            if name in tensors:
                raise ModelFileError(f"{f}: tensor {name!r} is also in another shard; the shards are inconsistent.")
            tensors[name] = t
    return config, tensors
