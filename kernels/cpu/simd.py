"""Explicit-vector building blocks for the fused mat-vec, written as numba intrinsics in LLVM IR.

numba's auto-vectorizer gives up on the unpack-and-accumulate loops of the quantized types (it keeps the 32
running sums behind alias checks and falls back to scalar code); these emit the vector code directly: load a
block's bytes as one vector, unpack with vector shifts and masks, convert to float32, and multiply-add into the
float32 sums `acc`. LLVM lowers the generic vectors to what the CPU has (AVX2, AVX-512, NEON).

Every `fma_*` does, for lanes j < n:   acc[j] += (d · q_j + m) · x[xo + j]
where q_j is the j-th integer unpacked from `row` (uint8) as its docstring says. Arguments after `acc, row` are
byte offsets and shifts (int), the x array, its offset xo, and the float32 scale d and offset m.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_F32, _I8, _I32 = ir.FloatType(), ir.IntType(8), ir.IntType(32)
_FMA = ("contract",)  # let LLVM fuse multiply-adds


def _splat(builder, value, n):
    """<n x T> with every lane = value."""
    vt = ir.VectorType(value.type, n)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _pointer(context, builder, arrtype, arr, offset, elem, n):
    """Pointer to <n x elem> at arr[offset]."""
    data = context.make_array(arrtype)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), ir.VectorType(elem, n).as_pointer())


def _field(context, builder, arrtype, arr, offset, shift, mask, n):
    """(row[offset : offset+n] >> shift) & mask, as <n x i32>; shift is a runtime int. Shift and mask act on the
    bytes, before widening."""
    v = builder.load(_pointer(context, builder, arrtype, arr, offset, _I8, n), align=1)
    v = builder.lshr(v, _splat(builder, builder.trunc(shift, _I8), n))
    v = builder.and_(v, _splat(builder, ir.Constant(_I8, mask), n))
    return builder.zext(v, ir.VectorType(_I32, n))


def _make(n, unpack, n_offsets):
    """An intrinsic fma(acc, row, *offsets_and_shifts[n_offsets], x, xo, d, m) with q = unpack(...)."""
    def sig(*arg_types):
        return types.void(*arg_types), codegen

    typer = {  # numba needs a fixed argument list
        1: lambda typingctx, acc, row, o, x, xo, d, m: sig(acc, row, o, x, xo, d, m),
        2: lambda typingctx, acc, row, o, s, x, xo, d, m: sig(acc, row, o, s, x, xo, d, m),
        4: lambda typingctx, acc, row, o, s, h, hs, x, xo, d, m: sig(acc, row, o, s, h, hs, x, xo, d, m),
    }[n_offsets]

    def codegen(context, builder, sig, args):
        acc, row, *ints = args[:2 + n_offsets]
        x, xo, d, m = args[2 + n_offsets:]
        q = unpack(context, builder, sig.args[1], row, ints, n)
        q = builder.sitofp(q, ir.VectorType(_F32, n))
        w = builder.fadd(builder.fmul(q, _splat(builder, d, n), flags=_FMA), _splat(builder, m, n), flags=_FMA)
        xv = builder.load(_pointer(context, builder, sig.args[2 + n_offsets], x, xo, _F32, n), align=4)
        acc_ptr = _pointer(context, builder, sig.args[0], acc, ir.Constant(ir.IntType(64), 0), _F32, n)
        total = builder.fadd(builder.load(acc_ptr, align=4), builder.fmul(w, xv, flags=_FMA), flags=_FMA)
        builder.store(total, acc_ptr, align=4)
        return context.get_dummy_value()

    typer.__name__ = unpack.__name__
    return intrinsic(typer)


def _int8(context, builder, rowtype, row, ints, n):
    """q_j = int8 row[o + j]."""
    (o,) = ints
    return builder.sext(builder.load(_pointer(context, builder, rowtype, row, o, _I8, n), align=1),
                        ir.VectorType(_I32, n))


def _nibble(context, builder, rowtype, row, ints, n):
    """q_j = (row[o + j] >> shift) & 15."""
    o, shift = ints
    return _field(context, builder, rowtype, row, o, shift, 15, n)


def _nibble_high_bit(context, builder, rowtype, row, ints, n):
    """q_j = ((row[o + j] >> shift) & 15) | (((row[h + j] >> hshift) & 1) << 4)   (Q5_K)."""
    o, shift, h, hshift = ints
    lo = _field(context, builder, rowtype, row, o, shift, 15, n)
    hi = _field(context, builder, rowtype, row, h, hshift, 1, n)
    return builder.or_(lo, builder.shl(hi, _splat(builder, ir.Constant(_I32, 4), n)))


def _six_bit(context, builder, rowtype, row, ints, n):
    """q_j = ((row[o + j] >> shift) & 15) | (((row[h + j] >> hshift) & 3) << 4)   (Q6_K, before the −32)."""
    o, shift, h, hshift = ints
    lo = _field(context, builder, rowtype, row, o, shift, 15, n)
    hi = _field(context, builder, rowtype, row, h, hshift, 3, n)
    return builder.or_(lo, builder.shl(hi, _splat(builder, ir.Constant(_I32, 4), n)))


fma_int8_32 = _make(32, _int8, 1)
fma_nibble_32 = _make(32, _nibble, 2)
fma_nibble_16 = _make(16, _nibble, 2)
fma_nibble_high_bit_32 = _make(32, _nibble_high_bit, 4)
fma_six_bit_16 = _make(16, _six_bit, 4)
