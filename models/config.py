"""ModelConfig: one dataclass for every architecture, read from GGUF metadata or an HF config.json."""
import math
from dataclasses import dataclass

from kernels.errors import UnsupportedModelError
from models.errors import ModelFileError

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
MAX_SIZE = 2**31 - 1  # bound of every shape setting (the largest real ones are about 10M): int32 arithmetic is safe


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
        """Refuse what no model has (wrong types, sizes < 1 or past int32, non-finite or non-positive scales,
        heads that do not divide) before any of it sizes an allocation: ModelFileError naming the field."""
        _check_arch(self.arch, "the model's configuration")
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "intermediate_size"):
            check_size(name, getattr(self, name))
        check_size("max_context", self.max_context, limit=None)  # sized against memory when the model loads
        if self.sliding_window is not None:
            check_size("sliding_window", self.sliding_window)
        for name in ("rms_eps", "rope_theta", "rope_theta_swa", "embed_scale", "attn_scale", "final_softcap"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if not isinstance(self.norm_offset, (int, float)) or not math.isfinite(self.norm_offset):
            raise ModelFileError(f"norm_offset {self.norm_offset!r} is not a finite number.")
        if self.head_dim % 2:
            raise ModelFileError(f"head_dim {self.head_dim} is odd; RoPE rotates pairs of dimensions, so the "
                                 "model's configuration is invalid.")
        if self.n_heads % self.n_kv_heads:
            raise ModelFileError(f"{self.n_heads} attention heads is not a multiple of {self.n_kv_heads} KV heads.")
        if self.ffn_act not in FFN_ACTS:
            raise UnsupportedModelError(f"feed-forward activation {self.ffn_act!r} is not supported (supported: "
                                        + ", ".join(FFN_ACTS) + ").")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)
        if self.sliding_layers is not None and len(self.sliding_layers) != self.n_layers:
            raise ModelFileError(f"the sliding-window layer pattern names {len(self.sliding_layers)} layers for a "
                                 f"model of {self.n_layers}; the model's configuration is inconsistent.")

    def is_sliding(self, layer: int) -> bool:
        """Whether layer attends through the sliding window (and uses rope_theta_swa when set)."""
        return self.sliding_window is not None and (self.sliding_layers is None or self.sliding_layers[layer])

    @classmethod
    def from_gguf(cls, metadata: dict, tensor_shapes: dict) -> "ModelConfig":
        """From GGUF keys `{arch}.block_count`, `{arch}.embedding_length`, ... and {tensor name: shape}. Each value's
        type and range is checked before it is used; ModelFileError names the key."""
        arch = metadata.get("general.architecture")
        _check_arch(arch, "general.architecture")

        def key(name, default=None):
            value = metadata.get(f"{arch}.{name}", default)
            if value is None:
                raise ModelFileError(f"GGUF metadata lacks {arch}.{name}; the file is incomplete.")
            return value

        def size(name, default=None) -> int:
            return check_size(f"GGUF metadata {arch}.{name}", key(name, default))

        def real(name, default=None) -> float:
            return check_positive(f"GGUF metadata {arch}.{name}", key(name, default))

        n_heads = size("attention.head_count")
        hidden = size("embedding_length")
        scaling = None
        scale_type = metadata.get(f"{arch}.rope.scaling.type", "none")
        if scale_type == "linear":
            scaling = {"rope_type": "linear", "factor": real("rope.scaling.factor")}
        elif scale_type not in ("none", None):
            raise UnsupportedModelError(f"RoPE scaling type {scale_type!r:.40} is not supported (supported: linear, "
                                        "llama3 via rope_freqs.weight).")
        embd = tensor_shapes.get("token_embd.weight")
        if embd is None:
            raise ModelFileError("GGUF file has no token_embd.weight tensor; it is not a complete model.")
        n_layers = size("block_count")
        if f"blk.{n_layers - 1}.attn_norm.weight" not in tensor_shapes:
            raise ModelFileError(f"GGUF metadata {arch}.block_count is {n_layers} but the file has no tensors of "
                                 f"layer {n_layers - 1}; the file is corrupt.")
        window = size("attention.sliding_window") if key("attention.sliding_window", 0) != 0 else None
        head_dim = size("attention.key_length", hidden // n_heads)
        for name in ("attention.value_length", "rope.dimension_count"):
            if key(name, head_dim) != head_dim:
                raise UnsupportedModelError(f"GGUF metadata {arch}.{name} is {key(name)!r:.40}, not the head size "
                                            f"{head_dim}; models with such heads (or partial RoPE) are not supported.")
        gemma = {}
        if arch == "gemma3":
            # as llama.cpp: query_pre_attn_scalar is not stored; it is hidden/heads for the 62-layer 27B, else head_dim
            pattern = key("attention.sliding_window_pattern", GEMMA3_SWA_PERIOD)
            softcap = key("final_logit_softcapping", 0)
            query_scalar = check_size("hidden size per head", hidden // n_heads) if n_layers == 62 else head_dim
            gemma = dict(
                post_norms=True, ffn_act="gelu_tanh", embed_scale=math.sqrt(hidden), attn_scale=query_scalar ** -0.5,
                sliding_layers=_sliding_layers(pattern, n_layers) if window else None,
                rope_theta_swa=real("rope.freq_base_swa", 10000.0) if window else None,
                final_softcap=real("final_logit_softcapping") if softcap != 0 else None)
        return cls(
            arch=arch,
            vocab_size=embd[0],
            hidden_size=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=size("attention.head_count_kv", n_heads),
            head_dim=head_dim,
            intermediate_size=size("feed_forward_length"),
            rms_eps=real("attention.layer_norm_rms_epsilon"),
            rope_theta=real("rope.freq_base", 10000.0),
            max_context=check_size(f"GGUF metadata {arch}.context_length", key("context_length"), limit=None),
            rope_interleaved=arch in ("llama", "mistral"),
            rope_scaling=scaling,
            qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
            qk_norm="blk.0.attn_q_norm.weight" in tensor_shapes,
            tie_embeddings="output.weight" not in tensor_shapes,
            sliding_window=window,
            **gemma,
        )

    @classmethod
    def from_hf(cls, config: dict) -> "ModelConfig":
        """From a transformers config.json dict; each value is checked as it is read (type, finite, range), and
        a missing or malformed one raises ModelFileError naming its config.json key."""
        arch = _hf_arch(config)
        gemma = arch == "gemma3"
        hidden = _hf_value(config, "hidden_size", int, ge=1)
        n_heads = _hf_value(config, "num_attention_heads", int, ge=1, le=hidden)
        n_layers = _hf_value(config, "num_hidden_layers", int, ge=1, le=_MAX_HF_LAYERS)
        head_dim = _hf_value(config, "head_dim", int, 256 if gemma else hidden // n_heads, ge=1)
        theta, theta_swa, scaling = _hf_rope(config, gemma)
        uses_window = _hf_value(config, "use_sliding_window", bool, arch in ("mistral", "gemma3"))
        window = _hf_value(config, "sliding_window", int, 0, ge=0) if uses_window else 0
        extra = {}
        if window and arch in ("qwen2", "qwen3"):  # as transformers: layers >= max_window_layers, or layer_types
            sliding = (_hf_layer_types(config) or
                       tuple(i >= _hf_value(config, "max_window_layers", int, 28, ge=0) for i in range(n_layers)))
            if any(sliding):
                extra = dict(sliding_layers=sliding)
            else:
                window = 0
        if gemma:
            if config.get("attn_logit_softcapping") is not None:
                raise UnsupportedModelError("attention logit soft-capping (Gemma 2 style attn_logit_softcapping) is "
                                            "not supported; Gemma 3 checkpoints have it null.")
            activation = _hf_value(config, "hidden_activation", str, "gelu_pytorch_tanh")
            if activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
                raise UnsupportedModelError(f"Gemma 3 activation {activation!r:.80} is not supported (supported: "
                                            "gelu_pytorch_tanh).")
            extra = dict(
                post_norms=True, ffn_act="gelu_tanh", norm_offset=1.0, embed_scale=math.sqrt(hidden),
                attn_scale=_hf_value(config, "query_pre_attn_scalar", float, head_dim, gt=0) ** -0.5,
                sliding_layers=_hf_gemma_sliding_layers(config, n_layers) if window else None,
                rope_theta_swa=theta_swa if window else None,
                final_softcap=_hf_value(config, "final_logit_softcapping", float, 0.0, ge=0) or None)
        return cls(
            arch=arch,
            vocab_size=_hf_value(config, "vocab_size", int, ge=1),
            hidden_size=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=_hf_value(config, "num_key_value_heads", int, n_heads, ge=1, le=n_heads),
            head_dim=head_dim,
            intermediate_size=_hf_value(config, "intermediate_size", int, ge=1),
            rms_eps=_hf_value(config, "rms_norm_eps", float, 1e-6, gt=0, le=1),
            rope_theta=theta,
            max_context=_hf_value(config, "max_position_embeddings", int, 4096, ge=1),
            rope_interleaved=False,
            rope_scaling=scaling,
            qkv_bias=_hf_value(config, "attention_bias", bool, arch == "qwen2"),
            qk_norm=arch in ("qwen3", "gemma3"),
            tie_embeddings=_hf_value(config, "tie_word_embeddings", bool, gemma),
            sliding_window=window or None,
            **extra,
        )

def _sliding_layers(pattern, n_layers: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: pattern is a list of bools, or a period P (layer i is global when
    (i + 1) % P == 0, as transformers' sliding_window_pattern and llama.cpp's set_swa_pattern)."""
    if isinstance(pattern, (list, tuple)) and all(isinstance(p, (bool, int)) for p in pattern):
        return tuple(bool(p) for p in pattern)
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 0:
        raise ModelFileError(f"sliding-window pattern {_shown(pattern)} is neither a list of flags nor a period >= 0; "
                             "the model's configuration is corrupt.")
    return tuple(pattern == 0 or (i + 1) % pattern != 0 for i in range(n_layers))


_REQUIRED = object()  # _hf_value's default for keys config.json must have
_MAX_HF_LAYERS = 4096  # sizes the per-layer tables built from config.json before any weight is checked


def _hf_value(d: dict, key: str, kind: type, default=_REQUIRED, *, gt=None, ge=None, le=None, within: str = ""):
    """d[key] from config.json as a `kind` (int, float, bool, str, list or dict), default when absent or null;
    numbers must lie in the bounds given (gt: >, ge: >=, le: <=) and floats be finite. Raises ModelFileError
    naming the key (within: the dotted path of the dict d inside config.json)."""
    value = d.get(key)
    name = f"config.json {within}{key}"
    if value is None:
        if default is _REQUIRED:
            raise ModelFileError(f"{name} is missing; the model's configuration is incomplete. Download config.json "
                                 "again.")
        if default is None:
            return None
        value = default
    typed = _typed(value, kind)
    if typed is None:
        raise ModelFileError(f"{name} is {type(value).__name__} {value!r:.40}, expected {_KIND_NAMES[kind]}; "
                             "config.json is corrupt.")
    if (gt is not None and typed <= gt) or (ge is not None and typed < ge) or (le is not None and typed > le):
        bounds = " and ".join(f"{op} {b}" for op, b in ((">", gt), (">=", ge), ("<=", le)) if b is not None)
        raise ModelFileError(f"{name} is {typed}, but must be {bounds}; config.json is corrupt.")
    return typed


_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
               list: "a list", dict: "an object"}


def _typed(value, kind: type):
    """value as a `kind`, or None when it is not one: ints also from integral floats (up to 2^53), floats from
    ints, both never from bools; floats finite."""
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return None
    if kind is int:
        return int(value) if isinstance(value, int) or (value.is_integer() and abs(value) <= 2**53) else None
    if kind is float:
        return float(value) if math.isfinite(value) else None
    return value if isinstance(value, kind) else None


def _hf_arch(config: dict) -> str:
    """The engine architecture config.json names (its architectures list, else model_type)."""
    names = _hf_value(config, "architectures", list, [])
    arch = next((HF_ARCHITECTURES[n] for n in names if isinstance(n, str) and n in HF_ARCHITECTURES), None)
    if arch is None:
        arch = config.get("model_type")
        if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES or "text_config" in config:
            raise UnsupportedModelError(  # multimodal wrappers have a text_config
                f"config.json architecture {str(names or arch)[:80]!r} is not supported. Supported: "
                + ", ".join(HF_ARCHITECTURES) + " (for a multimodal Gemma 3, use a GGUF of its text model).")
    return arch


def _hf_rope(config: dict, gemma: bool) -> tuple[float, float, dict | None]:
    """(rope_theta, Gemma 3's sliding-layer rope_theta, rope_scaling) from rope_theta / rope_local_base_freq /
    rope_scaling, or transformers >= 5's rope_parameters (per layer type for Gemma 3)."""
    theta = _hf_value(config, "rope_theta", float, 1e6 if gemma else 10000.0, ge=1)
    theta_swa = _hf_value(config, "rope_local_base_freq", float, 10000.0, ge=1)
    scaling, where = _hf_value(config, "rope_scaling", dict, None), "rope_scaling."
    params, within = _hf_value(config, "rope_parameters", dict, None), "rope_parameters."
    if params is not None and "full_attention" in params:
        swa = _hf_value(params, "sliding_attention", dict, {}, within=within)
        theta_swa = _hf_value(swa, "rope_theta", float, theta_swa, ge=1, within=within + "sliding_attention.")
        params, within = _hf_value(params, "full_attention", dict, within=within), within + "full_attention."
    if params is not None:
        theta = _hf_value(params, "rope_theta", float, theta, ge=1, within=within)
        if params.get("rope_type", "default") != "default":
            scaling, where = params, within
    return theta, theta_swa, _hf_rope_scaling(scaling, where)


def _hf_rope_scaling(scaling: dict | None, within: str) -> dict | None:
    """ModelConfig.rope_scaling from config.json's rope_scaling dict: None for default RoPE, else the values
    its type uses, checked (an unknown type is unsupported)."""
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if not isinstance(kind, str):
        raise ModelFileError(f"config.json {within}rope_type is {kind!r:.40}, expected a string such as 'linear'; "
                             "config.json is corrupt.")
    if kind not in ("linear", "llama3"):
        raise UnsupportedModelError(f"RoPE scaling {kind!r:.40} is not supported (supported: linear, llama3).")
    out = {"rope_type": kind, "factor": _hf_value(scaling, "factor", float, gt=0, within=within)}
    if kind == "llama3":
        low = _hf_value(scaling, "low_freq_factor", float, gt=0, within=within)
        out.update(low_freq_factor=low,
                   high_freq_factor=_hf_value(scaling, "high_freq_factor", float, gt=low, within=within),
                   original_max_position_embeddings=_hf_value(scaling, "original_max_position_embeddings", int,
                                                              ge=1, within=within))
    return out


def _hf_layer_types(config: dict) -> tuple[bool, ...] | None:
    """Which layers slide, from config.json's layer_types ("sliding_attention" / "full_attention" per layer)."""
    types = _hf_value(config, "layer_types", list, [])
    if not all(isinstance(t, str) for t in types):
        raise ModelFileError("config.json layer_types is a list that is not all strings; config.json is corrupt.")
    unknown = [t for t in types if t not in ("sliding_attention", "full_attention")]
    if unknown:
        raise UnsupportedModelError(f"config.json layer_types holds {unknown[0][:40]!r}; supported layer types: "
                                    "sliding_attention, full_attention.")
    return tuple(t == "sliding_attention" for t in types) or None


def _hf_gemma_sliding_layers(config: dict, n_layers: int) -> tuple[bool, ...]:
    """Gemma 3's sliding layers: layer_types, else sliding_window_pattern (a period, or a list of bools)."""
    pattern = config.get("sliding_window_pattern")
    if isinstance(pattern, list) and not all(isinstance(p, bool) for p in pattern):
        raise ModelFileError("config.json sliding_window_pattern is a list that is not all true/false; config.json "
                             "is corrupt.")
    if not isinstance(pattern, list):
        pattern = _hf_value(config, "sliding_window_pattern", int, GEMMA3_SWA_PERIOD, ge=0)
    return _hf_layer_types(config) or _sliding_layers(pattern, n_layers)

def _check_arch(arch, where: str) -> None:
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} ({where}) is not supported. Supported architectures: "
                                    + ", ".join(SUPPORTED_ARCHITECTURES) + ".")


def check_size(name: str, value, limit: int | None = MAX_SIZE) -> int:
    """value if it is an integer (not a bool) in 1 .. limit, else ModelFileError naming it (name: the setting or
    metadata key it came from)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFileError(f"{name} is {_shown(value)}, expected a positive integer; the model's configuration is "
                             "corrupt.")
    if value < 1 or (limit is not None and value > limit):
        bounds = f"1 .. {limit}" if limit is not None else ">= 1"
        raise ModelFileError(f"{name} is {value}, outside {bounds}; the model's configuration is corrupt.")
    return value


def check_positive(name: str, value) -> float:
    """value as a float if it is a finite number > 0 (not a bool), else ModelFileError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ModelFileError(f"{name} is {_shown(value)}, expected a finite number > 0; the model's configuration is "
                             "corrupt.")
    return float(value)


def _check_rope_scaling(scaling) -> None:
    """RoPE scaling as ModelConfig.rope_scaling describes it: known type, finite positive factors, and (llama3) a
    high-frequency factor above the low one (their difference divides)."""
    kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
    if kind not in ("linear", "llama3"):
        raise UnsupportedModelError(f"RoPE scaling {scaling!r:.80} is not supported (supported: linear, llama3).")
    check_positive("rope_scaling factor", scaling.get("factor"))
    if kind == "llama3":
        low, high = (check_positive(f"rope_scaling {k}", scaling.get(k)) for k in ("low_freq_factor",
                                                                                 "high_freq_factor"))
        check_positive("rope_scaling original_max_position_embeddings", scaling.get("original_max_position_embeddings"))
        if high <= low:
            raise ModelFileError(f"rope_scaling high_freq_factor {high} is not above low_freq_factor {low}; the "
                                 "model's configuration is corrupt.")


def _shown(value) -> str:
    """A short description of a wrong-typed value for an error message."""
    return f"{type(value).__name__} {value!r:.40}"
