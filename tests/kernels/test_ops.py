"""kernels.ops against PyTorch / transformers references."""
import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from kernels import ops
from kernels.qtensor import QTensor
from kernels.quants import GGMLType
from reference import torch_attention

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def test_rms_norm_matches_torch():
    x, w = randn(5, 96) * 3, randn(96)
    ref = F.rms_norm(t(x), (96,), t(w), eps=1e-5).numpy()
    np.testing.assert_allclose(ops.rms_norm(x, w, 1e-5), ref, rtol=1e-5, atol=1e-5)


def test_swiglu_and_silu_match_torch_including_extremes():
    g, u = randn(7, 33) * 4, randn(7, 33)
    g[0, :3] = [-200.0, 200.0, 0.0]
    np.testing.assert_allclose(ops.swiglu(g, u), (F.silu(t(g)) * t(u)).numpy(), rtol=1e-5, atol=1e-6)


def test_geglu_and_gelu_tanh_match_torch_including_extremes():
    g, u = randn(7, 33) * 4, randn(7, 33)
    g[0, :3] = [-200.0, 200.0, 0.0]
    ref = F.gelu(t(g), approximate="tanh")
    np.testing.assert_allclose(ops.gelu_tanh(g), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.geglu(g, u), (ref * t(u)).numpy(), rtol=1e-5, atol=1e-6)


def test_softmax_matches_torch_with_masked_entries():
    x = randn(3, 11) * 5
    x[1, 4:] = -np.inf
    np.testing.assert_allclose(ops.softmax(x), torch.softmax(t(x), -1).numpy(), rtol=1e-5, atol=1e-7)


def hf_inv_freq(head_dim, theta, scaling=None):
    params = {"rope_type": "default", "rope_theta": theta} if scaling is None else {"rope_theta": theta, **scaling}
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, rope_parameters=params)
    if scaling is None:
        return (1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)).numpy()
    inv, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    return inv.double().numpy()


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.mark.parametrize("scaling", [None, LLAMA3, {"rope_type": "linear", "factor": 4.0}])
def test_rope_inv_freq_matches_transformers(scaling):
    ours = ops.rope_inv_freq(64, 500000.0, scaling)
    np.testing.assert_allclose(ours, hf_inv_freq(64, 500000.0, scaling), rtol=1e-6)
    if scaling is LLAMA3:  # the scaling must really change some frequencies and keep others
        plain = ops.rope_inv_freq(64, 500000.0)
        assert np.any(np.isclose(ours, plain)) and np.any(ours < plain * 0.9)


def test_rope_freq_factors_divide_frequencies():
    factors = np.linspace(1, 8, 16)
    np.testing.assert_allclose(ops.rope_inv_freq(32, 1e4, freq_factors=factors), ops.rope_inv_freq(32, 1e4) / factors)


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_rope_half_split_matches_transformers(scaling):
    T, H, Dh = 9, 3, 64
    x = randn(T, H, Dh)
    positions = np.arange(5, 5 + T)
    inv = ops.rope_inv_freq(Dh, 500000.0, scaling)
    cos, sin = ops.rope_cos_sin(positions, inv)
    freqs = t(positions)[:, None] * t(hf_inv_freq(Dh, 500000.0, scaling))[None, :]
    emb = torch.cat([freqs, freqs], -1)
    xt = t(x).transpose(0, 1)[None]  # [1, H, T, Dh]
    ref, _ = apply_rotary_pos_emb(xt, xt, emb.cos()[None], emb.sin()[None])
    np.testing.assert_allclose(ops.rope(x, cos, sin, interleaved=False), ref[0].transpose(0, 1).numpy(), atol=2e-5)


def test_rope_interleaved_matches_complex_rotation():
    """Meta's original Llama RoPE: consecutive pairs as complex numbers times e^{i·pos·θ}."""
    T, H, Dh = 6, 2, 32
    x = randn(T, H, Dh)
    positions = np.arange(T) * 3
    inv = ops.rope_inv_freq(Dh, 10000.0)
    cos, sin = ops.rope_cos_sin(positions, inv)
    xc = torch.view_as_complex(t(x).reshape(T, H, Dh // 2, 2).contiguous())
    rot = torch.polar(torch.ones(T, Dh // 2, dtype=torch.float64), t(positions)[:, None] * t(inv)[None, :])
    ref = torch.view_as_real(xc * rot[:, None, :]).reshape(T, H, Dh).numpy()
    np.testing.assert_allclose(ops.rope(x, cos, sin, interleaved=True), ref, atol=2e-5)


def test_interleaved_rope_on_permuted_weights_equals_half_split_rope():
    """llama.cpp's converter permutes Llama Q/K rows so that interleaved RoPE reproduces HF's half-split RoPE."""
    H, Dh, D, T = 4, 16, 24, 5
    w = randn(H * Dh, D)
    permuted = w.reshape(H, 2, Dh // 2, D).swapaxes(1, 2).reshape(H * Dh, D)  # convert_hf_to_gguf's permute
    x = randn(T, D)
    cos, sin = ops.rope_cos_sin(np.arange(T), ops.rope_inv_freq(Dh, 1e4))
    half = ops.rope((x @ w.T).reshape(T, H, Dh), cos, sin, interleaved=False)
    inter = ops.rope((x @ permuted.T).reshape(T, H, Dh), cos, sin, interleaved=True)
    np.testing.assert_allclose(inter, _unpermute_heads(half), atol=1e-5)


def _unpermute_heads(y):
    """Reorder each head's features (i, i + Dh/2) → (2i, 2i + 1), the order of permuted outputs."""
    T, H, Dh = y.shape
    return y.reshape(T, H, 2, Dh // 2).swapaxes(2, 3).reshape(T, H, Dh)


@pytest.mark.parametrize("T,start,H,H_kv,window", [
    (7, 0, 4, 2, None),   # prefill, GQA
    (1, 12, 6, 2, None),  # decode against the cache
    (5, 9, 4, 4, None),   # a chunk after a cached prefix, MHA
    (3, 0, 3, 1, None),   # odd lengths, MQA
    (9, 4, 4, 2, 4),      # sliding window
    (1, 12, 4, 2, 5),     # decode with the window shorter than the cache
])
def test_attention_matches_torch_sdpa(T, start, H, H_kv, window):
    Dh = 32
    q, k, v = randn(T, H, Dh), randn(H_kv, start + T, Dh), randn(H_kv, start + T, Dh)
    np.testing.assert_allclose(ops.attention(q, k, v, start, window), torch_attention(q, k, v, start, window),
                               atol=2e-5)


def test_attention_scale_replaces_inverse_sqrt_head_dim():
    """Gemma 3 scales scores by query_pre_attn_scalar ** -0.5 instead of 1/sqrt(Dh)."""
    q, k, v = randn(6, 4, 32), randn(2, 9, 32), randn(2, 9, 32)
    np.testing.assert_allclose(ops.attention(q, k, v, 3, 4, scale=0.3), torch_attention(q, k, v, 3, 4, scale=0.3),
                               atol=2e-5)


def test_matmul_transb_f32():
    x, w = randn(3, 40), randn(17, 40)
    np.testing.assert_allclose(ops.matmul_transb(x, w), (t(x) @ t(w).T).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.F16])
@pytest.mark.parametrize("T", [1, 5])
def test_matmul_transb_quantized_in_tiles(qtype, T, monkeypatch):
    """The NumPy reference path (kernels/cpu is tested against the same references in test_cpu_kernels)."""
    monkeypatch.setattr(ops.cpu, "available", False)
    monkeypatch.setattr(ops, "TILE_ELEMS", 64 * 3)  # force several (uneven) tiles
    n, k = 13, 64
    w = randn(n, k)
    raw = np.frombuffer(gguf.quants.quantize(w, gguf.GGMLQuantizationType(int(qtype))).tobytes(),
                        np.uint8).reshape(n, -1)
    ref_w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qtype)))
    x = randn(T, k)
    got = ops.matmul_transb(x, QTensor(raw, qtype, (n, k)))
    np.testing.assert_allclose(got, (t(x) @ t(ref_w).T).numpy(), rtol=1e-5, atol=1e-4)


def test_embedding_rows_from_quantized_table(monkeypatch):
    monkeypatch.setattr(ops.cpu, "available", False)
    table = randn(10, 64)
    raw = np.frombuffer(gguf.quants.quantize(table, gguf.GGMLQuantizationType.Q8_0).tobytes(), np.uint8)
    raw = raw.reshape(10, -1)
    ids = np.array([3, 0, 3, 9])
    ref = F.embedding(torch.from_numpy(ids), t(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)))
    np.testing.assert_array_equal(ops.embedding(ids, QTensor(raw, GGMLType.Q8_0, (10, 64))), ref.numpy())
    np.testing.assert_array_equal(ops.embedding(ids, table), table[ids])
