"""ModelConfig: one dataclass for every architecture, read from GGUF metadata or an HF config.json."""
from dataclasses import dataclass

from engine.errors import ModelFileError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass
class ModelConfig:
    """Shapes and settings of a decoder-only transformer.

    rope_interleaved: rotate pairs (2i, 2i+1) — how llama.cpp stores Llama Q/K in GGUF — instead of the
    half-split pairs (i, i + Dh/2) that HF checkpoints and Qwen GGUFs use.
    rope_scaling: None, {"rope_type": "linear", "factor"} or {"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}; GGUF files carry llama3 scaling as rope_freqs.weight.
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

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ModelFileError(f"{self.n_heads} attention heads is not a multiple of {self.n_kv_heads} KV heads.")

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
        return cls(
            arch=arch,
            vocab_size=int(embd[0]),
            hidden_size=hidden,
            n_layers=int(key("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(key("attention.head_count_kv", n_heads)),
            head_dim=int(metadata.get(f"{arch}.attention.key_length", hidden // n_heads)),
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
        )

    @classmethod
    def from_hf(cls, config: dict) -> "ModelConfig":
        """From a transformers config.json dict."""
        names = config.get("architectures") or []
        arch = next((HF_ARCHITECTURES[n] for n in names if n in HF_ARCHITECTURES), None)
        if arch is None:
            arch = config.get("model_type")
            if arch not in SUPPORTED_ARCHITECTURES:
                raise UnsupportedModelError(
                    f"config.json architecture {names or arch!r} is not supported. Supported: "
                    + ", ".join(HF_ARCHITECTURES))
        n_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        scaling = config.get("rope_scaling") or None
        theta = config.get("rope_theta")
        params = config.get("rope_parameters")  # transformers >= 5 writes this instead of rope_theta/rope_scaling
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
        window = config.get("sliding_window") if config.get("use_sliding_window", arch == "mistral") else None
        return cls(
            arch=arch,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            n_layers=int(config["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            head_dim=int(config.get("head_dim") or hidden // n_heads),
            intermediate_size=int(config["intermediate_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta if theta is not None else 10000.0),
            max_context=int(config.get("max_position_embeddings", 4096)),
            rope_interleaved=False,
            rope_scaling=scaling,
            qkv_bias=bool(config.get("attention_bias", arch == "qwen2")),
            qk_norm=arch == "qwen3",
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            sliding_window=int(window) if window else None,
        )


def _check_arch(arch, where: str) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} ({where}) is not supported. Supported architectures: "
                                    + ", ".join(SUPPORTED_ARCHITECTURES) + ".")
