"""Fuzz target (see harness.py): mutated copies of the tiny HF model directories, loaded with engine.load.

A case is (arch, mutation, seed): a copy of tests/fixtures/tiny/<arch>/hf gets one mutation (drawn from the seed)
of config.json, the safetensors header or data, the shard index (a two-shard copy of the weights),
tokenizer.json, tokenizer_config.json or generation_config.json; the engine then loads it, computes the logits
of a prompt and streams two tokens. Every case must end as "ok" or a typed engine error; "nan" is a model that
loaded and silently produced non-finite logits.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from engine.runtime.llm import load

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tiny"
ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "mistral_spm")
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
# values a mutation puts where a number, string, list or object was
BAD_VALUES = (None, "", "x", "4", [], [1], [1, 2, 3], {}, {"type": "x"}, True, False, 0, -1, 1, 2, 3, 7, 0.5, -0.5,
              1e-30, 1e308, 2**31, 2**32 + 1, 2**63, 2**64, 10**30, math.nan, math.inf, -math.inf, 1.5)
CONFIG_KEYS = ("rope_scaling", "rope_parameters", "head_dim", "layer_types", "sliding_window", "use_sliding_window",
               "max_window_layers", "sliding_window_pattern", "query_pre_attn_scalar", "final_logit_softcapping",
               "attn_logit_softcapping", "rope_local_base_freq", "hidden_activation", "num_key_value_heads",
               "architectures", "model_type", "text_config", "rope_theta", "rms_norm_eps", "vocab_size",
               "max_position_embeddings", "tie_word_embeddings", "attention_bias", "bos_token_id", "eos_token_id")
PROMPT = "Hello world, <|im_start|> hi"


# ---- JSON files ---------------------------------------------------------------------------------------------

def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")  # NaN / Infinity written as Python's json reads them


def _containers(value, rng: random.Random):
    """A random (container, key) inside value (a dict or list, descending at random), or None."""
    parent, key = None, None
    node = value
    while isinstance(node, (dict, list)) and node:
        parent = node
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        node = node[key]
        if rng.random() < 0.4:
            break
    return None if parent is None else (parent, key)


def _bad_value(rng: random.Random, old=None):
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.3:
        return rng.choice([old + 1, old - 1, old * 2, -old, old * 1000])
    return rng.choice(BAD_VALUES)


def json_set(d: Path, rng: random.Random, name: str) -> None:
    """Set a random (possibly nested) value of a JSON file, or one of its known keys, to a bad value."""
    value = _read_json(d / name)
    if name == "config.json" and rng.random() < 0.5:
        key = rng.choice(CONFIG_KEYS)
        value[key] = _bad_value(rng, value.get(key))
    else:
        spot = _containers(value, rng)
        if spot is None:
            return
        parent, key = spot
        parent[key] = _bad_value(rng, parent[key])
    _write_json(d / name, value)


def json_delete(d: Path, rng: random.Random, name: str) -> None:
    """Delete a random (possibly nested) key or item of a JSON file."""
    value = _read_json(d / name)
    spot = _containers(value, rng)
    if spot is not None:
        parent, key = spot
        del parent[key]
    _write_json(d / name, value)


def json_nest(d: Path, rng: random.Random, name: str) -> None:
    """Replace a value of a JSON file with a deeply nested list (past the depth limit, or past the parser's)."""
    depth = rng.choice([65, 200, 5000, 100000])
    value = _read_json(d / name)
    spot = _containers(value, rng)
    if spot is None:
        return
    parent, key = spot
    parent[key] = "@@NEST@@"
    text = json.dumps(value).replace('"@@NEST@@"', "[" * depth + "]" * depth)
    (d / name).write_text(text, encoding="utf-8")


def file_bytes(d: Path, rng: random.Random, name: str) -> None:
    """Corrupt a file's bytes: invalid UTF-8 inserted, truncated, emptied, or replaced by another JSON type."""
    path = d / name
    raw = path.read_bytes()
    kind = rng.choice(["utf8", "truncate", "empty", "list", "number", "surrogate"])
    at = rng.randrange(len(raw) + 1)
    out = {"utf8": raw[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + raw[at:],
           "truncate": raw[:at], "empty": b"", "list": b"[1, 2]", "number": b"7",
           "surrogate": raw.replace(b'"', b'"\\ud800', 1) if b'"' in raw else raw}[kind]
    path.write_bytes(out)


# ---- config-specific ----------------------------------------------------------------------------------------

def rope_scaling(d: Path, rng: random.Random) -> None:
    """config.json's rope_scaling / rope_parameters replaced by a broken (or unsupported) dict."""
    config = _read_json(d / "config.json")
    scaling = {"rope_type": rng.choice(["linear", "llama3", "yarn", "default", None, 3, ""]),
               "factor": _bad_value(rng), "low_freq_factor": rng.choice([1.0, 4.0, 0, _bad_value(rng)]),
               "high_freq_factor": rng.choice([4.0, 1.0, _bad_value(rng)]),
               "original_max_position_embeddings": rng.choice([8192, 0, _bad_value(rng)])}
    for key in list(scaling):
        if rng.random() < 0.2:
            del scaling[key]
    if rng.random() < 0.3:
        config["rope_parameters"] = ({"full_attention": scaling, "sliding_attention": {"rope_theta": _bad_value(rng)}}
                                     if rng.random() < 0.5 else {**scaling, "rope_theta": _bad_value(rng)})
    else:
        config["rope_scaling"] = scaling
    _write_json(d / "config.json", config)


# ---- safetensors --------------------------------------------------------------------------------------------

def _st_read(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _st_write(path: Path, header: dict | bytes, data: bytes, delta: int = 0) -> None:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) + delta) + h + data)


def _tensor_names(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def safetensors_entry(d: Path, rng: random.Random, file: str = "model.safetensors") -> None:
    """One header entry malformed: not an object, a key missing, a bad dtype, shape or data_offsets."""
    header, data = _st_read(d / file)
    names = _tensor_names(header)
    name = rng.choice(names)
    entry = header[name]
    start, end = entry["data_offsets"]
    shape = entry["shape"]
    other = header[rng.choice(names)]["data_offsets"]
    kind = rng.choice(["not_object", "missing", "dtype", "shape", "offsets", "offsets", "overlap", "duplicate"])
    if kind == "not_object":
        header[name] = rng.choice([1, "x", [], None, [start, end]])
    elif kind == "missing":
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == "dtype":
        entry["dtype"] = rng.choice(["F64", "I32", "U8", "BOOL", "F8_E4M3", "X", "f32", 5, None, "F16", "BF16"])
    elif kind == "shape":
        entry["shape"] = rng.choice([[-1] + shape[1:], shape[:-1], shape + [1], [2**32, 2**32], [0] + shape[1:],
                                     ["a"], [1.5], "x", [[1]], shape[::-1], [2**62, 4], [0, 2**70], [True],
                                     [math.prod(shape)], [1] * 9, [x * 2 for x in shape]])
    elif kind == "offsets":
        entry["data_offsets"] = rng.choice([[start], [start, end, 0], [str(start), end], [start - 8, end - 8],
                                            [-(end - start), 0], [start, end + 1], [end, start], [0, len(data)],
                                            [start + 4, end + 4], [start, 2**64], [1.0 * start, end], None,
                                            [start + len(data), end + len(data)], [-8, end - start - 8]])
    elif kind == "overlap":
        entry["data_offsets"] = list(other)
    else:
        header[name + ".copy"] = dict(entry)
    _st_write(d / file, header, data)


def safetensors_framing(d: Path, rng: random.Random, file: str = "model.safetensors") -> None:
    """The file's framing broken: header length off, header not JSON / not an object / deep, data cut or extended."""
    header, data = _st_read(d / file)
    h = json.dumps(header).encode()
    kind = rng.choice(["length", "length", "huge_length", "utf8", "nest", "not_object", "cut", "extend", "tiny"])
    if kind == "length":
        _st_write(d / file, h, data, delta=rng.choice([-1, 1, -8, 8, -len(h), len(data)]))
    elif kind == "huge_length":
        (d / file).write_bytes(struct.pack("<Q", rng.choice([2**63, 2**64 - 1, 10**9])) + h + data)
    elif kind == "utf8":
        at = rng.randrange(len(h))
        _st_write(d / file, h[:at] + b"\xff\xfe" + h[at:], data)
    elif kind == "nest":
        depth = rng.choice([65, 3000, 100000])
        _st_write(d / file, b'{"__metadata__": ' + b"[" * depth + b"]" * depth + b", " + h[1:], data)
    elif kind == "not_object":
        _st_write(d / file, rng.choice([b"[]", b"7", b'"x"', b"null"]), data)
    elif kind == "cut":
        _st_write(d / file, h, data[:rng.randrange(len(data))])
    elif kind == "extend":
        _st_write(d / file, h, data + bytes(rng.choice([1, 4, 100])))
    else:
        (d / file).write_bytes(rng.choice([b"", b"\x01", b"\x00" * 8, struct.pack("<Q", 2) + b"{}"]))


def safetensors_nan(d: Path, rng: random.Random, file: str = "model.safetensors") -> None:
    """NaN or infinity written into a 1-D tensor (a norm or a bias)."""
    header, data = _st_read(d / file)
    vectors = [k for k in _tensor_names(header) if len(header[k]["shape"]) == 1]
    if not vectors:
        return
    start, end = header[rng.choice(vectors)]["data_offsets"]
    at = start + 4 * rng.randrange((end - start) // 4)
    value = np.float32(rng.choice([math.nan, math.inf, -math.inf])).tobytes()
    _st_write(d / file, header, data[:at] + value + data[at + 4:])


def _shard(d: Path) -> None:
    """Split model.safetensors into two shards and a model.safetensors.index.json, as transformers writes them."""
    header, data = _st_read(d / "model.safetensors")
    meta = header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    weight_map = {}
    for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        shard, chunks, pos = ({"__metadata__": meta} if meta else {}), [], 0
        for k in part:
            start, end = header[k]["data_offsets"]
            shard[k] = {**header[k], "data_offsets": [pos, pos + end - start]}
            chunks.append(data[start:end])
            pos += end - start
            weight_map[k] = file
        _st_write(d / file, shard, b"".join(chunks))
    (d / "model.safetensors").unlink()
    _write_json(d / "model.safetensors.index.json", {"metadata": {"total_size": len(data)}, "weight_map": weight_map})


def sharded(d: Path, rng: random.Random) -> None:
    """A two-shard copy of the weights with its index, then the index or a shard malformed (or nothing)."""
    _shard(d)
    index = d / "model.safetensors.index.json"
    shard = rng.choice(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    kind = rng.choice(["none", "weight_map", "name", "missing_shard", "index_json", "shard", "duplicate"])
    value = _read_json(index)
    if kind == "weight_map":
        value["weight_map"] = rng.choice([None, [], {}, "x", 7])
        _write_json(index, value)
    elif kind == "name":
        key = rng.choice(list(value["weight_map"]))
        value["weight_map"][key] = rng.choice(["../config.json", "/etc/passwd", "", ".", "..", 5, None, ["a"],
                                               "nope.safetensors", "sub/model.safetensors"])
        _write_json(index, value)
    elif kind == "missing_shard":
        (d / shard).unlink()
    elif kind == "index_json":
        rng.choice([file_bytes, json_nest, json_delete, json_set])(d, rng, index.name)
    elif kind == "shard":
        rng.choice([safetensors_entry, safetensors_framing, safetensors_nan])(d, rng, shard)
    elif kind == "duplicate":  # the same tensor in both shards
        first, data = _st_read(d / "model-00001-of-00002.safetensors")
        second, data2 = _st_read(d / "model-00002-of-00002.safetensors")
        name = rng.choice(_tensor_names(first))
        copy = data[slice(*first[name]["data_offsets"])]
        second[name] = {**first[name], "data_offsets": [len(data2), len(data2) + len(copy)]}
        _st_write(d / "model-00002-of-00002.safetensors", second, data2 + copy)


# ---- tokenizer files ----------------------------------------------------------------------------------------

def tokenizer_ids(d: Path, rng: random.Random) -> None:
    """tokenizer.json's ids or added tokens broken (added_tokens dropped, a huge / negative / wrong-typed id), or
    padding to a huge length."""
    tok = _read_json(d / "tokenizer.json")
    kind = rng.choice(["drop_added", "vocab_id", "added_id", "added_content", "model", "padding"])
    vocab = tok["model"]["vocab"]
    if kind == "drop_added":
        del tok["added_tokens"]
    elif kind == "vocab_id" and isinstance(vocab, dict):
        vocab[rng.choice(list(vocab))] = rng.choice([2**31, 2**32 - 1, 2**32, 10**6, len(vocab), len(vocab) + 100,
                                                     -1, "7", 1.5, None, 0])
    elif kind in ("added_id", "added_content") and tok.get("added_tokens"):
        entry = rng.choice(tok["added_tokens"])
        if kind == "added_id":
            entry["id"] = rng.choice([2**31, 2**32 - 1, 10**6, len(vocab) + 1000, -1, "x", None])
        else:
            entry["content"] = rng.choice([5, None, "", "Hello", " ", "\x00", ["a"]])
    elif kind == "padding":
        tok["padding"] = {"strategy": {"Fixed": rng.choice([2**20, 2**40, 2**63])}, "direction": "Right",
                          "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "x"}
    else:
        tok["model"] = rng.choice([None, 5, {}, {"type": "BPE"}, {"type": "WordPiece", "vocab": {}}])
    _write_json(d / "tokenizer.json", tok)


def tokenizer_config(d: Path, rng: random.Random) -> None:
    """tokenizer_config.json / generation_config.json keys the engine reads set to bad values."""
    name = rng.choice(["tokenizer_config.json", "generation_config.json", "config.json"])
    value = _read_json(d / name) if (d / name).is_file() else {}
    keys = {"tokenizer_config.json": ["bos_token", "eos_token", "add_bos_token", "add_eos_token", "chat_template",
                                      "added_tokens_decoder", "unk_token", "pad_token"],
            "generation_config.json": ["bos_token_id", "eos_token_id"],
            "config.json": ["bos_token_id", "eos_token_id"]}[name]
    key = rng.choice(keys)
    value[key] = rng.choice([*BAD_VALUES, [2**31], [-5, 1], 10**6, 383, 384, 511, 512, "<|im_end|>",
                             {"content": 5}, {"content": "nope"}, [{"name": "x", "template": "y"}], "{{ x.y.z }}"])
    _write_json(d / name, value)


def _on_json(mutation):
    def mutate(d: Path, rng: random.Random) -> None:
        name = rng.choice(JSON_FILES)
        if (d / name).is_file():
            mutation(d, rng, name)
    mutate.__name__ = mutation.__name__
    return mutate


MUTATIONS = {f.__name__: f for f in (
    _on_json(json_set), _on_json(json_delete), _on_json(json_nest), _on_json(file_bytes),
    rope_scaling, safetensors_entry, safetensors_framing, safetensors_nan, sharded, tokenizer_ids, tokenizer_config)}
# how often each is drawn
WEIGHTS = {"json_set": 5, "json_delete": 3, "json_nest": 1, "file_bytes": 2, "rope_scaling": 2,
           "safetensors_entry": 5, "safetensors_framing": 3, "safetensors_nan": 1, "sharded": 3,
           "tokenizer_ids": 3, "tokenizer_config": 3}


def cases(n: int, seed: int) -> list[tuple]:
    """n cases (arch, mutation name, seed of the mutation's random choices)."""
    rng = random.Random(seed)
    names = list(WEIGHTS)
    return [(rng.choice(ARCHS), rng.choices(names, [WEIGHTS[k] for k in names])[0], rng.randrange(2**32))
            for _ in range(n)]


def run_case(arch: str, mutation: str, seed: int) -> str:
    """Mutate a copy of the arch's HF directory, load it, take the prompt's logits and stream two tokens."""
    tmp = Path(tempfile.mkdtemp(prefix="hf-fuzz-"))
    try:
        d = tmp / "hf"
        shutil.copytree(FIXTURES / arch / "hf", d)
        MUTATIONS[mutation](d, random.Random(seed))
        llm = load(str(d), n_ctx=32)
        ids = llm.encode_prompt(PROMPT)
        if not np.isfinite(llm.logits(ids)).all():
            return "nan"
        "".join(llm.generate(ids, max_tokens=2))
        return "ok"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
