"""GGUF files: header, metadata and memory-mapped tensors, split files (`*-00001-of-0000N.gguf`) included.

Layout (little-endian): magic "GGUF", version u32 (2 or 3), tensor count u64, metadata count u64, the metadata
key/values, the tensor infos (name, n_dims, dims ne0-first, ggml type, offset), padding to `general.alignment`,
then the tensor data. The value-type codes are the `gguf` package's (`gguf.GGUFValueType`).

We parse the header ourselves rather than with `gguf.GGUFReader` because the reader builds several NumPy objects
per string and takes tens of seconds on a 50k-token vocabulary; the tests check both give the same metadata and
tensors. Tensor data is never read here: tensors are views into one `np.memmap` per file.

A GGUF file is untrusted input: every count, length, nesting depth, dimension, alignment and tensor range is
checked against the file before anything is allocated or trusted, and each failure is a ModelFileError (or
UnsupportedModelError) naming the file and the problem.
"""
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from engine.errors import ModelFileError, UnsupportedModelError
from kernels.qtensor import QTensor
from kernels.quants import SUPPORTED, GGMLType, block_shape

MAGIC = b"GGUF"
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives. shape is NumPy order (rows first): GGUF dims reversed."""
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    part: int
    offset: int
    nbytes: int


MAX_NESTING = 8  # metadata arrays of arrays: real files nest one deep
MAX_DIMS = 4  # GGML_MAX_DIMS
_MIN_BYTES = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}  # least bytes one value of these types takes
_KV_MIN_BYTES, _INFO_MIN_BYTES = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8  # least bytes of a key/value, of a tensor info


class _Cursor:
    """Sequential little-endian reads over a buffer; running past its end means the file is truncated."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> memoryview:
        if n > self.left:
            self.truncated()
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def truncated(self):
        raise ModelFileError(f"{self.path}: GGUF header is truncated at byte {self.pos} (file is "
                             f"{len(self.buf)} bytes). The download is incomplete: fetch the file again.")

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        """A length-prefixed string; invalid UTF-8 becomes U+FFFD, so that nothing downstream (tokenizer, chat
        template) meets text it cannot encode."""
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        """count strings: string() unrolled, as a vocabulary holds ~100k of them (tokens and merges)."""
        buf, pos, size, out = self.buf, self.pos, len(self.buf), []
        for _ in range(count):
            if pos + 8 > size:
                break
            end = pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
            if end > size:
                break
            out.append(bytes(buf[pos + 8:end]).decode("utf-8", errors="replace"))
            pos = end
        self.pos = pos
        if len(out) < count:
            self.truncated()
        return out

    def count(self, n: int, least: int, what: str) -> int:
        """n, once n items of at least `least` bytes each are known to fit in the bytes left (so a corrupt
        count fails here rather than after allocating for it)."""
        if n * least > self.left:
            raise ModelFileError(f"{self.path}: GGUF {what} claims {n} entries at byte {self.pos} but only "
                                 f"{self.left} bytes follow; the file is corrupt: download it again.")
        return n

    def value(self, vtype: int, depth: int = 0):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            if depth == MAX_NESTING:
                raise ModelFileError(f"{self.path}: GGUF metadata arrays nest deeper than {MAX_NESTING} at byte "
                                     f"{self.pos}; the file is corrupt.")
            etype = self.scalar("<I")
            if etype not in _NUMPY and etype not in _MIN_BYTES:
                raise ModelFileError(f"{self.path}: unknown GGUF array element type {etype}; the file is corrupt.")
            dtype = np.dtype(_NUMPY[etype]) if etype in _NUMPY else None
            count = self.count(self.scalar("<Q"), dtype.itemsize if dtype else _MIN_BYTES[etype], "array")
            if etype == GGUFValueType.STRING:
                return self.strings(count)
            if dtype is not None:
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            return [self.value(GGUFValueType.ARRAY, depth + 1) for _ in range(count)]
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        raise ModelFileError(f"{self.path}: unknown GGUF metadata value type {vtype}; the file is corrupt.")


def _parse(path: Path, buf) -> tuple[dict, dict, list[TensorInfo]]:
    """Parse one file's header. Returns (metadata, {key: (GGUFValueType, array element type or None)}, tensor
    infos with offsets relative to the file start), every count, size and offset checked against the file."""
    cur = _Cursor(buf, path)
    magic = bytes(cur.take(4)) if len(buf) >= 4 else bytes(buf)
    if magic != MAGIC:
        raise ModelFileError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF'). "
                             "Pass a .gguf model file, or an HF-style directory with config.json and safetensors.")
    version = cur.scalar("<I")
    if version not in (2, 3):
        hint = " (a big-endian file? only little-endian GGUF is supported)" if version > 0xFFFF else ""
        raise ModelFileError(f"{path}: GGUF version {version} is not supported{hint}; convert the model with a "
                             "current llama.cpp (GGUF v3).")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    if n_tensors * _INFO_MIN_BYTES + n_kv * _KV_MIN_BYTES > cur.left:
        raise ModelFileError(f"{path}: GGUF header claims {n_tensors} tensors and {n_kv} keys, more than its "
                             f"{len(buf)} bytes can hold; the file is corrupt: download it again.")
    metadata, types = {}, {}
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:
            raise ModelFileError(f"{path}: GGUF metadata key {key!r} appears twice; the file is corrupt.")
        vtype = cur.scalar("<I")
        etype = int.from_bytes(bytes(buf[cur.pos:cur.pos + 4]), "little") if vtype == GGUFValueType.ARRAY else None
        metadata[key] = cur.value(vtype)
        types[key] = (vtype, etype)
    raw_infos = [_tensor_info(cur) for _ in range(n_tensors)]
    alignment = _alignment(path, metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // alignment) * alignment
    infos = [_locate(path, *raw, data_start, alignment, len(buf)) for raw in raw_infos]
    _check_disjoint(path, infos)
    return metadata, types, infos


def _tensor_info(cur: _Cursor) -> tuple[str, list[int], int, int]:
    """One tensor info as stored: (name, dims ne0-first, ggml type, offset from the data section)."""
    name = cur.string()
    n_dims = cur.scalar("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ModelFileError(f"{cur.path}: tensor {name!r} claims {n_dims} dimensions (GGUF allows 1 to "
                             f"{MAX_DIMS}); the file is corrupt: download it again.")
    dims = list(struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims)))
    return name, dims, cur.scalar("<I"), cur.scalar("<Q")


def _alignment(path: Path, value) -> int:
    """general.alignment, which must be a power of two (llama.cpp's rule)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ModelFileError(f"{path}: general.alignment is {type(value).__name__} {value!r:.40}, not a power of "
                             "two; the file is corrupt: download it again.")
    return value


def _locate(path: Path, name: str, dims: list[int], gtype: int, offset: int, data_start: int, alignment: int,
            file_size: int) -> TensorInfo:
    """Where a tensor's bytes are, checked: known type, whole blocks, aligned and inside the file. Sizes are
    Python integers, so dims whose product overflows int64 cannot wrap round and pass."""
    if gtype not in GGMLType._value2member_map_:
        raise UnsupportedModelError(
            f"{path}: tensor {name!r} has unknown GGML type {gtype}. This file needs a newer engine or was "
            "written by an unknown tool; re-quantize it to one of: " + ", ".join(t.name for t in SUPPORTED))
    if GGMLType(gtype) not in SUPPORTED:
        raise UnsupportedModelError(
            f"{path}: tensor {name!r} is {GGMLType(gtype).name}, which this engine does not implement. "
            "Use a file quantized to one of: " + ", ".join(sorted(t.name for t in SUPPORTED)))
    if 0 in dims:
        raise ModelFileError(f"{path}: tensor {name!r} has a zero dimension {dims}; the file is corrupt.")
    block_elems, block_bytes = block_shape(gtype)
    if dims[0] % block_elems:
        raise ModelFileError(f"{path}: tensor {name!r} row length {dims[0]} is not a multiple of the "
                             f"{GGMLType(gtype).name} block size {block_elems}; the file is corrupt.")
    if offset % alignment:
        raise ModelFileError(f"{path}: tensor {name!r} starts at data offset {offset}, not a multiple of the "
                             f"alignment {alignment}; the file is corrupt: download it again.")
    nbytes = math.prod(dims) // block_elems * block_bytes
    start = data_start + offset
    if start + nbytes > file_size:
        raise ModelFileError(f"{path}: tensor {name!r} ends at byte {start + nbytes} but the file has only "
                             f"{file_size} bytes: the file is truncated or corrupt. Download it again.")
    return TensorInfo(name, tuple(reversed(dims)), gtype, 0, start, nbytes)


def _check_disjoint(path: Path, infos: list[TensorInfo]) -> None:
    """Refuse tensors whose bytes overlap (one file; infos' offsets from its start)."""
    ordered = sorted(infos, key=lambda i: i.offset)
    for a, b in zip(ordered, ordered[1:]):
        if b.offset < a.offset + a.nbytes:
            raise ModelFileError(f"{path}: tensors {a.name!r} and {b.name!r} overlap in the file; the file is "
                                 "corrupt: download it again.")


def split_gguf_parts(name: str) -> list[str] | None:
    """`m-00002-of-00003.gguf` → the names of all three parts in order; None when name is not a split part."""
    m = SPLIT_NAME.match(name)
    if not m or not 1 <= int(m["no"]) <= int(m["count"]):
        return None
    return [f"{m['stem']}-{i:05d}-of-{m['count']}.gguf" for i in range(1, int(m["count"]) + 1)]


def split_parts(path: Path) -> list[Path]:
    """All parts of a split GGUF given any one part, in order (each must exist); [path] otherwise."""
    names = split_gguf_parts(path.name)
    if names is None:
        return [path]
    parts = [path.with_name(n) for n in names]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ModelFileError(f"{path}: split GGUF is missing part(s) {', '.join(missing)}; put all {len(parts)} "
                             "parts in the same directory.")
    return parts


class GGUFFile:
    """A GGUF model, possibly split over several files.

    metadata: dict of key → str | int | float | bool | list (from the first part).
    metadata_types: dict of key → (gguf.GGUFValueType code, element type code for arrays else None).
    infos: dict of tensor name → TensorInfo over all parts.
    """

    def __init__(self, path: str | Path):
        self.paths = split_parts(Path(path))
        self._maps, self.infos, self.metadata = [], {}, {}
        for part, p in enumerate(self.paths):
            if not p.is_file():
                raise ModelFileError(f"{p}: no such file.")
            if p.stat().st_size == 0:
                raise ModelFileError(f"{p}: file is empty. Download it again.")
            mm = np.memmap(p, dtype=np.uint8, mode="r")
            metadata, types, infos = _parse(p, memoryview(mm))
            if part == 0:
                self.metadata, self.metadata_types = metadata, types
            for info in infos:
                if info.name in self.infos:
                    raise ModelFileError(f"{p}: tensor {info.name!r} appears twice; the file is corrupt.")
                self.infos[info.name] = TensorInfo(info.name, info.shape, info.ggml_type, part, info.offset,
                                                   info.nbytes)
            self._maps.append(mm)
        expected = self.metadata.get("split.tensors.count")
        if expected is not None and expected != len(self.infos):
            raise ModelFileError(f"{self.paths[0]}: split GGUF should hold {expected!r:.40} tensors, found "
                                 f"{len(self.infos)}; a part is missing or damaged.")

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def tensor(self, name: str) -> np.ndarray | QTensor:
        """The tensor, zero-copy where possible.

        F32 → float32 ndarray view of the file. 1-D tensors of other types → float32 ndarray (small copies).
        2-D F16/BF16/quantized → QTensor over the file's bytes. 1-D tensors (norms, biases: cheap to scan) must be
        finite, else ModelFileError; larger ones are left to the run-time check on the logits.
        """
        info = self.infos.get(name)
        if info is None:
            raise ModelFileError(f"{self.paths[0]}: tensor {name!r} is missing; the file is incomplete or is not "
                                 f"a {self.metadata.get('general.architecture')} model this engine understands.")
        raw = self._maps[info.part][info.offset:info.offset + info.nbytes]
        if info.ggml_type == GGMLType.F32:
            t = raw.view(np.float32).reshape(info.shape)
        elif len(info.shape) == 2:
            return QTensor(raw.reshape(info.shape[0], -1), info.ggml_type, info.shape)
        elif len(info.shape) == 1:
            t = QTensor(raw.reshape(1, -1), info.ggml_type, (1, info.shape[0])).dequantize().reshape(info.shape)
        else:
            raise UnsupportedModelError(f"{self.paths[0]}: tensor {name!r} has {len(info.shape)} dimensions; only "
                                        "1-D and 2-D tensors are supported.")
        if t.ndim == 1 and not np.isfinite(t).all():
            raise ModelFileError(f"{self.paths[info.part]}: tensor {name!r} holds NaN or infinite values; the file "
                                 "is corrupt: download it again.")
        return t


def read_metadata(path: str | Path) -> dict:
    """Metadata of a GGUF file (first part of a split file)."""
    return GGUFFile(path).metadata
