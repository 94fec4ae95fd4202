"""The fused mat-vec's inner loops, written as numba intrinsics in LLVM IR with explicit vectors.

numba's auto-vectorizer gives up on the unpack-and-accumulate loops of the quantized types (it keeps the running
sums behind alias checks and falls back to scalar code). Each primitive here is a whole row-range loop,
`<kind>_rows_<type>(out, raw, r0, r1, <activations>, n)`: for rows r0 <= r < r1 of raw ([N, row_bytes] uint8)
it walks the row's n blocks, loads each block's bytes as vectors, unpacks them with shifts and masks, multiplies
them with the activations into two 8-lane float32 accumulators held in registers, and stores out[r] = their sum.
The float32 loops widen quant bytes to 32-bit lanes as they load them (_widened): byte shuffles would compete
with the multiply-adds for the same x86 ports. One block is one `_<kind>_<type>_block(row, i, acc) -> acc`
below. Kinds: float32 activations x (the default) and int8 activations (opt-in). LLVM lowers the generic vectors
to what the CPU has (AVX2, AVX-512, NEON); two x86 integer instructions are called by name on AVX2 hosts.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

_F32, _I8, _I32, _I64 = ir.FloatType(), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_FMA = ("contract",)  # let LLVM fuse multiply-adds


class _Block:
    """IR helpers bound to one intrinsic call: args by name and their numba types."""

    def __init__(self, context, builder, sig, args, names):
        self.context, self.builder = context, builder
        self.types = dict(zip(names, sig.args))
        self.args = dict(zip(names, args))

    def splat(self, value, n):
        vt = ir.VectorType(value.type, n)
        one = self.builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
        return self.builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                           ir.Constant(ir.VectorType(_I32, n), [0] * n))


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
        self.data = {name: self.array(name).data for name in blk.types if name in ("xq", "xd", "xs", "x", "xsum")}
        self.data["row"] = row_data

    def array(self, name):
        return self.blk.context.make_array(self.blk.types[name])(self.blk.context, self.b, self.blk.args[name])

    def at(self, name, offset, elem, n=1):
        ptr = self.b.gep(self.data[name], [offset])
        return self.b.load(self.b.bitcast(ptr, (elem if n == 1 else _vec(elem, n)).as_pointer()), align=1)

    def halves(self, offset):
        """The f16 values at offset and offset + 2 as float32, from one 32-bit load. (A 16-bit load compiles to an
        insert into a register LLVM picks freely, often a running sum, and the conversion then waits for it.)"""
        b = self.b
        v = b.fpext(b.bitcast(self.at("row", offset, _I32), _vec(ir.HalfType(), 2)), _vec(_F32, 2))
        return b.extract_element(v, ir.Constant(_I32, 0)), b.extract_element(v, ir.Constant(_I32, 1))

    def f16(self, offset):
        """The f16 at offset as float32 (the two bytes after it are read too: see halves)."""
        return self.halves(offset)[0]

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


def _hsum(b, v):
    """The sum of the 8 lanes of v."""
    lanes = [b.extract_element(v, ir.Constant(_I32, j)) for j in range(8)]
    while len(lanes) > 1:
        lanes = [b.fadd(lanes[j], lanes[j + 1]) for j in range(0, len(lanes), 2)]
    return lanes[0]


def _pair_lanes(b, u, v, width):
    """<8 x float> u, v → lanes summed in pairs of `width`-lane groups, u's and v's groups alternating: width 1
    gives [u0+u1, v0+v1, u2+u3, v2+v3, ...]; width 2 gives [u0+u2, u1+u3, v0+v2, v1+v3, u4+u6, ...]."""
    first = [j for j in range(8) if j // width % 2 == 0]
    second = [j for j in range(8) if j // width % 2 == 1]
    picks = [[], []]
    for at in range(0, 8, 2 * width):
        for pick, lanes in zip(picks, (first, second)):
            group = [j for j in lanes if at <= j < at + 2 * width]
            pick += group[:width] + [8 + j for j in group[:width]]
    return b.fadd(*(b.shuffle_vector(u, v, ir.Constant(_vec(_I32, 8), pick)) for pick in picks))


def _hsums8(b, accs):
    """The lane sums of 8 <8 x float> vectors as one <8 x float> (lane t: Σ accs[t]): three rounds of pairwise
    shuffles and adds, 21 instructions instead of 8 separate horizontal sums (~110)."""
    quads = [_pair_lanes(b, accs[t], accs[t + 1], 1) for t in range(0, 8, 2)]  # per lane pair
    halves = [_pair_lanes(b, quads[t], quads[t + 1], 2) for t in (0, 2)]  # t = 0..3 per 128-bit half
    low = ir.Constant(_vec(_I32, 8), [0, 1, 2, 3, 8, 9, 10, 11])
    high = ir.Constant(_vec(_I32, 8), [4, 5, 6, 7, 12, 13, 14, 15])
    return b.fadd(b.shuffle_vector(halves[0], halves[1], low), b.shuffle_vector(halves[0], halves[1], high))


def _i64(b, value, times=1, plus=0):
    v = b.mul(value, ir.Constant(_I64, times)) if times != 1 else value
    return b.add(v, ir.Constant(_I64, plus)) if plus else v


def _rows_primitive(step, activations=("xq", "xd", "xs")):
    """out[r] = Σ over the n blocks of row r of `raw` of step(row, i, acc), for r0 <= r < r1: two accumulators
    alternating so consecutive blocks do not wait on each other, then one horizontal sum per row. activations:
    the argument names between r1 and n (int8: xq, xd, xs; float32: x, xsum)."""
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
                return [step(row, _i64(b, i, 2), accs[:1])[0], step(row, _i64(b, i, 2, 1), accs[1:])[0]]

            a0, a1 = _loop(blk, pairs, [zero, zero], two)
            (a0,) = _loop(blk, b.sub(n, _i64(b, pairs, 2)), [a0],
                          lambda i, accs: step(row, b.add(_i64(b, pairs, 2), i), accs))
            b.store(_hsum(b, b.fadd(a0, a1)), b.gep(out, [r]))
            return []

        first = blk.args["r0"]
        _loop(blk, b.sub(blk.args["r1"], first), [], lambda i, _: one_row(b.add(first, i), _))
        return blk.context.get_dummy_value()
    return _primitive(["out", "raw", "r0", "r1", *activations, "n"], body)


def _fmuladd(b, a, c, acc):
    """a·c + acc on <8 x float> (one FMA instruction where the CPU has it)."""
    vt = _vec(_F32, 8)
    fn = cgutils.get_or_insert_function(b.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fmuladd.v8f32")
    return b.call(fn, [a, c, acc])


def _rows_tiled_primitive(weights):
    """out[t, r] += Σ_k W[r, k]·x[t, k] for r0 <= r < r1 and the tile's tokens t < tile (8 or 4). x: [K/32, tile,
    32] float32, C-contiguous (the tile's activations interleaved per 32 values); out: [tile, N] float32; raw may
    be a slice of columns of the stored rows (a span of K).

    weights(row, i) unpacks block i of the row into float32 weights, a list of (group, <32 x float>) for the
    32-value groups it holds; each group is multiplied into every token's running sums with fused multiply-adds
    (8 // tile chains per token, so the multiply-add latency stays hidden). Every weight is unpacked once per
    tile; one pointer walks the interleaved x with constant offsets. Each tile size has its own loop."""
    def body(blk):
        b = blk.builder
        arrays = {name: blk.context.make_array(blk.types[name])(blk.context, b, blk.args[name])
                  for name in ("raw", "x", "out")}
        raw_stride = cgutils.unpack_tuple(b, arrays["raw"].strides, 2)[0]
        out_stride = cgutils.unpack_tuple(b, arrays["out"].strides, 2)[0]
        x = b.bitcast(arrays["x"].data, _F32.as_pointer())
        n = blk.args["n"]
        zero = ir.Constant(_vec(_F32, 8), [0.0] * 8)

        def rows(tile):
            chains = 8 // tile

            def one_row(r, _):
                row = _Row(blk, b.gep(b.bitcast(arrays["raw"].data, _I8.as_pointer()), [b.mul(r, raw_stride)]))

                def one_block(i, accs):
                    accs = list(accs)
                    for group, w in weights(row, i):
                        base = b.gep(x, [_i64(b, group, 32 * tile)])
                        for c, quarter in enumerate(_quarters(b, w)):
                            for t in range(tile):
                                ptr = b.gep(base, [ir.Constant(_I64, 32 * t + 8 * c)])
                                xv = b.load(b.bitcast(ptr, _vec(_F32, 8).as_pointer()), align=4)
                                k = t * chains + c % chains
                                accs[k] = _fmuladd(b, quarter, xv, accs[k])
                    return accs

                accs = _loop(blk, n, [zero] * (tile * chains), one_block)
                out = b.gep(b.bitcast(arrays["out"].data, _I8.as_pointer()), [b.mul(r, ir.Constant(_I64, 4))])
                totals = [accs[c] for c in range(0, tile * chains, chains)]
                for c in range(1, chains):
                    totals = [b.fadd(total, accs[t * chains + c]) for t, total in enumerate(totals)]
                sums = _hsums8(b, totals * chains)  # tile 4: lanes 4-7 repeat lanes 0-3
                for t in range(tile):
                    total = b.extract_element(sums, ir.Constant(_I32, t))
                    dest = b.bitcast(b.gep(out, [b.mul(ir.Constant(_I64, t), out_stride)]), _F32.as_pointer())
                    b.store(b.fadd(b.load(dest), total), dest)
                return []

            first_row = blk.args["r0"]
            _loop(blk, b.sub(blk.args["r1"], first_row), [], lambda i, _: one_row(b.add(first_row, i), _))

        tile = cgutils.unpack_tuple(b, arrays["x"].shape, 3)[1]
        with b.if_else(b.icmp_signed("==", tile, ir.Constant(_I64, 8))) as (eight, four):
            with eight:
                rows(8)
            with four:
                rows(4)
        return blk.context.get_dummy_value()
    return _primitive(["out", "raw", "r0", "r1", "x", "n"], body)


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
        q = _nibbles32(row, _i64(b, o, 1, size - 16))
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
    d, dmin = row.halves(o)
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


def _k_quants(row, o, five_bit):
    """The 8 sub-blocks' quants (<32 x i8>, 0-15 or 0-31) of the Q4_K / Q5_K super-block at byte o: 4 × 32 bytes
    of nibbles at 16 (Q5_K: 48) (low: sub-block 2k, high: 2k + 1); Q5_K's fifth bits are the 32 bytes at 16, bit j
    for sub-block j."""
    b, blk = row.b, row.blk
    qs = 48 if five_bit else 16
    high = row.bytes(_i64(b, o, 1, 16), 32) if five_bit else None
    quants = []
    for k in range(4):
        for shift in (0, 4):
            q = row.bytes(_i64(b, o, 1, qs + 32 * k), 32, shift, 15)
            if five_bit:
                j = len(quants)
                bit = b.and_(b.lshr(high, blk.splat(ir.Constant(_I8, j), 32)), blk.splat(ir.Constant(_I8, 1), 32))
                q = b.or_(q, b.shl(bit, blk.splat(ir.Constant(_I8, 4), 32)))
            quants.append(q)
    return quants


def _k_quants_i32(row, o, five_bit):
    """_k_quants as <32 x i32>, for the float32 paths. Q4_K: each 32 bytes of nibbles widened from memory
    (_widened), masked for sub-block 2k and shifted for 2k + 1 (one-token dots 1.45x faster than widening the
    unpacked bytes); Q5_K: the unpacked bytes widened (its fifth bits cost 4x the operations on 32-bit lanes)."""
    b, blk = row.b, row.blk
    if five_bit:
        return [b.zext(q, _vec(_I32, 32)) for q in _k_quants(row, o, True)]
    quants = []
    for k in range(4):
        v = _widened(row, _i64(b, o, 1, 16 + 32 * k), 32)
        quants += [b.and_(v, blk.splat(ir.Constant(_I32, 15), 32)), b.lshr(v, blk.splat(ir.Constant(_I32, 4), 32))]
    return quants


def _q6_k_quants(row, o):
    """The 8 groups' unsigned 6-bit quants (<32 x i8>, 0-63; the value is q − 32), group 4h + g, of the Q6_K
    super-block at byte o (layout: _q6_k_block)."""
    b, blk = row.b, row.blk
    quants = []
    for h in range(2):
        high = row.bytes(_i64(b, o, 1, 128 + 32 * h), 32)
        for g in range(4):
            low = row.bytes(_i64(b, o, 1, 64 * h + 32 * (g & 1)), 32, 4 * (g >> 1), 15)
            top = b.and_(b.lshr(high, blk.splat(ir.Constant(_I8, 2 * g), 32)), blk.splat(ir.Constant(_I8, 3), 32))
            quants.append(b.or_(low, b.shl(top, blk.splat(ir.Constant(_I8, 4), 32))))
    return quants


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
    for j, q in enumerate(_k_quants(row, o, False)):
        isum = _int_dot_32(blk, q, row.y(_i64(b, i, 256, 32 * j)))
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
    factors = b.fmul(blk.splat(row.halves(_i64(b, o, 1, 206))[1], 8), row.at("xd", _i64(b, i, 8), _F32, 8))
    thirty_two = blk.splat(ir.Constant(_I8, 32), 32)
    for group, q in enumerate(_q6_k_quants(row, o)):
        y = row.y(_i64(b, i, 256, 32 * group))
        pairs = b.sub(_maddubs(blk, q, y), _maddubs(blk, thirty_two, y))
        sc = 2 * group
        scale16 = b.shuffle_vector(scales, undef, ir.Constant(_vec(_I32, 16), [sc] * 8 + [sc + 1] * 8))
        acc = row.fma(_madd(blk, pairs, scale16), row.lane(factors, group), acc)
    return acc


def _centered(row, q):
    """Q6_K quants (<32 x i8>, 0-63) as their values q − 32: <32 x i32>."""
    return row.b.sub(row.b.zext(q, _vec(_I32, 32)), row.blk.splat(ir.Constant(_I32, 32), 32))


def _one_token(step):
    """A block step on one accumulator as the list-wise step the row loops call."""
    return lambda row, i, accs: [step(row, i, accs[0])]


int8_rows_q8_0 = _rows_primitive(_one_token(_q8_0_block))
int8_rows_q4_0 = _rows_primitive(_one_token(_nibble_block(18, 8)))
int8_rows_q4_1 = _rows_primitive(_one_token(_nibble_block(20, 0)))
int8_rows_q4_k = _rows_primitive(_one_token(_q4_k_block))
int8_rows_q6_k = _rows_primitive(_one_token(_q6_k_block))


# --- Float32 row dots (the default path): the same row loops against float32 activations x ---
#
# float_rows_<type>(out, raw, r0, r1, x, xsum, n), one token: per block of 32 values, Σ_j q[j]·x[j] as a tree of
# 8-lane products, times the block's scale (the 32-value types with a min build their weights d·q + m once
# instead); the K-quants' min terms use xsum[b] = Σ_j x[32b + j]. A block step takes and returns its accumulator.
#
# float_tiles_<type>(out, raw, r0, r1, x, n), a tile of 8 or 4 tokens (a decode batch, a short
# prompt): <type>_weights(row, i) unpacks a block into its float32 weights once, and _rows_tiled_primitive
# multiplies them into every token's sums. Unpacking is most of a one-token dot, so sharing it is what makes a
# batch of 8 cost far less than 8 single tokens.


def _quarters(b, v):
    """<32 x float> → its four <8 x float> quarters."""
    undef = ir.Constant(v.type, ir.Undefined)
    return [b.shuffle_vector(v, undef, ir.Constant(_vec(_I32, 8), list(range(8 * c, 8 * c + 8)))) for c in range(4)]


def _dot(row, acc, q, xo, scales=None):
    """acc plus Σ_j w[j]·x[xo + j] (q: <32 x float>). scales: None when q already holds the weights, else
    (s_a, s_b), 8-lane scales of values 0-15 and 16-31 (the same one twice for a block with one scale). The four
    products are summed as a tree, scaled, and added to the accumulator: one add on its chain per block."""
    b = row.b
    m = [b.fmul(wq, xq, flags=_FMA) for wq, xq in zip(_quarters(b, q), _quarters(b, row.at("x", xo, _F32, 32)))]
    first, second = b.fadd(m[0], m[1], flags=_FMA), b.fadd(m[2], m[3], flags=_FMA)
    if scales is None:
        tree = b.fadd(first, second, flags=_FMA)
    elif scales[0] is scales[1]:
        tree = b.fmul(b.fadd(first, second, flags=_FMA), scales[0], flags=_FMA)
    else:
        tree = b.fadd(b.fmul(first, scales[0], flags=_FMA), b.fmul(second, scales[1], flags=_FMA), flags=_FMA)
    return b.fadd(acc, tree, flags=_FMA)


def _floats(row, q, signed=False):
    return (row.b.sitofp if signed else row.b.uitofp)(q, _vec(_F32, 32))


def _nibbles32(row, packed):
    """Q4_0/Q4_1: the 16 bytes at packed, low nibbles (values 0-15) then high (16-31): <32 x i8> (the int8 dots)."""
    return row.b.shuffle_vector(row.bytes(packed, 16, 0, 15), row.bytes(packed, 16, 4, 15),
                                ir.Constant(_vec(_I32, 32), list(range(32))))


def _widened(row, offset, n, signed=False):
    """The n bytes at offset (a multiple of 8) as <n x i32>, each 8 widened to 32-bit lanes straight from memory
    (one load-and-extend instruction each on x86, no byte shuffles: those share the FMA ports)."""
    b = row.b
    parts = [(b.sext if signed else b.zext)(row.at("row", _i64(b, offset, 1, 8 * h), _I8, 8), _vec(_I32, 8))
             for h in range(n // 8)]
    while len(parts) > 1:
        width = parts[0].type.count
        both = ir.Constant(_vec(_I32, 2 * width), list(range(2 * width)))
        parts = [b.shuffle_vector(parts[j], parts[j + 1], both) for j in range(0, len(parts), 2)]
    return parts[0]


def _nibbles32_wide(row, packed):
    """_nibbles32 as <32 x i32>: the 16 bytes widened (_widened), then masked (values 0-15) and shifted (16-31)."""
    b, blk = row.b, row.blk
    v = _widened(row, packed, 16)
    fifteen, four = blk.splat(ir.Constant(_I32, 15), 16), blk.splat(ir.Constant(_I32, 4), 16)
    return b.shuffle_vector(b.and_(v, fifteen), b.lshr(v, four), ir.Constant(_vec(_I32, 32), list(range(32))))


def _f_q8_0_block(row, i, acc):
    b = row.b
    o = _i64(b, i, 34)
    q = _floats(row, _widened(row, _i64(b, o, 1, 2), 32, signed=True), signed=True)
    d = row.blk.splat(row.f16(o), 8)
    return _dot(row, acc, q, _i64(b, i, 32), (d, d))


def _small_weights(size, five_bit, offset):
    """Q4_0 (18 bytes, v = d·(q − 8)), Q4_1 (20, d·q + m), Q5_0 (22, d·(q − 16)), Q5_1 (24, d·q + m): f16 d,
    [f16 m], [u32 of fifth bits: bit j for value j], 16 bytes of nibbles. weights(row, i) → [(i, <32 x float>)]."""
    def weights(row, i):
        b = row.b
        o = _i64(b, i, size)
        d, m = row.halves(o)  # m: the f16 after d, or (Q4_0, Q5_0) the first quant bytes, unused
        q = _nibbles32_wide(row, _i64(b, o, 1, size - 16))
        if five_bit:
            qh = row.blk.splat(row.at("row", _i64(b, o, 1, size - 20), _I32), 32)
            bits = b.and_(b.lshr(qh, ir.Constant(_vec(_I32, 32), list(range(32)))),
                          row.blk.splat(ir.Constant(_I32, 1), 32))
            q = b.or_(q, b.shl(bits, row.blk.splat(ir.Constant(_I32, 4), 32)))
        if offset:
            m = b.fmul(d, ir.Constant(_F32, -float(offset)))
        return [(i, b.fadd(b.fmul(_floats(row, q, signed=True), row.blk.splat(d, 32), flags=_FMA),
                           row.blk.splat(m, 32), flags=_FMA))]
    return weights


def _f_small_block(weights):
    """A 32-value type's block step: its weights built once, then dotted with every token."""
    def block(row, i, acc):
        ((_, w),) = weights(row, i)
        return _dot(row, acc, w, _i64(row.b, i, 32))
    return block


def _f_k_block(five_bit):
    """Q4_K (144 bytes) or Q5_K (176): f16 d, f16 dmin, the 6-bit scales and mins of _q4_k_scales, then the quants
    of _k_quants; sub-block j is d·sc_j·q − dmin·m_j."""
    size = 176 if five_bit else 144

    def block(row, i, acc):
        b, blk = row.b, row.blk
        o = _i64(b, i, size)
        d, dmin, scales, mins = _q4_k_scales(row, o)
        factors, dmins = b.fmul(blk.splat(d, 8), scales), b.fmul(blk.splat(dmin, 8), mins)
        acc = b.fsub(acc, b.fmul(dmins, row.at("xsum", _i64(b, i, 8), _F32, 8)))
        for j, q in enumerate(_k_quants_i32(row, o, five_bit)):
            scale = row.lane(factors, j)
            acc = _dot(row, acc, _floats(row, q, signed=True), _i64(b, i, 256, 32 * j), (scale, scale))
        return acc
    return block


def _f_q6_k_block(row, i, acc):
    """Q6_K (layout: _q6_k_block) against float32 x: values 0-15 and 16-31 of each group have their own scale."""
    b, blk = row.b, row.blk
    o = _i64(b, i, 210)
    scales = b.fmul(b.sitofp(row.at("row", _i64(b, o, 1, 192), _I8, 16), _vec(_F32, 16)),
                    blk.splat(row.halves(_i64(b, o, 1, 206))[1], 16))
    for group, q in enumerate(_q6_k_quants(row, o)):
        sc = 2 * group
        acc = _dot(row, acc, _floats(row, _centered(row, q), signed=True), _i64(b, i, 256, 32 * group),
                   (row.lane(scales, sc), row.lane(scales, sc + 1)))
    return acc


def _q8_0_weights(row, i):
    """Q8_0 block i as weights d·q: [(i, <32 x float>)]."""
    b = row.b
    o = _i64(b, i, 34)
    q = _floats(row, _widened(row, _i64(b, o, 1, 2), 32, signed=True), signed=True)
    return [(i, b.fmul(q, row.blk.splat(row.f16(o), 32)))]


def _k_weights(five_bit):
    """Q4_K / Q5_K super-block i (layout: _f_k_block) as weights d·sc_j·q − dmin·m_j: [(8i + j, <32 x float>)]."""
    size = 176 if five_bit else 144

    def weights(row, i):
        b, blk = row.b, row.blk
        o = _i64(b, i, size)
        d, dmin, scales, mins = _q4_k_scales(row, o)
        factors, dmins = b.fmul(blk.splat(d, 8), scales), b.fmul(blk.splat(dmin, 8), mins)
        groups = []
        for j, q in enumerate(_k_quants_i32(row, o, five_bit)):
            lane = ir.Constant(_I32, j)
            w = b.fsub(b.fmul(_floats(row, q, signed=True),
                              blk.splat(b.extract_element(factors, lane), 32), flags=_FMA),
                       blk.splat(b.extract_element(dmins, lane), 32), flags=_FMA)
            groups.append((_i64(b, i, 8, j), w))
        return groups
    return weights


def _q6_k_weights(row, i):
    """Q6_K super-block i (layout: _q6_k_block) as weights d·sc·(q − 32): [(8i + group, <32 x float>)]."""
    b, blk = row.b, row.blk
    o = _i64(b, i, 210)
    scales = b.fmul(b.sitofp(row.at("row", _i64(b, o, 1, 192), _I8, 16), _vec(_F32, 16)),
                    blk.splat(row.halves(_i64(b, o, 1, 206))[1], 16))
    undef = ir.Constant(scales.type, ir.Undefined)
    groups = []
    for group, q in enumerate(_q6_k_quants(row, o)):
        sc = 2 * group
        scale = b.shuffle_vector(scales, undef, ir.Constant(_vec(_I32, 32), [sc] * 16 + [sc + 1] * 16))
        groups.append((_i64(b, i, 8, group), b.fmul(_floats(row, _centered(row, q), signed=True), scale)))
    return groups


_FLOAT = ("x", "xsum")
_SMALL = {"q4_0": _small_weights(18, False, 8), "q4_1": _small_weights(20, False, 0),
          "q5_0": _small_weights(22, True, 16), "q5_1": _small_weights(24, True, 0)}
_FLOAT_STEPS = {"q8_0": _f_q8_0_block, **{name: _f_small_block(w) for name, w in _SMALL.items()},
                "q4_k": _f_k_block(False), "q5_k": _f_k_block(True), "q6_k": _f_q6_k_block}
_WEIGHTS = {"q8_0": _q8_0_weights, **_SMALL, "q4_k": _k_weights(False), "q5_k": _k_weights(True),
            "q6_k": _q6_k_weights}
float_rows_q8_0, float_rows_q4_0, float_rows_q4_1, float_rows_q5_0, float_rows_q5_1, float_rows_q4_k, \
    float_rows_q5_k, float_rows_q6_k = (_rows_primitive(_one_token(step), _FLOAT) for step in _FLOAT_STEPS.values())
float_tiles_q8_0, float_tiles_q4_0, float_tiles_q4_1, float_tiles_q5_0, float_tiles_q5_1, float_tiles_q4_k, \
    float_tiles_q5_k, float_tiles_q6_k = (_rows_tiled_primitive(w) for w in _WEIGHTS.values())
