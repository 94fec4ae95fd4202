"""kernels.quants against gguf-py's reference (bit-exact), plus quantize round trips and QTensor."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GQ
from gguf import quants as gq

from engine.errors import UnsupportedModelError
from kernels.qtensor import QTensor
from kernels.quants import SUPPORTED, GGMLType, block_shape, dequantize, quantize
from ggml_quants import ggml_quantize
from quant_blocks import K_QUANTS, gguf_bytes, make_blocks


def _reference(t: GGMLType, raw: np.ndarray) -> np.ndarray:
    return gq.dequantize(np.ascontiguousarray(raw), GQ(int(t)))


def _assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == np.float32 and b.dtype == np.float32
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def _row_lengths(t: GGMLType) -> tuple[int, ...]:
    return (256, 512) if t in K_QUANTS else (32, 96, 256)


@pytest.mark.parametrize("t", sorted(SUPPORTED), ids=lambda t: t.name)
def test_dequantize_matches_gguf(t):
    rng = np.random.default_rng(int(t))
    for n_rows in (1, 3, 7):
        for row_elems in _row_lengths(t):
            raw = make_blocks(t, n_rows, row_elems, rng)
            got = dequantize(raw, t)
            assert got.shape == (n_rows, row_elems)
            _assert_bits_equal(got, _reference(t, raw))


@pytest.mark.parametrize("t", [GGMLType.F16, GGMLType.BF16, GGMLType.F32], ids=lambda t: t.name)
def test_float_types_arbitrary_bits(t):
    """Every bit pattern (inf, NaN payloads, subnormals) converts exactly like gguf-py."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(5, 64 * block_shape(t)[1]), dtype=np.uint8)
    if t is GGMLType.F16:  # also every f16 bit pattern
        raw = np.arange(1 << 16, dtype=np.uint16).astype("<u2").view(np.uint8).reshape(16, -1)
    _assert_bits_equal(dequantize(raw, t), _reference(t, raw))


@pytest.mark.parametrize("t", sorted(SUPPORTED), ids=lambda t: t.name)
def test_strided_and_batched_input(t):
    rng = np.random.default_rng(100 + int(t))
    row_elems = 512 if t in K_QUANTS else 64
    big = make_blocks(t, 12, row_elems, rng)
    every_other = big[1::2]  # non-contiguous rows, like picking rows out of a memmap
    assert not every_other.flags.c_contiguous
    _assert_bits_equal(dequantize(every_other, t), _reference(t, every_other))
    batched = big.reshape(2, 3, 2, -1)[:, ::2]  # leading batch dims, non-contiguous too
    got = dequantize(batched, t)
    assert got.shape == (2, 2, 2, row_elems)
    _assert_bits_equal(got, _reference(t, batched.reshape(-1, big.shape[1])).reshape(got.shape))


def test_dequantize_memmap(tmp_path):
    t = GGMLType.Q4_K
    raw = make_blocks(t, 6, 256, np.random.default_rng(7))
    path = tmp_path / "w.bin"
    raw.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=raw.shape)
    _assert_bits_equal(dequantize(mm[::3], t), _reference(t, raw[::3]))


def test_dequantize_rejects_bad_row_bytes():
    with pytest.raises(ValueError):
        dequantize(np.zeros((2, 35), np.uint8), GGMLType.Q8_0)
    with pytest.raises(ValueError):
        dequantize(np.zeros((2, 34), np.int8), GGMLType.Q8_0)


QUANTIZABLE = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q5_0]


@pytest.mark.parametrize("t", QUANTIZABLE, ids=lambda t: t.name)
def test_quantize_matches_gguf(t):
    rng = np.random.default_rng(200 + int(t))
    x = rng.standard_normal((7, 256)).astype(np.float32)
    x[0] *= 1e-3
    x[1] = 0.0  # all-zero blocks (d == 0)
    x[2, :32] = np.float32(0.5) * np.arange(-16, 16, dtype=np.float32)  # exact ties after scaling
    x[3, 5] = -x[3].max() * 2  # largest magnitude negative
    x[4, :32] = 3.0  # +max and -max tie: first occurrence wins
    x[4, 10] = -3.0
    x[5, :32] = np.arange(32, dtype=np.float32) - np.float32(15.5)  # Q8_0 ties: d = 1 exactly
    x[5, 0] = -127.0
    got = quantize(x, t)
    assert got.dtype == np.uint8 and got.shape == (7, 256 // block_shape(t)[0] * block_shape(t)[1])
    np.testing.assert_array_equal(got, gguf_bytes(t, x))
    # batched input
    xb = x[:6].reshape(2, 3, 256)
    np.testing.assert_array_equal(quantize(xb, t), got[:6].reshape(2, 3, -1))


def test_quantize_bf16_specials_match_gguf():
    bits = np.array([0x7F800000, 0xFF800000, 0x7F800001, 0xFFFFFFFF, 0x7FC00000, 0x00000001,
                     0x3F808000, 0x3F818000, 0x7F7FFFFF, 0xFF7FFFFF, 0x80000000, 0], dtype=np.uint32)
    x = bits.view(np.float32).reshape(1, -1)
    np.testing.assert_array_equal(quantize(x, GGMLType.BF16), gguf_bytes(GGMLType.BF16, x))


@pytest.mark.parametrize("t, levels", [(GGMLType.Q8_0, 127), (GGMLType.Q4_0, 8)], ids=["Q8_0", "Q4_0"])
def test_quantize_round_trip_error(t, levels):
    rng = np.random.default_rng(300 + int(t))
    x = rng.standard_normal((5, 1024)).astype(np.float32) * 3
    y = dequantize(quantize(x, t), t)
    err = np.abs(y - x).reshape(5, -1, 32).max(axis=-1)
    absmax = np.abs(x).reshape(5, -1, 32).max(axis=-1)
    # Half a step (d = absmax/levels), or a whole step for Q4_0 whose top level (+8) is clipped to +7;
    # plus up to `levels` times the f16 rounding error of d (relative 2**-11).
    step = absmax / levels
    bound = step * ((0.5 if t is GGMLType.Q8_0 else 1.0) + levels * 2.0**-11) * 1.001
    assert np.all(err <= bound)


def _k_quant_inputs() -> np.ndarray:
    """[rows, 1024] float32 with the cases the K-quant searches branch on."""
    rng = np.random.default_rng(500)
    x = rng.standard_normal((24, 1024)).astype(np.float32)
    x[1] = rng.standard_t(2, 1024)  # heavy tails
    x[2] = np.abs(x[2]) + 0.5  # all positive: min clamped to 0
    x[3] = -np.abs(x[3]) - 0.5  # all negative
    x[4] *= 1e-4
    x[5] *= 1e3
    x[6] *= rng.random(1024) < 0.1  # mostly zeros: zero sub-blocks inside non-zero blocks
    x[7] = 0.0  # all-zero blocks
    x[8, :256] = 1.5  # constant block (max == min)
    x[8, 256:512:32] = 7.0  # one spike per sub-block
    x[9] = np.repeat(rng.standard_normal(64), 16)  # constant sub-blocks of 16
    x[10] *= np.exp(2 * rng.standard_normal(1024)).astype(np.float32)  # scales vary widely within a block
    x[11] = np.round(x[11] * 4) / 4  # exact ties after scaling
    return x


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_0], ids=lambda t: t.name)
def test_quantize_matches_llama_cpp(t):
    """Byte for byte what llama.cpp's quantizer (ggml_quantize_chunk, no importance matrix) writes."""
    x = _k_quant_inputs()
    np.testing.assert_array_equal(quantize(x, t), ggml_quantize(x, t))
    np.testing.assert_array_equal(quantize(x.reshape(2, 12, 1024), t), ggml_quantize(x, t).reshape(2, 12, -1))


def test_k_quant_round_trip_error():
    """Per-block error bounds of the formats, checked on our quantizer and on llama.cpp's alike.

    Q6_K: q in [-32, 31] times d_j ~ amax/31.1 at worst among the searched scales: half a step is amax_sub/62;
    the 8-bit sub-block scales against d = max_scale/128 add up to 32 * d/2 ~ amax_block/249.
    Q4_K: 16 levels over the sub-block's range [min(x, 0), max(x)]: half a step is range/30; the 6-bit scales and
    mins (d = max_scale/63, dmin = max_min/63) add up to 15 * d/2 + dmin/2 ~ range_block/63.
    Bounds below are those with a 25% margin for the least-squares scale refinement.
    """
    rng = np.random.default_rng(600)
    x = np.concatenate([rng.standard_normal((8, 1024)), rng.standard_t(2, (8, 1024)),
                        np.abs(rng.standard_normal((8, 1024))) + 0.5,
                        rng.standard_normal((8, 1024)) * np.exp(2 * rng.standard_normal((8, 1024)))]).astype(np.float32)
    amax16 = np.abs(x).reshape(-1, 16).max(axis=1)
    amax_block = np.repeat(np.abs(x).reshape(-1, 256).max(axis=1), 16)
    sub = x.reshape(-1, 32)
    range32 = sub.max(axis=1) - np.minimum(sub.min(axis=1), 0)
    range_block = np.repeat(range32.reshape(-1, 8).max(axis=1), 8)
    bounds = {GGMLType.Q6_K: (16, 1.25 * (amax16 / 62 + amax_block / 249)),
              GGMLType.Q4_K: (32, 1.25 * (range32 / 30 + range_block / 63))}
    for t, (n, bound) in bounds.items():
        for raw in (quantize(x, t), ggml_quantize(x, t)):
            err = np.abs(dequantize(raw, t) - x).reshape(-1, n).max(axis=1)
            assert np.all(err <= bound), t.name
        ours = np.abs(dequantize(quantize(x, t), t) - x).mean()
        theirs = np.abs(dequantize(ggml_quantize(x, t), t) - x).mean()
        assert ours <= theirs * (1 + 1e-6), t.name


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name)
def test_k_quant_bytes_decode_with_gguf(t):
    """gguf-py reads our K-quant bytes as we do."""
    raw = quantize(_k_quant_inputs(), t)
    _assert_bits_equal(dequantize(raw, t), _reference(t, raw).reshape(raw.shape[0], -1))


def test_quantize_unsupported():
    with pytest.raises(UnsupportedModelError, match="Q5_K"):
        quantize(np.zeros((1, 256), np.float32), GGMLType.Q5_K)
    with pytest.raises(ValueError):
        quantize(np.zeros((1, 128), np.float32), GGMLType.Q4_K)
    with pytest.raises(UnsupportedModelError, match="Q2_K"):
        quantize(np.zeros((1, 256), np.float32), GGMLType.Q2_K)


def test_block_shapes_match_gguf():
    import gguf
    for t in SUPPORTED:
        assert block_shape(t) == gguf.GGML_QUANT_SIZES[GQ(int(t))]
    assert block_shape(GGMLType.Q4_K) == (256, 144)
    assert block_shape(1) == (1, 2)


@pytest.mark.parametrize("bad, name", [(GGMLType.Q2_K, "Q2_K"), (10, "Q2_K"), (99, "99"), (GGMLType.Q8_1, "Q8_1")])
def test_block_shape_unsupported(bad, name):
    with pytest.raises(UnsupportedModelError, match=name) as info:
        block_shape(bad)
    assert "Q4_K" in str(info.value)  # lists what is supported
    with pytest.raises(UnsupportedModelError):
        dequantize(np.zeros((1, 84), np.uint8), bad)


def test_ggml_type_names():
    assert GGMLType.name_of(12) == "Q4_K"
    assert "99" in GGMLType.name_of(99)
    assert int(GGMLType.BF16) == 30 and int(GGMLType.Q8_K) == 15


@pytest.mark.parametrize("t", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.F16], ids=lambda t: t.name)
def test_qtensor(t):
    rng = np.random.default_rng(400 + int(t))
    n, k = 9, 512
    raw = make_blocks(t, n, k, rng)
    qt = QTensor(raw, int(t), (n, k))
    assert qt.ggml_type is t and qt.type_name == t.name and qt.nbytes == raw.nbytes
    ref = _reference(t, raw).reshape(n, k)
    _assert_bits_equal(qt.dequantize(), ref)
    _assert_bits_equal(qt.rows(slice(2, 7, 2)), ref[2:7:2])
    idx = np.array([8, 0, 3, 3])
    _assert_bits_equal(qt.rows(idx), ref[idx])
    with pytest.raises(ValueError):
        QTensor(raw[:, :-1], int(t), (n, k))
    with pytest.raises(ValueError):
        QTensor(raw, int(t), (n + 1, k))
    with pytest.raises(ValueError):
        QTensor(raw.view(np.int8), int(t), (n, k))
