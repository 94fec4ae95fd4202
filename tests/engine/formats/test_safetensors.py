"""engine.formats.safetensors: HF directories are untrusted input. Every malformed header, index or weight is a
ModelFileError (UnsupportedModelError for a valid but unsupported dtype) that names the problem, raised before
any tensor is made."""
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFileError, UnsupportedModelError
from engine.formats.safetensors import load_hf_dir
from kernels.qtensor import QTensor

TINY = Path(__file__).resolve().parents[2] / "fixtures" / "tiny" / "llama" / "hf"
NORM = "model.norm.weight"
EMBED = "model.embed_tokens.weight"


def _write(path: Path, header: dict | bytes, data: bytes, delta: int = 0) -> None:
    """A safetensors file: header length (+ delta), header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) + delta) + raw + data)


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.fixture
def hf(tmp_path) -> Path:
    """A copy of the tiny Llama's HF directory."""
    d = tmp_path / "hf"
    shutil.copytree(TINY, d)
    return d


def _mutated(hf: Path, mutate) -> Path:
    """hf with mutate(header, data) -> (header, data[, header length delta]) applied to model.safetensors."""
    header, data = _split(hf / "model.safetensors")
    _write(hf / "model.safetensors", *mutate(header, data))
    return hf


def test_valid_directory_loads_f32_views_f16_matrices_and_bf16_vectors(tmp_path):
    rng = np.random.default_rng(0)
    mat, vec = rng.standard_normal((4, 6)).astype(np.float16), rng.standard_normal(6).astype(np.float32)
    bf16 = (vec.view(np.uint32) >> 16).astype(np.uint16)
    header = {"__metadata__": {"format": "pt"},
              "model.layers.0.self_attn.q_proj.weight": {"dtype": "F16", "shape": [4, 6], "data_offsets": [0, 48]},
              NORM: {"dtype": "F32", "shape": [6], "data_offsets": [48, 72]},
              "model.layers.0.input_layernorm.weight": {"dtype": "BF16", "shape": [6], "data_offsets": [72, 84]},
              "model.rotary_emb.inv_freq": {"dtype": "I64", "shape": [0], "data_offsets": [84, 84]}}
    _write(tmp_path / "model.safetensors", header, mat.tobytes() + vec.tobytes() + bf16.tobytes())
    (tmp_path / "config.json").write_text("{}")
    _, tensors = load_hf_dir(tmp_path)
    assert set(tensors) == {"blk.0.attn_q.weight", "output_norm.weight", "blk.0.attn_norm.weight"}
    assert isinstance(tensors["blk.0.attn_q.weight"], QTensor) and tensors["blk.0.attn_q.weight"].shape == (4, 6)
    np.testing.assert_array_equal(tensors["output_norm.weight"], vec)
    np.testing.assert_allclose(tensors["blk.0.attn_norm.weight"], vec, rtol=1e-2)


def _entry(name, **change):
    def mutate(header, data):
        header[name] = {**header[name], **change}
        return header, data
    return mutate


def _set(name, value):
    def mutate(header, data):
        header[name] = value
        return header, data
    return mutate


def _drop(name, key):
    def mutate(header, data):
        del header[name][key]
        return header, data
    return mutate


def _offsets(name, f):
    def mutate(header, data):
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = f(start, end, len(data))
        return header, data
    return mutate


@pytest.mark.parametrize(("mutate", "message"), [
    (_set(NORM, 5), f"{NORM}' is a int, not an object"),
    (_set(NORM, [0, 4]), "is a list, not an object"),
    (_drop(NORM, "dtype"), "dtype None"),
    (_drop(NORM, "shape"), "shape None"),
    (_drop(NORM, "data_offsets"), "data_offsets None, not two integers"),
    (_entry(NORM, dtype="F99"), "dtype 'F99', which is not a safetensors dtype"),
    (_entry(NORM, shape=[-1]), r"shape \[-1\]"),
    (_entry(NORM, shape=[2.0]), r"shape \[2.0\]"),
    (_entry(NORM, shape="x"), "shape x"),
    (_entry(NORM, shape=[2**32, 2**32]), "needs 73786976294838206464 bytes"),
    (_entry(NORM, shape=[0, 2**70]), "not a list of at most 8 non-negative integers"),
    (_offsets(NORM, lambda s, e, n: [s]), "not two integers"),
    (_offsets(NORM, lambda s, e, n: [s, e, e]), "not two integers"),
    (_offsets(NORM, lambda s, e, n: [str(s), e]), "not two integers"),
    (_offsets(NORM, lambda s, e, n: [float(s), e]), "not two integers"),
    (_offsets(NORM, lambda s, e, n: [-(e - s), 0]), "outside the"),  # would read the header's bytes
    (_offsets(NORM, lambda s, e, n: [e, s]), "outside the"),
    (_offsets(NORM, lambda s, e, n: [n - (e - s) + 4, n + 4]), "outside the"),
    (_offsets(NORM, lambda s, e, n: [s, e - 4]), "needs 1024 bytes but its data_offsets span 1020"),
    (_offsets(NORM, lambda s, e, n: [0, e - s]), "overlaps"),
])
def test_malformed_header_entries_are_refused(hf, mutate, message):
    _mutated(hf, mutate)
    with pytest.raises(ModelFileError, match=message) as e:
        load_hf_dir(hf)
    assert "model.safetensors" in str(e.value) and "corrupt" in str(e.value)


def _framing(f):
    def mutate(header, data):
        return f(json.dumps(header).encode(), data)
    return mutate


@pytest.mark.parametrize(("mutate", "message"), [
    (_framing(lambda h, d: (h, d, 1)), "not valid JSON"),  # the header takes the data's first byte
    (_framing(lambda h, d: (h, d, -1)), "not valid JSON"),
    (_framing(lambda h, d: (h, d, 2**40)), "header length 1099511"),
    (_framing(lambda h, d: (h[:20] + b"\xff" + h[20:], d)), "not valid JSON .*utf-8"),
    (_framing(lambda h, d: (b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}", d)), "nested too deeply"),
    (_framing(lambda h, d: (b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", d)), "nested 71 levels deep"),
    (_framing(lambda h, d: (b"[1, 2]", d)), "header is a JSON list, not an object"),
    (_framing(lambda h, d: (h, d[:-4])), "outside the"),  # truncated: the last tensor runs past the end
    (_framing(lambda h, d: (h, d + b"\0" * 4)), "the tensors cover"),
])
def test_broken_framing_is_refused(hf, mutate, message):
    _mutated(hf, mutate)
    with pytest.raises(ModelFileError, match=message):
        load_hf_dir(hf)


def test_a_gap_between_tensors_is_refused(hf):
    def drop_first(header, data):
        first = next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][0] == 0)
        del header[first]
        return header, data
    _mutated(hf, drop_first)
    with pytest.raises(ModelFileError, match="leaves a gap of 393216 bytes before it"):
        load_hf_dir(hf)


def test_empty_file_and_used_tensor_of_an_unsupported_dtype(hf):
    (hf / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_hf_dir(hf)

    def as_int32(header, data):
        header[NORM]["dtype"] = "I32"
        return header, data
    shutil.copy(TINY / "model.safetensors", hf / "model.safetensors")
    _mutated(hf, as_int32)
    with pytest.raises(UnsupportedModelError, match="dtype I32; supported: F32, F16, BF16"):
        load_hf_dir(hf)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused(hf, value):
    def poison(header, data):
        start = header[NORM]["data_offsets"][0]
        return header, data[:start + 8] + np.float32(value).tobytes() + data[start + 12:]
    _mutated(hf, poison)
    with pytest.raises(ModelFileError, match=f"{NORM}' holds NaN or infinite values"):
        load_hf_dir(hf)


def _shards(hf: Path) -> dict:
    """Split hf's weights into two shards (embedding alone, then the rest); returns the index dict written."""
    header, data = _split(hf / "model.safetensors")
    header.pop("__metadata__")
    rest = {k: v for k, v in header.items() if k != EMBED}
    s, e = header[EMBED]["data_offsets"]
    _write(hf / "a.safetensors", {EMBED: {**header[EMBED], "data_offsets": [0, e - s]}}, data[s:e])
    chunks, pos, second = [], 0, {}
    for k, v in sorted(rest.items(), key=lambda kv: kv[1]["data_offsets"]):
        s, e = v["data_offsets"]
        second[k] = {**v, "data_offsets": [pos, pos + e - s]}
        chunks.append(data[s:e])
        pos += e - s
    _write(hf / "b.safetensors", second, b"".join(chunks))
    (hf / "model.safetensors").unlink()
    index = {"weight_map": {EMBED: "a.safetensors", **{k: "b.safetensors" for k in rest}}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_sharded_directory_loads_like_the_single_file(hf):
    _, whole = load_hf_dir(hf)
    _shards(hf)
    _, sharded = load_hf_dir(hf)
    assert sharded.keys() == whole.keys()
    for name in whole:
        np.testing.assert_array_equal(np.asarray(sharded[name]), np.asarray(whole[name]))


@pytest.mark.parametrize(("weight_map", "message"), [
    (None, "no weight_map object"),
    ([], "no weight_map object"),
    ({EMBED: "../config.json"}, "weight_map names '../config.json', not a file name"),
    ({EMBED: "/etc/passwd"}, "not a file name"),
    ({EMBED: ["a.safetensors"]}, "not a file name"),
    ({EMBED: ".."}, "not a file name"),
    ({EMBED: "missing.safetensors"}, "missing.safetensors listed in model.safetensors.index.json are missing"),
])
def test_malformed_index_is_refused(hf, weight_map, message):
    index = _shards(hf)
    index["weight_map"] = weight_map if not isinstance(weight_map, dict) else {**index["weight_map"], **weight_map}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match=message):
        load_hf_dir(hf)


def test_a_tensor_in_two_shards_is_refused(hf):
    _shards(hf)
    header, data = _split(hf / "a.safetensors")
    second, data2 = _split(hf / "b.safetensors")
    second[EMBED] = {**header[EMBED], "data_offsets": [len(data2), len(data2) + len(data)]}
    _write(hf / "b.safetensors", second, data2 + data)
    with pytest.raises(ModelFileError, match="'token_embd.weight' is also in another shard"):
        load_hf_dir(hf)


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"a": "\xff"}', "config.json: not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "config.json: not valid JSON .*nested too deeply"),
    (b"[1]", "config.json: expected a JSON object, found list"),
])
def test_malformed_config_json_is_refused(hf, raw, message):
    (hf / "config.json").write_bytes(raw)
    with pytest.raises(ModelFileError, match=message):
        load_hf_dir(hf)
