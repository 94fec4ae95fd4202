"""GGUF files: header, metadata and memory-mapped tensors, split files (`*-00001-of-0000N.gguf`) included.

Layout (little-endian): magic "GGUF", version u32 (2 or 3), tensor count u64, metadata count u64, the metadata
key/values, the tensor infos (name, n_dims, dims ne0-first, ggml type, offset), padding to `general.alignment`,
then the tensor data. The value-type codes are the `gguf` package's (`gguf.GGUFValueType`).

We parse the header ourselves rather than with `gguf.GGUFReader` because the reader builds several NumPy objects
per string and takes tens of seconds on a 50k-token vocabulary; the tests check both give the same metadata and
tensors. Tensor data is never read here: tensors are views into one `np.memmap` per file.
"""
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


class _Cursor:
    """Sequential little-endian reads over a buffer; running past its end means the file is truncated."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ModelFileError(f"{self.path}: GGUF header is truncated at byte {self.pos} (file is "
                                 f"{len(self.buf)} bytes). The download is incomplete: fetch the file again.")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.scalar("<Q")))
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype == GGUFValueType.STRING:
                return [self.string() for _ in range(count)]
            if etype in _NUMPY:
                dtype = np.dtype(_NUMPY[etype])
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).tolist()
            if etype == GGUFValueType.ARRAY:
                return [self.value(GGUFValueType.ARRAY) for _ in range(count)]
            raise ModelFileError(f"{self.path}: unknown GGUF array element type {etype}; the file is corrupt.")
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        raise ModelFileError(f"{self.path}: unknown GGUF metadata value type {vtype}; the file is corrupt.")


def _parse(path: Path, buf) -> tuple[dict, dict, list[TensorInfo]]:
    """Parse one file's header. Returns (metadata, {key: (GGUFValueType, array element type or None)}, tensor
    infos with offsets relative to the file start)."""
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
    if n_tensors > len(buf) or n_kv > len(buf):
        raise ModelFileError(f"{path}: GGUF header claims {n_tensors} tensors and {n_kv} keys; the file is corrupt.")
    metadata, types = {}, {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.scalar("<I")
        etype = int.from_bytes(bytes(buf[cur.pos:cur.pos + 4]), "little") if vtype == GGUFValueType.ARRAY else None
        metadata[key] = cur.value(vtype)
        types[key] = (vtype, etype)
    raw_infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        raw_infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // alignment) * alignment
    infos = []
    for name, dims, gtype, offset in raw_infos:
        if gtype not in GGMLType._value2member_map_:
            raise UnsupportedModelError(
                f"{path}: tensor {name!r} has unknown GGML type {gtype}. This file needs a newer engine or was "
                "written by an unknown tool; re-quantize it to one of: " + ", ".join(t.name for t in SUPPORTED))
        if GGMLType(gtype) not in SUPPORTED:
            raise UnsupportedModelError(
                f"{path}: tensor {name!r} is {GGMLType(gtype).name}, which this engine does not implement. "
                "Use a file quantized to one of: " + ", ".join(sorted(t.name for t in SUPPORTED)))
        block_elems, block_bytes = block_shape(gtype)
        n_elems = int(np.prod(dims, dtype=np.int64))
        if dims and dims[0] % block_elems:
            raise ModelFileError(f"{path}: tensor {name!r} row length {dims[0]} is not a multiple of the "
                                 f"{GGMLType(gtype).name} block size {block_elems}; the file is corrupt.")
        nbytes = n_elems // block_elems * block_bytes
        start = data_start + offset
        if start + nbytes > len(buf):
            raise ModelFileError(f"{path}: tensor {name!r} ends at byte {start + nbytes} but the file has only "
                                 f"{len(buf)} bytes: the file is truncated. Download it again.")
        infos.append(TensorInfo(name, tuple(reversed(dims)), gtype, 0, start, nbytes))
    return metadata, types, infos


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
            raise ModelFileError(f"{self.paths[0]}: split GGUF should hold {expected} tensors, found "
                                 f"{len(self.infos)}; a part is missing or damaged.")

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def tensor(self, name: str) -> np.ndarray | QTensor:
        """The tensor, zero-copy where possible.

        F32 → float32 ndarray view of the file. 1-D tensors of other types → float32 ndarray (small copies).
        2-D F16/BF16/quantized → QTensor over the file's bytes.
        """
        info = self.infos.get(name)
        if info is None:
            raise ModelFileError(f"{self.paths[0]}: tensor {name!r} is missing; the file is incomplete or is not "
                                 f"a {self.metadata.get('general.architecture')} model this engine understands.")
        raw = self._maps[info.part][info.offset:info.offset + info.nbytes]
        if info.ggml_type == GGMLType.F32:
            return raw.view(np.float32).reshape(info.shape)
        rows = int(np.prod(info.shape[:-1], dtype=np.int64))
        qt = QTensor(raw.reshape(rows, -1), info.ggml_type, (rows, info.shape[-1]))
        if len(info.shape) == 1:
            return qt.dequantize().reshape(info.shape)
        if len(info.shape) != 2:
            raise UnsupportedModelError(f"{self.paths[0]}: tensor {name!r} has {len(info.shape)} dimensions; only "
                                        "1-D and 2-D tensors are supported.")
        return qt


def read_metadata(path: str | Path) -> dict:
    """Metadata of a GGUF file (first part of a split file)."""
    return GGUFFile(path).metadata
