"""Explicit-vector building blocks for the fused mat-vec, written as numba intrinsics in LLVM IR.

numba's auto-vectorizer gives up on the unpack-and-accumulate loops of the quantized types (it keeps the running
sums behind alias checks and falls back to scalar code); these emit the vector code directly: load a block's
bytes as one vector, unpack with byte shifts and masks, widen to float32 and multiply-add into the float32 sums
`acc` (32 lanes, loaded and stored once per call). LLVM lowers the generic vectors to what the CPU has (AVX2,
AVX-512, NEON).

Each primitive adds one or more terms, lane by lane for j < n (n = 32 or 16):
    acc[j] += (d_t · q_t[j] + m_t) · x[xo_t + j]
where q_t[j] is the j-th integer unpacked from `row` (uint8) as the primitive's docstring says.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_F32, _I8, _I32, _I64 = ir.FloatType(), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_FMA = ("contract",)  # let LLVM fuse multiply-adds


class _Block:
    """IR helpers bound to one intrinsic call: args by name, vector loads and arithmetic."""

    def __init__(self, context, builder, sig, args, names):
        self.context, self.builder, self.n = context, builder, None
        self.types = dict(zip(names, sig.args))
        self.args = dict(zip(names, args))

    def splat(self, value, n):
        vt = ir.VectorType(value.type, n)
        one = self.builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
        return self.builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                           ir.Constant(ir.VectorType(_I32, n), [0] * n))

    def pointer(self, name, offset, elem, n):
        """Pointer to <n x elem> at array `name`[offset]."""
        data = self.context.make_array(self.types[name])(self.context, self.builder, self.args[name]).data
        return self.builder.bitcast(self.builder.gep(data, [offset]), ir.VectorType(elem, n).as_pointer())

    def offset(self, name, plus=0):
        value = self.args[name]
        return value if not plus else self.builder.add(value, ir.Constant(value.type, plus))

    def bytes(self, offset, n, shift=0, mask=0xFF):
        """(row[offset : offset+n] >> shift) & mask, as <n x i8> (shift, mask: Python ints)."""
        b = self.builder
        v = b.load(self.pointer("row", offset, _I8, n), align=1)
        if shift:
            v = b.lshr(v, self.splat(ir.Constant(_I8, shift), n))
        if mask != 0xFF:
            v = b.and_(v, self.splat(ir.Constant(_I8, mask), n))
        return v

    def widen(self, v, n, signed=False):
        return (self.builder.sext if signed else self.builder.zext)(v, ir.VectorType(_I32, n))

    def term(self, q, n, xo, d, m):
        """(d·q + m) · x[xo : xo+n] for q: <n x i32>; d, m: float32 values (m may be None)."""
        b = self.builder
        w = b.fmul(b.sitofp(q, ir.VectorType(_F32, n)), self.splat(d, n), flags=_FMA)
        if m is not None:
            w = b.fadd(w, self.splat(m, n), flags=_FMA)
        xv = b.load(self.pointer("x", xo, _F32, n), align=4)
        return b.fmul(w, xv, flags=_FMA)

    def accumulate(self, terms, n):
        """acc[0:n] += Σ terms."""
        b = self.builder
        ptr = self.pointer("acc", ir.Constant(_I64, 0), _F32, n)
        total = b.load(ptr, align=4)
        for t in terms:
            total = b.fadd(total, t, flags=_FMA)
        b.store(total, ptr, align=4)
        return self.context.get_dummy_value()


def _primitive(names, body):
    """A numba intrinsic f(*names) -> None whose IR is body(block)."""
    params = ", ".join(names)
    scope = {"types": types}

    def codegen(context, builder, sig, args):
        return body(_Block(context, builder, sig, args, names))

    scope["codegen"] = codegen
    exec(f"def typer(typingctx, {params}):\n    return types.void({params}), codegen", scope)
    scope["typer"].__name__ = body.__name__
    return intrinsic(scope["typer"])


def _int8_32(blk):
    """Q8_0: q[j] = int8 row[o + j]; one term."""
    q = blk.widen(blk.bytes(blk.offset("o"), 32), 32, signed=True)
    return blk.accumulate([blk.term(q, 32, blk.offset("xo"), blk.args["d"], None)], 32)


def _nibbles(n):
    def nibbles(blk):
        """Q4_0/Q4_1 (n=16), Q4_K (n=32): the n bytes at o; low nibbles pair with x[xo_lo:], high with
        x[xo_hi:]."""
        o = blk.offset("o")
        lo = blk.widen(blk.bytes(o, n, 0, 15), n)
        hi = blk.widen(blk.bytes(o, n, 4, 15), n)
        a = blk.args
        return blk.accumulate([blk.term(lo, n, a["xo_lo"], a["d_lo"], a["m_lo"]),
                               blk.term(hi, n, a["xo_hi"], a["d_hi"], a["m_hi"])], n)
    return nibbles


def _five_bit_32(blk):
    """Q5_K: nibbles as _nibbles(32) plus a fifth bit: bit `hbit` (low nibbles) and `hbit`+1 (high nibbles) of
    the 32 bytes at h, as value 16."""
    b, a = blk.builder, blk.args
    o, h = blk.offset("o"), blk.offset("h")
    hb = blk.widen(blk.bytes(h, 32), 32)
    shift = b.trunc(a["hbit"], _I32)
    one = blk.splat(ir.Constant(_I32, 1), 32)
    lo_bit = b.and_(b.lshr(hb, blk.splat(shift, 32)), one)
    hi_bit = b.and_(b.lshr(hb, blk.splat(b.add(shift, ir.Constant(_I32, 1)), 32)), one)
    four = blk.splat(ir.Constant(_I32, 4), 32)
    lo = b.or_(blk.widen(blk.bytes(o, 32, 0, 15), 32), b.shl(lo_bit, four))
    hi = b.or_(blk.widen(blk.bytes(o, 32, 4, 15), 32), b.shl(hi_bit, four))
    return blk.accumulate([blk.term(lo, 32, a["xo_lo"], a["d_lo"], a["m_lo"]),
                           blk.term(hi, 32, a["xo_hi"], a["d_hi"], a["m_hi"])], 32)


def _five_bit_16(blk):
    """Q5_0/Q5_1: 16 bytes of nibbles at o and a 32-bit word qh of fifth bits: lane j of the low nibbles takes
    bit j, lane j of the high nibbles bit j + 16, as value 16; low pair with x[xo_lo:], high with x[xo_hi:]."""
    b, a = blk.builder, blk.args
    qh = blk.splat(b.trunc(a["qh"], _I32), 16)
    one, four = blk.splat(ir.Constant(_I32, 1), 16), blk.splat(ir.Constant(_I32, 4), 16)
    terms = []
    for shift, first_bit, xo, d, m in ((0, 0, "xo_lo", "d_lo", "m_lo"), (4, 16, "xo_hi", "d_hi", "m_hi")):
        lanes = ir.Constant(ir.VectorType(_I32, 16), list(range(first_bit, first_bit + 16)))
        bit = b.and_(b.lshr(qh, lanes), one)
        q = b.or_(blk.widen(blk.bytes(blk.offset("o"), 16, shift, 15), 16), b.shl(bit, four))
        terms.append(blk.term(q, 16, a[xo], a[d], a[m]))
    return blk.accumulate(terms, 16)


def _six_bit_16(blk):
    """Q6_K: 64 values from 16 low-nibble bytes at `lo`, 16 at `hi` and 16 high-bit bytes at `h`:
    group g = 0..3 is ((lo|hi|lo|hi)[j] >> (0|0|4|4)) & 15 | ((h[j] >> 2g) & 3) << 4, paired with x[xo + 32g:],
    scale s_g and offset −32·s_g."""
    b, a = blk.builder, blk.args
    hb = blk.bytes(blk.offset("h"), 16)
    terms = []
    for g, (src, shift) in enumerate((("lo", 0), ("hi", 0), ("lo", 4), ("hi", 4))):
        nib = blk.bytes(blk.offset(src), 16, shift, 15)
        high = b.and_(b.lshr(hb, blk.splat(ir.Constant(_I8, 2 * g), 16)), blk.splat(ir.Constant(_I8, 3), 16))
        q = blk.widen(b.or_(nib, b.shl(high, blk.splat(ir.Constant(_I8, 4), 16))), 16)
        s = a[f"s{g}"]
        m = b.fmul(s, ir.Constant(_F32, -32.0))
        terms.append(blk.term(q, 16, b.add(a["xo"], ir.Constant(a["xo"].type, 32 * g)), s, m))
    return blk.accumulate(terms, 16)


fma_int8_32 = _primitive(["acc", "row", "o", "x", "xo", "d"], _int8_32)
fma_nibbles_16 = _primitive(["acc", "row", "o", "x", "xo_lo", "xo_hi", "d_lo", "m_lo", "d_hi", "m_hi"],
                            _nibbles(16))
fma_nibbles_32 = _primitive(["acc", "row", "o", "x", "xo_lo", "xo_hi", "d_lo", "m_lo", "d_hi", "m_hi"],
                            _nibbles(32))
fma_five_bit_32 = _primitive(["acc", "row", "o", "h", "hbit", "x", "xo_lo", "xo_hi", "d_lo", "m_lo", "d_hi",
                              "m_hi"], _five_bit_32)
fma_five_bit_16 = _primitive(["acc", "row", "o", "qh", "x", "xo_lo", "xo_hi", "d_lo", "m_lo", "d_hi", "m_hi"],
                             _five_bit_16)
fma_six_bit_16 = _primitive(["acc", "row", "lo", "hi", "h", "x", "xo", "s0", "s1", "s2", "s3"], _six_bit_16)
