"""ModelConfig: one dataclass for every architecture, read from GGUF metadata or an HF config.json."""
import math
from dataclasses import dataclass

from engine.errors import ModelFileError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
}
FFN_ACTS = ("silu", "gelu_tanh")
GEMMA3_SWA_PERIOD = 6  # Gemma 3: every 6th layer is global, the others use the sliding window


@dataclass
class ModelConfig:
    """Shapes and settings of a decoder-only transformer.

    rope_interleaved: rotate pairs (2i, 2i+1) — how llama.cpp stores Llama Q/K in GGUF — instead of the
    half-split pairs (i, i + Dh/2) that HF checkpoints and Qwen GGUFs use.
    rope_scaling: None, {"rope_type": "linear", "factor"} or {"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}; GGUF files carry llama3 scaling as rope_freqs.weight.
    sliding_window: attention span of the layers marked in sliding_layers (every layer when that is None).
    Gemma 3 flags: norm_offset is added to every RMSNorm weight on load (HF Gemma stores w for a (1 + w) scale;
    llama.cpp's converter already wrote 1 + w into GGUF); post_norms: RMSNorm on the attention and FFN outputs
    before each residual add; ffn_act "gelu_tanh" (GeGLU) instead of "silu" (SwiGLU); embed_scale multiplies the
    embeddings (sqrt(hidden), in float32); attn_scale replaces 1/sqrt(head_dim); rope_theta_swa is the RoPE base of
    sliding-window layers (rope_theta and rope_scaling are then for the global layers only); final_softcap:
    logits = c * tanh(logits / c).
    """
    arch: str
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float
    rope_theta: float
    max_context: int
    rope_interleaved: bool = False
    rope_scaling: dict | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    norm_offset: float = 0.0
    post_norms: bool = False
    ffn_act: str = "silu"
    embed_scale: float | None = None
    attn_scale: float | None = None
    rope_theta_swa: float | None = None
    final_softcap: float | None = None

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ModelFileError(f"{self.n_heads} attention heads is not a multiple of {self.n_kv_heads} KV heads.")
        if self.ffn_act not in FFN_ACTS:
            raise UnsupportedModelError(f"feed-forward activation {self.ffn_act!r} is not supported (supported: "
                                        + ", ".join(FFN_ACTS) + ").")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.n_layers:
            raise ModelFileError(f"the sliding-window layer pattern names {len(self.sliding_layers)} layers for a "
                                 f"model of {self.n_layers}; the model's configuration is inconsistent.")

    def is_sliding(self, layer: int) -> bool:
        """Whether layer attends through the sliding window (and uses rope_theta_swa when set)."""
        return self.sliding_window is not None and (self.sliding_layers is None or self.sliding_layers[layer])

    @classmethod
    def from_gguf(cls, metadata: dict, tensor_shapes: dict) -> "ModelConfig":
        """From GGUF keys `{arch}.block_count`, `{arch}.embedding_length`, ... and {tensor name: shape}."""
        arch = metadata.get("general.architecture")
        _check_arch(arch, "general.architecture")

        def key(name, default=None):
            value = metadata.get(f"{arch}.{name}", default)
            if value is None:
                raise ModelFileError(f"GGUF metadata lacks {arch}.{name}; the file is incomplete.")
            return value

        n_heads = int(key("attention.head_count"))
        hidden = int(key("embedding_length"))
        scaling = None
        scale_type = metadata.get(f"{arch}.rope.scaling.type", "none")
        if scale_type == "linear":
            scaling = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
        elif scale_type not in ("none", None):
            raise UnsupportedModelError(f"RoPE scaling type {scale_type!r} is not supported (supported: linear, "
                                        "llama3 via rope_freqs.weight).")
        embd = tensor_shapes.get("token_embd.weight")
        if embd is None:
            raise ModelFileError("GGUF file has no token_embd.weight tensor; it is not a complete model.")
        window = metadata.get(f"{arch}.attention.sliding_window")
        n_layers = int(key("block_count"))
        head_dim = int(metadata.get(f"{arch}.attention.key_length", hidden // n_heads))
        gemma = {}
        if arch == "gemma3":
            # as llama.cpp: query_pre_attn_scalar is not stored; it is hidden/heads for the 62-layer 27B, else head_dim
            pattern = metadata.get(f"{arch}.attention.sliding_window_pattern", GEMMA3_SWA_PERIOD)
            gemma = dict(
                post_norms=True, ffn_act="gelu_tanh", embed_scale=math.sqrt(hidden),
                attn_scale=(hidden // n_heads if n_layers == 62 else head_dim) ** -0.5,
                sliding_layers=_sliding_layers(pattern, n_layers) if window else None,
                rope_theta_swa=float(metadata.get(f"{arch}.rope.freq_base_swa", 10000.0)) if window else None,
                final_softcap=metadata.get(f"{arch}.final_logit_softcapping") or None)
        return cls(
            arch=arch,
            vocab_size=int(embd[0]),
            hidden_size=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(key("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            intermediate_size=int(key("feed_forward_length")),
            rms_eps=float(key("attention.layer_norm_rms_epsilon")),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            max_context=int(key("context_length")),
            rope_interleaved=arch in ("llama", "mistral"),
            rope_scaling=scaling,
            qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
            qk_norm="blk.0.attn_q_norm.weight" in tensor_shapes,
            tie_embeddings="output.weight" not in tensor_shapes,
            sliding_window=int(window) if window else None,
            **gemma,
        )

    @classmethod
    def from_hf(cls, config: dict) -> "ModelConfig":
        """From a transformers config.json dict."""
        names = config.get("architectures") or []
        arch = next((HF_ARCHITECTURES[n] for n in names if n in HF_ARCHITECTURES), None)
        if arch is None:
            arch = config.get("model_type")
            if arch not in SUPPORTED_ARCHITECTURES or "text_config" in config:  # multimodal wrappers
                raise UnsupportedModelError(
                    f"config.json architecture {names or arch!r} is not supported. Supported: "
                    + ", ".join(HF_ARCHITECTURES) + " (for a multimodal Gemma 3, use a GGUF of its text model).")
        n_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        n_layers = int(config["num_hidden_layers"])
        gemma = arch == "gemma3"
        scaling = config.get("rope_scaling") or None
        theta = config.get("rope_theta", 1e6 if gemma else None)
        theta_swa = config.get("rope_local_base_freq", 10000.0) if gemma else None
        params = config.get("rope_parameters")  # transformers >= 5 writes this instead of rope_theta/rope_scaling
        if isinstance(params, dict) and "full_attention" in params:  # per layer type (Gemma 3)
            theta_swa = (params.get("sliding_attention") or {}).get("rope_theta", theta_swa)
            params = params["full_attention"]
        if isinstance(params, dict):
            theta = params.get("rope_theta", theta)
            if params.get("rope_type", "default") != "default":
                scaling = params
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind == "default":
                scaling = None
            elif kind not in ("linear", "llama3"):
                raise UnsupportedModelError(f"RoPE scaling {kind!r} is not supported (supported: linear, llama3).")
            else:
                scaling = {**scaling, "rope_type": kind}
        uses_window = config.get("use_sliding_window", arch in ("mistral", "gemma3"))
        window = config.get("sliding_window") if uses_window else None
        extra = {}
        if window and arch in ("qwen2", "qwen3"):  # as transformers: layers >= max_window_layers, or layer_types
            layer_types = config.get("layer_types")
            sliding = (tuple(t == "sliding_attention" for t in layer_types) if layer_types else
                       tuple(i >= int(config.get("max_window_layers", 28)) for i in range(n_layers)))
            if any(sliding):
                extra = dict(sliding_layers=sliding)
            else:
                window = None
        if gemma:
            if config.get("attn_logit_softcapping") is not None:
                raise UnsupportedModelError("attention logit soft-capping (Gemma 2 style attn_logit_softcapping) is "
                                            "not supported; Gemma 3 checkpoints have it null.")
            if config.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
                raise UnsupportedModelError(f"Gemma 3 activation {config.get('hidden_activation')!r} is not "
                                            "supported (supported: gelu_pytorch_tanh).")
            layer_types = config.get("layer_types")
            head_dim = int(config.get("head_dim") or 256)
            extra = dict(
                post_norms=True, ffn_act="gelu_tanh", norm_offset=1.0, embed_scale=math.sqrt(hidden),
                attn_scale=float(config.get("query_pre_attn_scalar", head_dim)) ** -0.5,
                sliding_layers=(tuple(t == "sliding_attention" for t in layer_types) if layer_types
                                else _sliding_layers(config.get("sliding_window_pattern", GEMMA3_SWA_PERIOD),
                                                     n_layers)) if window else None,
                rope_theta_swa=float(theta_swa) if window else None,
                final_softcap=config.get("final_logit_softcapping") or None)
        return cls(
            arch=arch,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            head_dim=int(config.get("head_dim") or (256 if gemma else hidden // n_heads)),
            intermediate_size=int(config["intermediate_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta if theta is not None else 10000.0),
            max_context=int(config.get("max_position_embeddings", 4096)),
            rope_interleaved=False,
            rope_scaling=scaling,
            qkv_bias=bool(config.get("attention_bias", arch == "qwen2")),
            qk_norm=arch in ("qwen3", "gemma3"),
            tie_embeddings=bool(config.get("tie_word_embeddings", gemma)),
            sliding_window=int(window) if window else None,
            **extra,
        )


def _sliding_layers(pattern, n_layers: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: pattern is a list of bools, or a period P (layer i is global when
    (i + 1) % P == 0, as transformers' sliding_window_pattern and llama.cpp's set_swa_pattern)."""
    if isinstance(pattern, (list, tuple)):
        return tuple(bool(p) for p in pattern)
    period = int(pattern)
    return tuple(period == 0 or (i + 1) % period != 0 for i in range(n_layers))


def _check_arch(arch, where: str) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} ({where}) is not supported. Supported architectures: "
                                    + ", ".join(SUPPORTED_ARCHITECTURES) + ".")
