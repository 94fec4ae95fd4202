"""GGUF fuzz target for tests/fuzz/harness.py: mutants of the tiny fixture GGUFs, loaded and run end to end.

A case is (fixture, mutation, seed, n_ctx): the fixture (`tests/fixtures/tiny/<arch>/model-<type>.gguf`, several
architectures and weight types) is parsed into its header fields, the named mutation is applied with a
random.Random(seed), and the mutant is written back, so that one tuple reproduces one file. Most mutations are
structure-aware (metadata values, types, counts and string lengths, array nesting, tensor dims, types, offsets,
alignment, hyperparameters, tokenizer metadata, non-finite weights); the rest flip, splice or truncate bytes.
run_case loads the mutant with `engine.load`, takes logits of a few tokens and streams a few generated tokens
(greedy and sampled); it returns "nan" when non-finite logits came back without a typed error.
"""
import math
import random
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.runtime.llm import load  # imported here, in the parent, so that each forked case starts at once
from kernels.quants import GGMLType, block_shape

TINY = Path(__file__).resolve().parent.parent / "fixtures" / "tiny"
FIXTURES = tuple(sorted(str(p.relative_to(TINY)) for p in TINY.glob("*/model-*.gguf")))
ALIGN = 32  # the fixtures' data alignment (they set no general.alignment)

# GGUF value types (gguf.GGUFValueType)
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
        I64: "<q", F64: "<d"}
_F16_NAN, _F16_INF, _BF16_NAN = b"\x00\x7e", b"\x00\x7c", b"\xc0\x7f"
_SCALE_AT = {GGMLType.Q6_K: 208}  # byte of a block's f16 scale d where it is not the block's first


@dataclass
class Gguf:
    """A GGUF file as fields. kvs: [key, value type, encoded value]; tensors: [name, dims (ne0 first), ggml type,
    offset, n_dims as written or None for len(dims)]; data: the bytes from the data section on."""
    version: int
    kvs: list
    tensors: list
    data: bytearray
    counts: list = field(default_factory=lambda: [None, None])  # n_tensors, n_kv as written (None: the real ones)

    def find(self, key: bytes):
        return next((kv for kv in self.kvs if kv[0] == key), None)

    def put(self, key: bytes, vtype: int, payload: bytes) -> None:
        kv = self.find(key)
        if kv is None:
            self.kvs.append([key, vtype, payload])
        else:
            kv[1:] = [vtype, payload]

    def arch(self) -> str:
        return _str_value(self.find(b"general.architecture")[2])


# -- encoding -------------------------------------------------------------------------------------------------

def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _scalar(vtype: int, v) -> tuple[int, bytes]:
    return vtype, struct.pack(_FMT[vtype], v)


def _array(etype: int, items: list[bytes]) -> tuple[int, bytes]:
    return ARR, struct.pack("<IQ", etype, len(items)) + b"".join(items)


def _str_value(payload: bytes) -> str:
    return payload[8:].decode("utf-8", "replace")


def _skip(buf: bytes, pos: int, vtype: int) -> int:
    """Position after one encoded value of vtype at pos."""
    if vtype == STR:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == ARR:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _FMT:
            return pos + count * struct.calcsize(_FMT[etype])
        for _ in range(count):
            pos = _skip(buf, pos, etype)
        return pos
    return pos + struct.calcsize(_FMT[vtype])


def parse(buf: bytes) -> Gguf:
    """The fields of a well-formed GGUF (a fixture)."""
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    pos, kvs, tensors = 24, [], []
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", buf, pos)[0]
        key, pos = buf[pos + 8:pos + 8 + n], pos + 8 + n
        vtype = struct.unpack_from("<I", buf, pos)[0]
        end = _skip(buf, pos + 4, vtype)
        kvs.append([key, vtype, buf[pos + 4:end]])
        pos = end
    for _ in range(n_tensors):
        n = struct.unpack_from("<Q", buf, pos)[0]
        name, pos = buf[pos + 8:pos + 8 + n], pos + 8 + n
        n_dims = struct.unpack_from("<I", buf, pos)[0]
        dims = list(struct.unpack_from(f"<{n_dims}Q", buf, pos + 4))
        gtype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        tensors.append([name, dims, gtype, offset, None])
        pos += 4 + 8 * n_dims + 12
    return Gguf(version, kvs, tensors, bytearray(buf[-(-pos // ALIGN) * ALIGN:]))


def write(g: Gguf) -> bytes:
    n_tensors, n_kv = (len(g.tensors) if g.counts[0] is None else g.counts[0],
                       len(g.kvs) if g.counts[1] is None else g.counts[1])
    out = bytearray(b"GGUF" + struct.pack("<IQQ", g.version, n_tensors, n_kv))
    for key, vtype, payload in g.kvs:
        out += _s(key) + struct.pack("<I", vtype) + payload
    for name, dims, gtype, offset, n_dims in g.tensors:
        out += _s(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
        out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", gtype, offset)
    out += bytes(-len(out) % ALIGN)
    return bytes(out) + bytes(g.data)


# -- mutations: each takes (Gguf, rng) and changes it in place ----------------------------------------------

def _odd(rng: random.Random) -> tuple[int, bytes]:
    """A value no hyperparameter should hold: wrong type, non-finite, zero, negative or huge."""
    return rng.choice([
        (STR, _s(b"32")), (STR, _s(b"")), _array(U32, [struct.pack("<I", 4)] * 3), _array(STR, []),
        _scalar(F32, math.inf), _scalar(F32, -math.inf), _scalar(F32, math.nan), _scalar(F64, math.nan),
        _scalar(F32, 0.0), _scalar(F32, -1.0), _scalar(F32, 1e-45), _scalar(F64, 1e308), _scalar(F32, 2.5),
        _scalar(I32, 0), _scalar(I32, -1), _scalar(I64, 2**63 - 1), _scalar(U64, 2**64 - 1), _scalar(U32, 2**31),
        _scalar(U32, 2**32 - 1), _scalar(U32, 1), _scalar(U32, 3), _scalar(U32, 7), _scalar(BOOL, True),
        _scalar(U8, 0), _scalar(I8, -128),
    ])


_HPARAMS = ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
            "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.freq_base",
            "attention.layer_norm_rms_epsilon", "attention.sliding_window", "rope.dimension_count",
            "rope.scaling.type", "rope.scaling.factor", "rope.freq_base_swa", "final_logit_softcapping",
            "attention.sliding_window_pattern", "vocab_size")


def m_hparam(g: Gguf, rng: random.Random) -> None:
    """A hyperparameter (mostly one the file has, so that it is read) set to an odd value, or dropped."""
    arch = g.arch()
    present = [kv[0] for kv in g.kvs if kv[0].startswith(f"{arch}.".encode())]
    key = rng.choice(present) if rng.random() < 0.7 else f"{arch}.{rng.choice(_HPARAMS)}".encode()
    if rng.random() < 0.15:
        g.kvs = [kv for kv in g.kvs if kv[0] != key]
    else:
        g.put(key, *_odd(rng))


def m_context(g: Gguf, rng: random.Random) -> None:
    value = rng.choice([2**63 - 1, 2**62, 2**40, 2**31 - 1, 2**24, 10**6, 1, 2])
    g.put(f"{g.arch()}.context_length".encode(), *_scalar(rng.choice([U64, I64]) if value >= 2**32 else U32, value))


def m_general(g: Gguf, rng: random.Random) -> None:
    key = rng.choice([b"general.alignment"] * 3 + [b"general.architecture", b"split.tensors.count",
                                                   b"general.name", b"tokenizer.chat_template"])
    choices = [_odd(rng), _scalar(U32, rng.choice([0, 1, 2, 7, 16, 64, 4096, 2**31])),
               _scalar(U64, 2**63), (STR, _s(rng.choice([b"llama", b"qwen3", b"rwkv", b"\xff\xfe", b"{{"])))]
    g.put(key, *rng.choice(choices))


def m_value_type(g: Gguf, rng: random.Random) -> None:
    kv = rng.choice(g.kvs)
    kv[1] = rng.choice([*range(14), 255, 2**31, 2**32 - 1])


def m_array_count(g: Gguf, rng: random.Random) -> None:
    arrays = [kv for kv in g.kvs if kv[1] == ARR]
    kv = rng.choice(arrays)
    count = struct.unpack_from("<Q", kv[2], 4)[0]
    new = rng.choice([count + 1, count - 1, count * 2, 2**31, 2**62, 2**64 - 1, 0])
    kv[2] = kv[2][:4] + struct.pack("<Q", new) + kv[2][12:]


def m_string_len(g: Gguf, rng: random.Random) -> None:
    """A string's length field (a string value, or the first string of a string array) made wrong."""
    kv = rng.choice([kv for kv in g.kvs if kv[1] == STR or (kv[1] == ARR and kv[2][:4] == struct.pack("<I", STR))])
    at = 0 if kv[1] == STR else 12
    n = struct.unpack_from("<Q", kv[2], at)[0]
    new = rng.choice([n + 1, n + 1000, 2**40, 2**63, 2**64 - 1])
    kv[2] = kv[2][:at] + struct.pack("<Q", new) + kv[2][at + 8:]


def m_deep(g: Gguf, rng: random.Random) -> None:
    depth = rng.choice([2, 8, 9, 64, 1000, 5000])
    inner = struct.pack("<IQ", U8, 1) + b"\x01"
    g.put(rng.choice([b"fuzz.deep", b"tokenizer.ggml.merges", b"tokenizer.ggml.tokens"]), ARR,
          struct.pack("<IQ", ARR, 1) * (depth - 1) + inner)


def m_counts(g: Gguf, rng: random.Random) -> None:
    which = rng.randrange(2)
    real = len(g.tensors) if which == 0 else len(g.kvs)
    g.counts[which] = rng.choice([0, real - 1, real + 1, 2**31, 2**62, 2**64 - 1])


def m_n_dims(g: Gguf, rng: random.Random) -> None:
    t = rng.choice(g.tensors)
    t[4] = rng.choice([0, 3, 5, 2**31, 2**32 - 1])


def m_dims(g: Gguf, rng: random.Random) -> None:
    t = rng.choice(g.tensors)
    d = t[1]
    t[1] = rng.choice([
        [2**32, 2**32], [2**63, 2], [d[0], 2**62], [2**64 - 1], [0] + d[1:], d[:-1] + [0], [d[0] + 1] + d[1:],
        d[::-1], [d[0] * 2] + d[1:], d + [1], d + [2], [d[0]], [d[0], 1, 1, 2**62], [2**64 - 256, 2**64 - 256],
    ])


def m_ggml_type(g: Gguf, rng: random.Random) -> None:
    t = rng.choice(g.tensors)
    t[2] = rng.choice([*range(0, 42), 2**31, 2**32 - 1])


def m_offset(g: Gguf, rng: random.Random) -> None:
    t = rng.choice(g.tensors)
    other = rng.choice(g.tensors)
    t[3] = rng.choice([t[3] + 1, t[3] + 2, t[3] + ALIGN, t[3] - ALIGN if t[3] >= ALIGN else 1, other[3],
                       other[3] + ALIGN, len(g.data), len(g.data) - ALIGN, 2**63, 2**64 - 1, 0])


def m_names(g: Gguf, rng: random.Random) -> None:
    a, b = rng.sample(g.tensors, 2)
    kind = rng.randrange(4)
    if kind == 0:
        a[0], b[0] = b[0], a[0]
    elif kind == 1:
        a[0] = b[0]
    elif kind == 2:
        g.tensors.remove(a)
    else:
        a[0] = rng.choice([b"", b"\xff\xfe", a[0] + b"x", b"blk.99.attn_norm.weight"])


def m_tokenizer(g: Gguf, rng: random.Random) -> None:
    tokens = g.find(b"tokenizer.ggml.tokens")
    n = struct.unpack_from("<Q", tokens[2], 4)[0]
    kind = rng.randrange(6)
    if kind == 0:  # invalid UTF-8 (or duplicates, or empty strings) among the token strings
        items, pos = [], 12
        for _ in range(n):
            size = struct.unpack_from("<Q", tokens[2], pos)[0]
            items.append(tokens[2][pos + 8:pos + 8 + size])
            pos += 8 + size
        for i in rng.sample(range(n), rng.randint(1, 8)):
            items[i] = rng.choice([b"\xff", b"\xc3", b"a\xed\xa0\x80b", b"\x80\x80", b"", items[0], b"\x00"])
        tokens[2] = _array(STR, [_s(t) for t in items])[1]
    elif kind == 1:  # ids out of the vocabulary or of the wrong type
        key = rng.choice([b"tokenizer.ggml.bos_token_id", b"tokenizer.ggml.eos_token_id",
                          b"tokenizer.ggml.unknown_token_id", b"tokenizer.ggml.eot_token_id",
                          b"tokenizer.ggml.padding_token_id"])
        g.put(key, *rng.choice([_scalar(U32, n), _scalar(U32, n + 1000), _scalar(U32, 2**32 - 1),
                                _scalar(I32, -1), _scalar(U64, 2**64 - 1), _odd(rng)]))
    elif kind == 2:  # a tokenizer array of the wrong element type
        key = rng.choice([b"tokenizer.ggml.tokens", b"tokenizer.ggml.token_type", b"tokenizer.ggml.merges",
                          b"tokenizer.ggml.scores"])
        g.put(key, *rng.choice([_array(U32, [struct.pack("<I", i) for i in range(n)]),
                                _array(STR, [_s(b"x")] * 3), _array(F32, [struct.pack("<f", math.nan)] * n),
                                _array(ARR, [struct.pack("<IQ", U8, 0)] * 2), _odd(rng)]))
    elif kind == 3:  # scalars of the wrong type
        key = rng.choice([b"tokenizer.ggml.model", b"tokenizer.ggml.pre", b"tokenizer.ggml.add_bos_token",
                          b"tokenizer.ggml.add_space_prefix", b"tokenizer.chat_template"])
        g.put(key, *rng.choice([_odd(rng), (STR, _s(b"\xff\xfe")), (STR, _s(b"bert")), (STR, _s(b"llama")),
                                (STR, _s(b"gpt2"))]))
    elif kind == 4:  # fewer (or more) token types and scores than tokens
        key = rng.choice([b"tokenizer.ggml.token_type", b"tokenizer.ggml.scores"])
        etype, size = (I32, "<i") if key.endswith(b"type") else (F32, "<f")
        g.put(key, *_array(etype, [struct.pack(size, 1)] * rng.choice([0, 1, n - 1, n + 1])))
    else:  # a larger vocabulary than the embedding
        g.kvs = [kv for kv in g.kvs if kv[0] not in (b"tokenizer.ggml.scores", b"tokenizer.ggml.token_type")]
        extra = [_s(f"<fuzz{i}>".encode()) for i in range(rng.choice([1, 100]))]
        tokens[2] = struct.pack("<IQ", STR, n + len(extra)) + tokens[2][12:] + b"".join(extra)


def m_nonfinite(g: Gguf, rng: random.Random) -> None:
    """NaN or infinity in a weight: an F32 element, or the f16 scale of quantized blocks."""
    name, dims, gtype, offset, _ = rng.choice(g.tensors)
    elems, size = block_shape(gtype)
    n_blocks = math.prod(dims) // elems
    for block in rng.sample(range(n_blocks), min(n_blocks, rng.choice([1, 4, 64]))):
        at = offset + block * size
        if gtype == GGMLType.F32:
            g.data[at:at + 4] = struct.pack("<f", rng.choice([math.nan, math.inf, -math.inf]))
        elif gtype == GGMLType.BF16:
            g.data[at:at + 2] = _BF16_NAN
        else:
            at += _SCALE_AT.get(GGMLType(gtype), 0)
            g.data[at:at + 2] = rng.choice([_F16_NAN, _F16_INF])


MUTATIONS = {name[2:]: f for name, f in globals().items() if name.startswith("m_")}
BYTE_MUTATIONS = ("flip", "splice", "truncate")


def _bytes(data: bytes, op: str, rng: random.Random) -> bytes:
    header = min(len(data), 24 + 40 * 1024)  # the fixtures' headers end before 40 KB
    out = bytearray(data)
    if op == "flip":
        for _ in range(rng.choice([1, 2, 8, 32])):
            at = rng.randrange(header if rng.random() < 0.8 else len(out))
            out[at] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    elif op == "splice":
        at = rng.randrange(24, header)
        if rng.random() < 0.5:
            del out[at:at + rng.choice([1, 3, 8, 100])]
        else:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 8, 100])))
    else:
        out = out[:rng.choice([rng.randrange(header), rng.randrange(len(out))])]
    return bytes(out)


def mutant(fixture: str, op: str, seed: int) -> bytes:
    """The bytes of one mutant (deterministic in its arguments)."""
    rng = random.Random(seed)
    data = (TINY / fixture).read_bytes()
    if op in BYTE_MUTATIONS:
        return _bytes(data, op, rng)
    g = parse(data)
    MUTATIONS[op](g, rng)
    return write(g)


def cases(n: int, seed: int) -> list[tuple]:
    """n cases (fixture, mutation, seed, n_ctx) cycling through every mutation, so even a small sample meets
    each; n_ctx None (the file's context_length) or small."""
    rng = random.Random(seed)
    ops = list(MUTATIONS) * 3 + list(BYTE_MUTATIONS)
    return [(rng.choice(FIXTURES), ops[i % len(ops)], rng.randrange(2**32), rng.choice([None, None, 64]))
            for i in range(n)]


def run_case(fixture: str, op: str, seed: int, n_ctx: int | None) -> str:
    """Load the mutant, take logits of four tokens, stream three tokens greedily and two sampled. "nan" when
    logits came back non-finite without a typed error; typed errors propagate (the harness counts them)."""
    with tempfile.TemporaryDirectory(prefix="gguf-fuzz-") as d, np.errstate(all="ignore"):  # NaN math is expected
        path = Path(d) / "model.gguf"
        path.write_bytes(mutant(fixture, op, seed))
        llm = load(str(path), n_ctx=n_ctx)
        ids = [i % llm.config.vocab_size for i in (1, 5, 9, 2)]
        if not np.isfinite(llm.logits(ids)).all():
            return "nan"
        "".join(llm.generate(ids, max_tokens=3))
        "".join(llm.generate(ids, max_tokens=2, temperature=0.8, top_p=0.9, seed=seed))
    return "ok"
