"""JSON from untrusted sources (model files, request bodies) parsed with bounded nesting and size.

Python's json module recurses once per nesting level: a file of 100,000 '[' raises RecursionError from inside it,
and one nested 900 deep parses into data that every recursive reader after it trips over. So the parse's
RecursionError becomes a ValueError, and the parsed value's depth is checked without recursion.
"""
import json
from pathlib import Path

from engine.errors import ModelFileError

MAX_DEPTH = 64  # real config.json / tokenizer.json files nest at most ~8 levels
MAX_FILE_BYTES = 1 << 30  # the largest tokenizer.json files are ~35 MB; safetensors headers a few MB


def nesting_depth(value) -> int:
    """How deeply lists and dicts nest in value (0 for a scalar), found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((x, depth + 1) for x in items if isinstance(x, (dict, list)))
    return deepest


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH):
    """Parse JSON text; raises ValueError (not valid UTF-8, not valid JSON, or nested deeper than max_depth)."""
    text = bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested too deeply (the limit is {max_depth} levels)") from None
    depth = nesting_depth(value)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep (the limit is {max_depth})")
    return value


def read(path: str | Path, kind: type = dict, max_bytes: int = MAX_FILE_BYTES):
    """The parsed content of a JSON model file, which must be a `kind` (dict, list or object for any); raises
    ModelFileError naming the file and the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelFileError(f"{path}: {size} bytes is over the {max_bytes}-byte limit for a JSON file; the "
                                 "file is not what its name says. Download it again.")
        value = loads(path.read_bytes())
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e}).") from None
    except ValueError as e:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise ModelFileError(f"{path}: not valid JSON ({e}); the file is corrupt. Download it again.") from None
    if kind is not object and not isinstance(value, kind):
        raise ModelFileError(f"{path}: expected a JSON {'object' if kind is dict else kind.__name__}, found "
                             f"{type(value).__name__}; the file is corrupt.")
    return value
