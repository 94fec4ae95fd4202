"""engine.gguf: our header parser agrees with gguf-py's GGUFReader; damaged files give typed errors."""
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from engine.errors import ModelFileError, UnsupportedModelError
from engine.gguf import GGUFFile
from kernels.qtensor import QTensor

TINY = Path(__file__).parent.parent / "fixtures" / "tiny"


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
    from gguf_copy import copy_gguf
    copy_gguf(TINY / "qwen2" / "model-Q8_0.gguf", tmp_path / "m.gguf", split_max_tensors=10)
    parts = sorted(tmp_path.glob("m-*-of-*.gguf"))
    parts[1].unlink()
    with pytest.raises(ModelFileError, match="missing part"):
        GGUFFile(parts[0])
