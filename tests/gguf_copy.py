"""Rewrite a GGUF file with gguf-py's writer (test helper): change, add or drop metadata keys, set the alignment,
split into parts."""
from pathlib import Path

import gguf
import numpy as np


def copy_gguf(src: Path, dst: Path, set_keys: dict | None = None, drop_prefixes: tuple = (),
              split_max_tensors: int = 0, alignment: int | None = None) -> Path:
    """Copy src to dst, every kept key with its stored value types. set_keys: {key: str value, or (value,
    gguf.GGUFValueType)} to set or add; drop_prefixes: metadata keys to leave out; alignment: a custom
    general.alignment."""
    reader = gguf.GGUFReader(src)
    set_keys = dict(set_keys or {})
    arch = set_keys.pop("general.architecture", None) or reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch, split_max_tensors=split_max_tensors)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith(drop_prefixes):
            continue
        if name in set_keys:
            continue
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[-1] if array else None)
    for name, value in set_keys.items():
        value, vtype = value if isinstance(value, tuple) else (value, gguf.GGUFValueType.STRING)
        writer.add_key_value(name, value, vtype)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
