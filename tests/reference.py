"""Independent reference outputs for the model tests (no imports from engine/, kernels/ or models/).

    hf_logits(hf_dir, ids)      -> float64 [T, V]   transformers, float64, eager attention, one forward
    gguf_logits(gguf_path, ids) -> float64 [T, V]   transformers (float64) on the gguf-py-dequantized weights
    hf_greedy(path, ids, n)     -> list[int]        plain argmax loop over full forwards (no generate())
    torch_attention(q, k, v, start, window, scale) -> float64 [T, H, Dh]   torch SDPA with transformers' masks

`path` for hf_greedy is an HF model directory or a .gguf file.

The GGUF route: we do NOT use `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`: transformers 5.23
drops the llama3 `rope_freqs.weight` tensor and does not rebuild rope scaling for llama (only for gpt-oss), and
for qwen3 it ignores `attention.key_length` (it only works when head_dim happens to be 128). Instead:
  * `gguf.GGUFReader` reads the metadata and tensors; `gguf.quants.dequantize` turns every tensor into float32;
  * a transformers config (LlamaConfig / Qwen2Config / Qwen3Config) is built from the GGUF metadata;
  * GGUF tensor names are mapped back to HF names; llama's Q/K rows are un-permuted (llama.cpp stores them in
    the interleaved-pair RoPE layout; qwen's are stored as in HF);
  * `rope_freqs.weight` (llama3 scaling baked into per-frequency divisors) is applied by overwriting the rotary
    embedding's `inv_freq` with base_inv_freq / rope_freqs, which is exactly what llama.cpp computes;
  * the model runs in float64 with eager attention.
  * gemma3: llama.cpp's converter wrote every norm weight as 1 + w (transformers' Gemma3RMSNorm scales by 1 + w),
    so 1 is subtracted back; the GGUF lacks query_pre_attn_scalar and the sliding-window layer pattern, so both
    are what llama.cpp assumes (head_dim, or hidden / heads for the 62-layer 27B; every 6th layer global unless
    `gemma3.attention.sliding_window_pattern` says otherwise); local layers use `rope.freq_base_swa` (default
    10000), global ones `rope.freq_base` and the linear `rope.scaling.factor`.
Models are cached in-process (lru_cache), keyed by the resolved path.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["hf_logits", "gguf_logits", "hf_greedy", "hf_model", "gguf_model", "gguf_state_dict"]


def _torch():
    import torch

    torch.set_grad_enabled(False)
    return torch


# ---------------------------------------------------------------------------------------------------------------
# HF directory
@functools.lru_cache(maxsize=8)
def _hf_model_cached(hf_dir: str):
    torch = _torch()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    model = model.double().eval()
    return model


def hf_model(hf_dir):
    """The cached transformers model (float64, eager attention) for an HF directory."""
    return _hf_model_cached(str(Path(hf_dir).resolve()))


# ---------------------------------------------------------------------------------------------------------------
# GGUF file
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GEMMA3_LAYER_MAP = {
    **_LAYER_MAP,
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
_SUPPORTED = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
              "gemma3": "Gemma3ForCausalLM"}


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute (rows grouped per head: interleaved pairs -> halves)."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


@functools.lru_cache(maxsize=4)
def _gguf_state_cached(path: str):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch not in _SUPPORTED:
        raise NotImplementedError(f"reference GGUF route supports {sorted(_SUPPORTED)}, not {arch!r}")
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_head = int(g("attention.head_count"))
    n_kv = int(g("attention.head_count_kv", n_head))
    hidden = int(g("embedding_length"))
    head_dim = int(g("attention.key_length", g("rope.dimension_count", hidden // n_head)))
    meta = dict(
        arch=arch, hidden_size=hidden, intermediate_size=int(g("feed_forward_length")),
        num_hidden_layers=int(g("block_count")), num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=head_dim, rms_norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        rope_theta=float(g("rope.freq_base", 10000.0)), max_position_embeddings=int(g("context_length", 4096)),
    )
    rope_dim = g("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise NotImplementedError("partial rotary embeddings are not handled by this reference")
    scaling_type = g("rope.scaling.type")
    if arch == "gemma3":
        layers = meta["num_hidden_layers"]
        pattern = g("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            meta["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            meta["layer_types"] = ["sliding_attention" if (i + 1) % int(pattern) else "full_attention"
                                   for i in range(layers)]
        meta["sliding_window"] = int(g("attention.sliding_window"))
        meta["query_pre_attn_scalar"] = hidden // n_head if layers == 62 else head_dim
        meta["final_logit_softcapping"] = g("final_logit_softcapping")
        meta["rope_local_base_freq"] = float(g("rope.freq_base_swa", 10000.0))
        if scaling_type == "linear":
            meta["rope_scaling"] = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
        elif scaling_type not in (None, "none"):
            raise NotImplementedError(f"rope scaling {scaling_type!r} is not handled by this reference")
    elif scaling_type not in (None, "none"):
        raise NotImplementedError(f"rope scaling {scaling_type!r} is not handled by this reference")

    sd: dict[str, np.ndarray] = {}
    rope_freqs = None
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists ne0 (the row length) first
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)  # a writable copy
        name = t.name
        if name == "rope_freqs.weight":
            rope_freqs = w.copy()
            continue
        if arch == "gemma3" and name.endswith("norm.weight"):
            w = w - 1.0
        if name in _GLOBAL_MAP:
            sd[_GLOBAL_MAP[name]] = w
            continue
        layer_map = _GEMMA3_LAYER_MAP if arch == "gemma3" else _LAYER_MAP
        parts = name.split(".", 2)
        if parts[0] != "blk" or parts[2] not in layer_map:
            raise KeyError(f"unexpected GGUF tensor {name}")
        suffix = parts[2]
        if arch == "llama" and suffix.startswith(("attn_q.", "attn_k.")):
            w = _unpermute(w, n_head if suffix.startswith("attn_q.") else n_kv)
        sd[f"model.layers.{parts[1]}.{layer_map[suffix]}"] = w
    meta["tie_word_embeddings"] = "lm_head.weight" not in sd
    meta["attention_bias"] = any(k.endswith("q_proj.bias") for k in sd)
    meta["vocab_size"] = sd["model.embed_tokens.weight"].shape[0]
    return meta, sd, rope_freqs


def gguf_state_dict(gguf_path):
    """(meta, {hf_name: float32 array}, rope_freqs or None) from a GGUF file, dequantized by gguf-py."""
    return _gguf_state_cached(str(Path(gguf_path).resolve()))


@functools.lru_cache(maxsize=4)
def _gguf_model_cached(path: str):
    torch = _torch()
    import transformers

    meta, sd, rope_freqs = _gguf_state_cached(path)
    arch = meta["arch"]
    cfg_kw = {k: v for k, v in meta.items() if k != "arch"}
    if arch == "llama":
        cfg = transformers.LlamaConfig(**cfg_kw, mlp_bias=False)
    elif arch == "qwen2":
        cfg_kw.pop("attention_bias")
        cfg_kw.pop("head_dim")  # Qwen2 has no head_dim setting: it is hidden / heads
        if meta["head_dim"] * meta["num_attention_heads"] != meta["hidden_size"]:
            raise NotImplementedError("qwen2 with head_dim != hidden / heads")
        cfg = transformers.Qwen2Config(**cfg_kw, use_sliding_window=False)
    elif arch == "gemma3":
        cfg_kw.pop("attention_bias")
        cfg = transformers.Gemma3TextConfig(**cfg_kw)
    else:
        cfg = transformers.Qwen3Config(**cfg_kw, use_sliding_window=False)
    cfg._attn_implementation = "eager"
    cls = getattr(transformers, _SUPPORTED[arch])
    with torch.device("meta"):
        model = cls(cfg)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.float64) for k, v in sd.items()}
    if meta["tie_word_embeddings"]:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    # Non-persistent buffers (rotary inv_freq) are still on the meta device: rebuild the rotary embedding.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    if arch == "gemma3":  # the embedding scale is a non-persistent buffer too
        model.model.embed_tokens.embed_scale = torch.tensor(meta["hidden_size"] ** 0.5)
    if rope_freqs is not None:
        # llama.cpp: theta_i = pos * base^(-2i/d) / rope_freqs[i]  (float32, like transformers' default init)
        rot = model.model.rotary_emb
        d = meta["head_dim"]
        base = 1.0 / (meta["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        inv = base / torch.from_numpy(rope_freqs.astype(np.float32))
        rot.inv_freq = inv
        rot.original_inv_freq = inv.clone()
    model = model.double().eval()
    return model


def gguf_model(gguf_path):
    """The cached transformers model (float64, eager) built from a GGUF file's dequantized weights."""
    return _gguf_model_cached(str(Path(gguf_path).resolve()))


# ---------------------------------------------------------------------------------------------------------------
def _model_for(path):
    p = Path(path)
    if p.is_dir():
        return hf_model(p)
    if p.suffix == ".gguf":
        return gguf_model(p)
    raise ValueError(f"{path}: want an HF model directory or a .gguf file")


def _logits(model, ids) -> np.ndarray:
    torch = _torch()
    x = torch.tensor([list(ids)], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].to(torch.float64).numpy()


def hf_logits(hf_dir, ids) -> np.ndarray:
    """float64 [T, V] logits of the transformers model in hf_dir (float64, eager), one forward over ids."""
    return _logits(hf_model(hf_dir), ids)


def gguf_logits(gguf_path, ids) -> np.ndarray:
    """float64 [T, V] logits of transformers (float64) run on the gguf-py-dequantized weights of gguf_path."""
    return _logits(gguf_model(gguf_path), ids)


def hf_greedy(path, ids, n: int) -> list[int]:
    """n greedy tokens after ids: argmax of a full forward each step (no generate(), no penalties, no EOS stop)."""
    model = _model_for(path)
    toks = list(ids)
    out: list[int] = []
    for _ in range(n):
        nxt = int(np.argmax(_logits(model, toks)[-1]))
        out.append(nxt)
        toks.append(nxt)
    return out


def torch_attention(q, k, v, start: int, window: int | None = None, scale: float | None = None) -> np.ndarray:
    """Causal grouped-query attention by torch SDPA (float64) with transformers' causal / sliding-window mask
    functions (masking_utils, as Mistral and Gemma 3 use them). q: [T, H, Dh] at positions start..start+T-1;
    k, v: [H_kv, S, Dh] with S >= start + T (positions past the queries are ignored) → [T, H, Dh]."""
    import torch
    from transformers.masking_utils import causal_mask_function, sliding_window_overlay
    t = q.shape[0]
    s = start + t
    q64, k64, v64 = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (q, k[:, :s], v[:, :s]))
    qp, kp = torch.arange(start, s)[:, None], torch.arange(s)[None, :]
    mask = causal_mask_function(0, 0, qp, kp)
    if window is not None:
        mask &= sliding_window_overlay(window)(0, 0, qp, kp)
    out = torch.nn.functional.scaled_dot_product_attention(q64.transpose(0, 1)[None], k64[None], v64[None],
                                                           attn_mask=mask, enable_gqa=True, scale=scale)
    return out[0].transpose(0, 1).numpy()
