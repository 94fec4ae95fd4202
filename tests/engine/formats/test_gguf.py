"""engine.formats.gguf: our header parser agrees with gguf-py's GGUFReader; damaged files give typed errors."""
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from engine.errors import ModelFileError, UnsupportedModelError
from engine.formats.gguf import GGUFFile
from gguf_copy import copy_gguf
from kernels.qtensor import QTensor

TINY = Path(__file__).parents[2] / "fixtures" / "tiny"


@pytest.mark.parametrize("name", ["llama/model-F32.gguf", "qwen2/model-F16.gguf", "qwen3/model-Q8_0.gguf"])
def test_metadata_and_tensors_match_gguf_reader(name):
    path = TINY / name
    ours, reader = GGUFFile(path), gguf.GGUFReader(path)
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == expected  # both turn the same stored bytes into Python values: exactly equal
    assert set(ours.infos) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        mine = ours.tensor(t.name)
        assert ours.infos[t.name].ggml_type == int(t.tensor_type)
        assert ours.infos[t.name].shape == tuple(reversed(t.shape.tolist()))
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(ours.infos[t.name].shape)
        got = mine.dequantize() if isinstance(mine, QTensor) else np.asarray(mine)
        np.testing.assert_array_equal(got, ref)


def test_tensors_are_views_of_the_file_not_copies():
    g = GGUFFile(TINY / "qwen3" / "model-Q8_0.gguf")
    w = g.tensor("blk.0.ffn_up.weight")
    assert isinstance(w, QTensor)
    assert not w.raw.flags.owndata and isinstance(w.raw, np.memmap)


def patched(tmp_path: Path, data: bytes, name="bad.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_file(tmp_path):
    data = (TINY / "llama" / "model-Q8_0.gguf").read_bytes()
    for cut in (len(data) - 1000, 3000, 30):
        with pytest.raises(ModelFileError, match="truncated"):
            GGUFFile(patched(tmp_path, data[:cut]))


def test_wrong_magic_and_empty_file(tmp_path):
    data = (TINY / "llama" / "model-Q8_0.gguf").read_bytes()
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        GGUFFile(patched(tmp_path, b"GGML" + data[4:]))
    with pytest.raises(ModelFileError, match="empty"):
        GGUFFile(patched(tmp_path, b""))
    with pytest.raises(ModelFileError, match="version"):
        GGUFFile(patched(tmp_path, data[:4] + struct.pack("<I", 7) + data[8:]))


def _tensor_type_offset(data: bytes, name: str) -> int:
    """Byte offset of the ggml type field in the tensor info of `name`."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims


@pytest.mark.parametrize("code,error,message", [(99, UnsupportedModelError, "unknown GGML type 99"),
                                                (10, UnsupportedModelError, "Q2_K")])
def test_unknown_or_unsupported_quant_type(tmp_path, code, error, message):
    data = bytearray((TINY / "llama" / "model-Q8_0.gguf").read_bytes())
    at = _tensor_type_offset(bytes(data), "blk.0.attn_q.weight")
    data[at:at + 4] = struct.pack("<I", code)
    with pytest.raises(error, match=message):
        GGUFFile(patched(tmp_path, bytes(data)))


def test_missing_split_part(tmp_path):
    copy_gguf(TINY / "qwen2" / "model-Q8_0.gguf", tmp_path / "m.gguf", split_max_tensors=10)
    parts = sorted(tmp_path.glob("m-*-of-*.gguf"))
    parts[1].unlink()
    with pytest.raises(ModelFileError, match="missing part"):
        GGUFFile(parts[0])


# -- malformed headers: every count, size, type and offset is checked before it is trusted ----------------------

def _part_at(path: Path, key: str, part: int) -> int:
    """File offset of one part of a metadata field as gguf-py's reader splits it (0 key length, 1 key, 2 value
    type, 3 value or array element type, 4 array count, 5.. array items)."""
    field = gguf.GGUFReader(path).fields[key]
    return field.offset + sum(p.nbytes for p in field.parts[:part])


def _info_at(path: Path, name: str, part: int) -> int:
    """File offset of one part of a tensor info (0 name length, 1 name, 2 n_dims, 3 dims, 4 type, 5 offset)."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return t.field.offset + sum(p.nbytes for p in t.field.parts[:part])


def _patched_at(tmp_path: Path, src: Path, at: int, new: bytes, cut: int | None = None) -> Path:
    """src with the bytes at `at` (cut of them, default len(new)) replaced by new."""
    data = bytearray(src.read_bytes())
    data[at:at + (len(new) if cut is None else cut)] = new
    return patched(tmp_path, bytes(data))


Q8 = TINY / "qwen2" / "model-Q8_0.gguf"
V = gguf.GGUFValueType


@pytest.mark.parametrize("count", [2**31, 2**62, 2**64 - 1])
def test_array_count_beyond_the_file_is_refused_before_allocating(tmp_path, count):
    bad = _patched_at(tmp_path, Q8, _part_at(Q8, "tokenizer.ggml.tokens", 4), struct.pack("<Q", count))
    with pytest.raises(ModelFileError, match=f"array claims {count} entries.*corrupt"):
        GGUFFile(bad)


@pytest.mark.parametrize("at,count", [(8, 2**40), (16, 2**40), (16, 10**6)])
def test_header_counts_beyond_the_file(tmp_path, at, count):
    bad = _patched_at(tmp_path, Q8, at, struct.pack("<Q", count))
    with pytest.raises(ModelFileError, match=f"claims .*{count}.*corrupt"):
        GGUFFile(bad)


def test_string_longer_than_the_file(tmp_path):
    bad = _patched_at(tmp_path, Q8, _part_at(Q8, "tokenizer.ggml.tokens", 5), struct.pack("<Q", 2**62))
    with pytest.raises(ModelFileError, match="truncated"):
        GGUFFile(bad)


def test_nested_arrays_are_bounded(tmp_path):
    def nested(depth):
        return [1, 2] if depth == 1 else [nested(depth - 1)]
    ok = GGUFFile(copy_gguf(Q8, tmp_path / "ok.gguf", {"x.nested": (nested(8), V.ARRAY)}))
    assert ok.metadata["x.nested"] == nested(8)
    with pytest.raises(ModelFileError, match="nest deeper than 8"):
        GGUFFile(copy_gguf(Q8, tmp_path / "deep.gguf", {"x.nested": (nested(9), V.ARRAY)}))


def test_duplicate_metadata_key(tmp_path):
    fields = [k for k in gguf.GGUFReader(Q8).fields if not k.startswith("GGUF.")]
    first, second = next((a, b) for a in fields for b in fields if a < b and len(a) == len(b))
    bad = _patched_at(tmp_path, Q8, _part_at(Q8, second, 1), first.encode())
    with pytest.raises(ModelFileError, match=f"{first!r} appears twice"):
        GGUFFile(bad)


def test_invalid_utf8_strings_are_replaced(tmp_path):
    raw = b"caf\xc3 \xff\xfe na\xed\xa0\x80me"
    g = GGUFFile(copy_gguf(Q8, tmp_path / "m.gguf", {"general.name": (raw, V.STRING)}))
    assert g.metadata["general.name"] == raw.decode("utf-8", errors="replace")
    assert "\ufffd" in g.metadata["general.name"]


@pytest.mark.parametrize("n_dims", [0, 5, 2**31, 2**32 - 1])
def test_tensor_dimension_count_out_of_range(tmp_path, n_dims):
    bad = _patched_at(tmp_path, Q8, _info_at(Q8, "blk.0.attn_q.weight", 2), struct.pack("<I", n_dims))
    with pytest.raises(ModelFileError, match=f"'blk.0.attn_q.weight' claims {n_dims} dimensions"):
        GGUFFile(bad)


@pytest.mark.parametrize("dims,message", [
    ((2**32, 2**32), "ends at byte"),  # the element count is 2^64: 0 in int64 arithmetic
    ((2**63, 2), "ends at byte"),
    ((2**64 - 32, 2**64 - 1), "ends at byte"),
    ((256, 0), "zero dimension"),
])
def test_tensor_dims_are_checked_without_overflow(tmp_path, dims, message):
    bad = _patched_at(tmp_path, Q8, _info_at(Q8, "blk.0.attn_q.weight", 3), struct.pack("<2Q", *dims))
    with pytest.raises(ModelFileError, match=f"'blk.0.attn_q.weight'.*{message}"):
        GGUFFile(bad)


@pytest.mark.parametrize("value,vtype", [(0, V.UINT32), (7, V.UINT32), (48, V.UINT64), ("32", V.STRING),
                                         ([32], V.ARRAY), (True, V.BOOL), (-32, V.INT32)])
def test_alignment_must_be_a_power_of_two(tmp_path, value, vtype):
    with pytest.raises(ModelFileError, match=r"general.alignment is .* not a power of two"):
        GGUFFile(copy_gguf(Q8, tmp_path / "m.gguf", {"general.alignment": (value, vtype)}))


def test_a_custom_power_of_two_alignment_is_read(tmp_path):
    """A file written by gguf-py with alignment 64: every tensor found at the bytes gguf-py's reader gives."""
    reader = gguf.GGUFReader(Q8)
    copy_gguf(Q8, tmp_path / "m.gguf", alignment=64)
    g, data = GGUFFile(tmp_path / "m.gguf"), (tmp_path / "m.gguf").read_bytes()
    assert g.metadata["general.alignment"] == 64
    for t in reader.tensors:
        info = g.infos[t.name]
        assert info.offset % 64 == 0
        assert data[info.offset:info.offset + info.nbytes] == np.asarray(t.data).tobytes()


def test_tensor_offsets_must_be_aligned_inside_and_disjoint(tmp_path):
    at = _info_at(Q8, "blk.0.attn_q.weight", 5)
    own = struct.unpack_from("<Q", Q8.read_bytes(), at)[0]
    with pytest.raises(ModelFileError, match="'blk.0.attn_q.weight' starts at data offset .* alignment 32"):
        GGUFFile(_patched_at(tmp_path, Q8, at, struct.pack("<Q", own + 1)))
    other = struct.unpack_from("<Q", Q8.read_bytes(), _info_at(Q8, "blk.0.attn_k.weight", 5))[0]
    with pytest.raises(ModelFileError, match="overlap"):
        GGUFFile(_patched_at(tmp_path, Q8, at, struct.pack("<Q", other)))
    with pytest.raises(ModelFileError, match="'blk.0.attn_q.weight' ends at byte"):
        GGUFFile(_patched_at(tmp_path, Q8, at, struct.pack("<Q", 2**64 - 32)))


def test_non_finite_values_in_a_1d_tensor_are_refused(tmp_path):
    src = TINY / "qwen2" / "model-F32.gguf"
    t = next(t for t in gguf.GGUFReader(src).tensors if t.name == "output_norm.weight")
    bad = _patched_at(tmp_path, src, int(t.data_offset) + 4 * 7, struct.pack("<f", float("nan")))
    g = GGUFFile(bad)
    with pytest.raises(ModelFileError, match="'output_norm.weight' holds NaN or infinite values"):
        g.tensor("output_norm.weight")
    g.tensor("blk.0.attn_norm.weight")  # the others are fine
