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
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
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


# --- Integer dot products against int8 activations (the opt-in int8 path, kernels/cpu/int8_kernels.py) ---
#
# int8_rows_<type>(out, raw, r0, r1, xq, xd, xs, n) sets out[r] for rows r0 <= r < r1 of raw (n blocks each):
# per block of 32 values, Σ_j q[j]·xq[j] in integers (16-bit pair sums, then 32-bit quads: x86's pmaddubsw + pmaddwd),
# times the block's float scale d_w·xd[b]; min terms use xs[b] = xd[b]·Σ_j xq[j]. No integer sum can overflow:
# the unsigned operand is at most 128 (|q|, or 4-6-bit q with the offset subtracted after) and |xq| ≤ 127.

_I16 = ir.IntType(16)
# x86 AVX2 has the two pair-summing multiplies as instructions; LLVM does not find them in the generic pattern
# on its own, so they are called by name where numba compiles for an AVX2 host (generic IR elsewhere).
_AVX2 = config.CPU_NAME is None and bool(llvm.get_host_cpu_features().get("avx2"))


def _vec(elem, n):
    return ir.VectorType(elem, n)


def _x86(blk, name, ret, *args):
    fn = cgutils.get_or_insert_function(blk.builder.module, ir.FunctionType(ret, [a.type for a in args]),
                                        f"llvm.x86.avx2.{name}")
    return blk.builder.call(fn, args)


def _pair_sum(b, v, n, out_type):
    """<n x T> → <n/2 x out_type>: v[2i] + v[2i+1], each widened (signed) to out_type first if T is narrower."""
    halves = []
    for first in (0, 1):
        h = b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), ir.Constant(_vec(_I32, n // 2),
                                                                               list(range(first, n, 2))))
        halves.append(h if v.type.element.width == out_type.width else b.sext(h, _vec(out_type, n // 2)))
    return b.add(*halves)


def _maddubs(blk, u, s):
    """<32 x i8> unsigned u, signed s → <16 x i16>: u[2i]·s[2i] + u[2i+1]·s[2i+1] (x86 pmaddubsw; the callers'
    ranges never saturate)."""
    if _AVX2:
        return _x86(blk, "pmadd.ub.sw", _vec(_I16, 16), u, s)
    b = blk.builder
    return _pair_sum(b, b.mul(b.zext(u, _vec(_I16, 32)), b.sext(s, _vec(_I16, 32))), 32, _I16)


def _madd(blk, p, w):
    """<16 x i16> p, w → <8 x i32>: p[2i]·w[2i] + p[2i+1]·w[2i+1] (x86 pmaddwd)."""
    if _AVX2:
        return _x86(blk, "pmadd.wd", _vec(_I32, 8), p, w)
    b = blk.builder
    return _pair_sum(b, b.mul(b.sext(p, _vec(_I32, 16)), b.sext(w, _vec(_I32, 16))), 16, _I32)


def _ones16(blk):
    return ir.Constant(_vec(_I16, 16), [1] * 16)


def _int_dot_32(blk, u, s):
    """Σ in <8 x i32> of u[j]·s[j] for u: <32 x i8> unsigned, s: <32 x i8> signed."""
    return _madd(blk, _maddubs(blk, u, s), _ones16(blk))


def _loop(blk, count, carried, body):
    """IR loop: for i in range(count): carried = body(i, carried). count: i64 value; carried: list of values."""
    b = blk.builder
    before = b.block
    head, inner, done = (b.append_basic_block(name) for name in ("loop.head", "loop.body", "loop.done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(_I64)
    i.add_incoming(ir.Constant(_I64, 0), before)
    phis = []
    for value in carried:
        phi = b.phi(value.type)
        phi.add_incoming(value, before)
        phis.append(phi)
    b.cbranch(b.icmp_signed("<", i, count), inner, done)
    b.position_at_end(inner)
    new = body(i, phis)
    i.add_incoming(b.add(i, ir.Constant(_I64, 1)), b.block)
    for phi, value in zip(phis, new):
        phi.add_incoming(value, b.block)
    b.branch(head)
    b.position_at_end(done)
    return phis


class _Row:
    """Loads for the integer row dots: the current row's bytes at i64 offsets, f16 scales, activations, steps."""

    def __init__(self, blk, row_data):
        """row_data: i8* to the current row's first byte."""
        self.blk, self.b = blk, blk.builder
        self.data = {name: self.array(name).data for name in ("xq", "xd", "xs")}
        self.data["row"] = row_data

    def array(self, name):
        return self.blk.context.make_array(self.blk.types[name])(self.blk.context, self.b, self.blk.args[name])

    def at(self, name, offset, elem, n=1):
        ptr = self.b.gep(self.data[name], [offset])
        return self.b.load(self.b.bitcast(ptr, (elem if n == 1 else _vec(elem, n)).as_pointer()), align=1)

    def f16(self, offset):
        return self.b.fpext(self.b.bitcast(self.at("row", offset, _I16), ir.HalfType()), _F32)

    def bytes(self, offset, n, shift=0, mask=0xFF):
        v = self.at("row", offset, _I8, n)
        if shift:
            v = self.b.lshr(v, self.blk.splat(ir.Constant(_I8, shift), n))
        return v if mask == 0xFF else self.b.and_(v, self.blk.splat(ir.Constant(_I8, mask), n))

    def y(self, index):
        """xq[index : index+32]: <32 x i8>."""
        return self.at("xq", index, _I8, 32)

    def lane(self, v, j):
        """v[j] broadcast to 8 lanes."""
        return self.b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), ir.Constant(_vec(_I32, 8), [j] * 8))

    def fma(self, isum, scale8, acc):
        """acc + float(isum) · scale8, all <8 x ...>."""
        return self.b.fadd(acc, self.b.fmul(self.b.sitofp(isum, _vec(_F32, 8)), scale8, flags=_FMA), flags=_FMA)


def _i64(b, value, times=1, plus=0):
    v = b.mul(value, ir.Constant(_I64, times)) if times != 1 else value
    return b.add(v, ir.Constant(_I64, plus)) if plus else v


def _rows_primitive(step):
    """out[r] = Σ over the n blocks of row r of `raw` of step(row, i, acc), for r0 <= r < r1: two accumulators
    alternating so consecutive blocks do not wait on each other, then one horizontal sum per row."""
    def body(blk):
        b = blk.builder
        raw = blk.context.make_array(blk.types["raw"])(blk.context, b, blk.args["raw"])
        stride = cgutils.unpack_tuple(b, raw.strides, 2)[0]
        out = blk.context.make_array(blk.types["out"])(blk.context, b, blk.args["out"]).data
        n = blk.args["n"]
        pairs = b.sdiv(n, ir.Constant(_I64, 2))
        zero = ir.Constant(_vec(_F32, 8), [0.0] * 8)

        def one_row(r, _):
            row = _Row(blk, b.gep(b.bitcast(raw.data, _I8.as_pointer()), [b.mul(r, stride)]))

            def two(i, accs):
                return [step(row, _i64(b, i, 2), accs[0]), step(row, _i64(b, i, 2, 1), accs[1])]

            a0, a1 = _loop(blk, pairs, [zero, zero], two)
            (a0,) = _loop(blk, b.sub(n, _i64(b, pairs, 2)), [a0],
                          lambda i, accs: [step(row, b.add(_i64(b, pairs, 2), i), accs[0])])
            total = b.fadd(a0, a1)
            lanes = [b.extract_element(total, ir.Constant(_I32, j)) for j in range(8)]
            while len(lanes) > 1:
                lanes = [b.fadd(lanes[j], lanes[j + 1]) for j in range(0, len(lanes), 2)]
            b.store(lanes[0], b.gep(out, [r]))
            return []

        first = blk.args["r0"]
        _loop(blk, b.sub(blk.args["r1"], first), [], lambda i, _: one_row(b.add(first, i), _))
        return blk.context.get_dummy_value()
    return _primitive(["out", "raw", "r0", "r1", "xq", "xd", "xs", "n"], body)


def _q8_0_block(row, i, acc):
    """Q8_0 block i (34 bytes): f16 d, int8 q[32]."""
    b, blk = row.b, row.blk
    o = _i64(b, i, 34)
    q = row.bytes(_i64(b, o, 1, 2), 32)
    y = row.y(_i64(b, i, 32))
    zero = ir.Constant(_vec(_I8, 32), [0] * 32)
    neg = b.icmp_signed("<", q, zero)
    u = b.select(neg, b.sub(zero, q), q)
    s = _x86(blk, "psign.b", q.type, y, q) if _AVX2 else b.select(neg, b.sub(zero, y), y)
    scale = b.fmul(row.f16(o), row.at("xd", i, _F32))
    return row.fma(_int_dot_32(blk, u, s), blk.splat(scale, 8), acc)


def _nibble_block(size, offset):
    """Q4_0 (size 18, offset 8: v = d·(q − 8)) or Q4_1 (size 20, offset 0: v = d·q + m): the 16 bytes after the
    header, low nibbles for values 0-15, high nibbles for 16-31."""
    def block(row, i, acc):
        b, blk = row.b, row.blk
        o = _i64(b, i, size)
        packed = _i64(b, o, 1, size - 16)
        q = b.shuffle_vector(row.bytes(packed, 16, 0, 15), row.bytes(packed, 16, 4, 15),
                             ir.Constant(_vec(_I32, 32), list(range(32))))
        y = row.y(_i64(b, i, 32))
        pairs = _maddubs(blk, q, y)
        if offset:
            pairs = b.sub(pairs, _maddubs(blk, blk.splat(ir.Constant(_I8, offset), 32), y))
        acc = row.fma(_madd(blk, pairs, _ones16(blk)), blk.splat(b.fmul(row.f16(o), row.at("xd", i, _F32)), 8), acc)
        if not offset:  # + m · xd·Σy, added to lane 0
            m = b.fmul(row.f16(_i64(b, o, 1, 2)), row.at("xs", i, _F32))
            acc = b.insert_element(acc, b.fadd(b.extract_element(acc, ir.Constant(_I32, 0)), m),
                                   ir.Constant(_I32, 0))
        return acc
    return block


def _q4_k_scales(row, o):
    """Q4_K super-block header at o: (d, dmin, scales, mins) with the 8 six-bit scales and mins as <8 x float>."""
    b = row.b
    d, dmin = row.f16(o), row.f16(_i64(b, o, 1, 2))
    u0, u1, u2 = (row.at("row", _i64(b, o, 1, 4 + 4 * k), _I32) for k in range(3))

    def c(v):
        return ir.Constant(_I32, v)
    low6, low4, two = c(0x3F3F3F3F), c(0x0F0F0F0F), c(0x03030303)
    scales_lo = b.and_(u0, low6)
    scales_hi = b.or_(b.and_(u2, low4), b.shl(b.and_(b.lshr(u0, c(6)), two), c(4)))
    mins_lo = b.and_(u1, low6)
    mins_hi = b.or_(b.and_(b.lshr(u2, c(4)), low4), b.shl(b.and_(b.lshr(u1, c(6)), two), c(4)))
    words = ir.Constant(_vec(_I32, 4), ir.Undefined)
    for k, w in enumerate((scales_lo, scales_hi, mins_lo, mins_hi)):
        words = b.insert_element(words, w, c(k))
    packed = b.bitcast(words, _vec(_I8, 16))
    undef = ir.Constant(packed.type, ir.Undefined)
    scales = b.uitofp(b.shuffle_vector(packed, undef, ir.Constant(_vec(_I32, 8), list(range(8)))), _vec(_F32, 8))
    mins = b.uitofp(b.shuffle_vector(packed, undef, ir.Constant(_vec(_I32, 8), list(range(8, 16)))), _vec(_F32, 8))
    return d, dmin, scales, mins


def _q4_k_block(row, i, acc):
    """Q4_K super-block i (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles;
    sub-block j (32 values) is d·sc_j·q − dmin·m_j, q from the low (j even) or high (j odd) nibbles of the 32
    bytes at 16 + 32·(j // 2)."""
    b, blk = row.b, row.blk
    o = _i64(b, i, 144)
    d, dmin, scales, mins = _q4_k_scales(row, o)
    first = _i64(b, i, 8)
    factors = b.fmul(b.fmul(blk.splat(d, 8), scales), row.at("xd", first, _F32, 8))
    acc = b.fsub(acc, b.fmul(b.fmul(blk.splat(dmin, 8), mins), row.at("xs", first, _F32, 8)))
    for k in range(4):
        packed_q = _i64(b, o, 1, 16 + 32 * k)
        for half, shift in ((0, 0), (1, 4)):
            j = 2 * k + half
            isum = _int_dot_32(blk, row.bytes(packed_q, 32, shift, 15), row.y(_i64(b, i, 256, 32 * j)))
            acc = row.fma(isum, row.lane(factors, j), acc)
    return acc


def _q6_k_block(row, i, acc):
    """Q6_K super-block i (210 bytes): 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, f16 d.
    Group g of half h (32 values): ((ql[64h + 32(g&1) + j] >> 4(g>>1)) & 15 | ((qh[32h + j] >> 2g) & 3) << 4) − 32,
    values 0-15 scaled by sc[8h + 2g], 16-31 by sc[8h + 2g + 1]."""
    b, blk = row.b, row.blk
    o = _i64(b, i, 210)
    scales = b.sext(row.at("row", _i64(b, o, 1, 192), _I8, 16), _vec(_I16, 16))
    undef = ir.Constant(scales.type, ir.Undefined)
    factors = b.fmul(blk.splat(row.f16(_i64(b, o, 1, 208)), 8), row.at("xd", _i64(b, i, 8), _F32, 8))
    thirty_two = blk.splat(ir.Constant(_I8, 32), 32)
    for h in range(2):
        high = row.bytes(_i64(b, o, 1, 128 + 32 * h), 32)
        for g in range(4):
            low = row.bytes(_i64(b, o, 1, 64 * h + 32 * (g & 1)), 32, 4 * (g >> 1), 15)
            top = b.and_(b.lshr(high, blk.splat(ir.Constant(_I8, 2 * g), 32)), blk.splat(ir.Constant(_I8, 3), 32))
            q = b.or_(low, b.shl(top, blk.splat(ir.Constant(_I8, 4), 32)))
            y = row.y(_i64(b, i, 256, 128 * h + 32 * g))
            pairs = b.sub(_maddubs(blk, q, y), _maddubs(blk, thirty_two, y))
            sc = 8 * h + 2 * g
            scale16 = b.shuffle_vector(scales, undef, ir.Constant(_vec(_I32, 16), [sc] * 8 + [sc + 1] * 8))
            acc = row.fma(_madd(blk, pairs, scale16), row.lane(factors, 4 * h + g), acc)
    return acc


int8_rows_q8_0 = _rows_primitive(_q8_0_block)
int8_rows_q4_0 = _rows_primitive(_nibble_block(18, 8))
int8_rows_q4_1 = _rows_primitive(_nibble_block(20, 0))
int8_rows_q4_k = _rows_primitive(_q4_k_block)
int8_rows_q6_k = _rows_primitive(_q6_k_block)

