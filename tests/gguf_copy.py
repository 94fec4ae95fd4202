"""Rewrite a GGUF file with gguf-py's writer (test helper): change or drop metadata keys, split into parts."""
from pathlib import Path

import gguf
import numpy as np


def copy_gguf(src: Path, dst: Path, set_keys: dict | None = None, drop_prefixes: tuple = (),
              split_max_tensors: int = 0) -> None:
    """Copy src to dst. set_keys: {key: str value} to set; drop_prefixes: metadata keys to leave out."""
    reader = gguf.GGUFReader(src)
    set_keys = dict(set_keys or {})
    arch = set_keys.pop("general.architecture", None) or reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch, split_max_tensors=split_max_tensors)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith(drop_prefixes):
            continue
        if name in set_keys:
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), field.types[0])
    for name, value in set_keys.items():
        writer.add_string(name, value)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
