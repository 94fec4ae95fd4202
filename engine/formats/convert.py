"""Write a GGUF file, quantized, from an HF-style directory or from another GGUF.

    python -m engine.quantize SRC --type f16|q8_0|q4_0|q4_k_m|q6_k -o OUT.gguf [--tokenizer-pre NAME]

SRC is an HF-style directory (config.json, safetensors, sharded or not, tokenizer_config.json, and
tokenizer.json (byte-level BPE) or tokenizer.model (SentencePiece: Llama 2, Mistral, Gemma 3)) or a GGUF file
(its metadata is copied, its tensors dequantized and quantized again; tensors already of the target type are
copied as they are). The file is what llama.cpp writes (convert_hf_to_gguf.py, then llama-quantize): the
same metadata keys, Llama/Mistral Q/K rows permuted for interleaved RoPE, llama3 RoPE scaling as a
`rope_freqs.weight` tensor, Gemma 3 norm weights stored as 1 + w, no `output.weight` when the embeddings are
tied, and the tensor types of llama.cpp's `llama_tensor_get_type` (see `tensor_type`). Quantizers:
kernels.quants (byte-identical to llama.cpp's reference quantizers). Written with gguf-py's GGUFWriter (32-byte alignment), one tensor at a time.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from tqdm import tqdm

from engine.errors import InvalidRequestError, ModelFileError, TokenizerError, UnsupportedModelError
from engine.formats import jsonfile
from engine.formats.gguf import GGUFFile
from engine.formats.safetensors import load_hf_dir
from kernels.qtensor import QTensor
from kernels.quants import GGMLType, block_shape, quantize
from models.config import SUPPORTED_ARCHITECTURES, ModelConfig

# --type -> (llama_ftype for general.file_type, default tensor type)
FILE_TYPES = {
    "f16": (gguf.LlamaFileType.MOSTLY_F16, GGMLType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, GGMLType.Q8_0),
    "q4_0": (gguf.LlamaFileType.MOSTLY_Q4_0, GGMLType.Q4_0),
    "q4_k_m": (gguf.LlamaFileType.MOSTLY_Q4_K_M, GGMLType.Q4_K),
    "q6_k": (gguf.LlamaFileType.MOSTLY_Q6_K, GGMLType.Q6_K),
}
# llama.cpp's tensor_type_fallback: the type to use when a row length is not a multiple of the block size
_FALLBACK = {GGMLType.Q4_K: GGMLType.Q5_0, GGMLType.Q6_K: GGMLType.Q8_0}
_HF_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3")  # architectures whose config.json we translate
_CHUNK_ELEMS = 1 << 19  # elements quantized per step (bounds the K-quant searches' temporaries)
_LAYER = re.compile(r"^blk\.(\d+)\.")


# ------------------------------------------------------------------------------------------- tensor types

def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the attn_v / ffn_down layers that get Q6_K in Q4_K_M: the first and last eighth of
    the layers and every third layer in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, shape: tuple[int, ...], file_type: str, n_layers: int, tied: bool) -> GGMLType:
    """The GGML type llama-quantize gives tensor `name` ([rows, row_len] or [n]) in a `file_type` file.

    1-D tensors (norms, biases, rope_freqs) stay F32. Otherwise the file's type, except: the output matrix (and
    the token embedding when it is tied to the output) gets Q6_K, or Q8_0 when its rows are not a multiple of
    the file type's block; in q4_k_m, attn_v and ffn_down of the `_use_more_bits` layers get Q6_K. A row length
    that is not a multiple of the chosen type's block falls back to Q5_0 (for Q4_K) or Q8_0 (for Q6_K), and to
    F16 when even that does not divide it.
    """
    if len(shape) < 2:
        return GGMLType.F32
    ftype, new = FILE_TYPES[file_type][0], FILE_TYPES[file_type][1]
    if new == GGMLType.F16:
        return new
    row = shape[-1]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if row % block_shape(new)[0]:
            new = GGMLType.Q8_0
        elif new != GGMLType.Q8_0:
            new = GGMLType.Q6_K
    elif ftype == gguf.LlamaFileType.MOSTLY_Q4_K_M and name.endswith(("attn_v.weight", "ffn_down.weight")):
        m = _LAYER.match(name)
        if m and _use_more_bits(int(m[1]), n_layers):
            new = GGMLType.Q6_K
    if row % block_shape(new)[0]:
        new = _FALLBACK.get(new, new)
        if row % block_shape(new)[0]:
            new = GGMLType.F16
    return new


# ------------------------------------------------------------------------------------------------ sources

@dataclass
class _Tensor:
    """One tensor to write: its GGUF name, its shape (NumPy order) and its source data as a 2-D QTensor (F32
    arrays included, so that every source reads rows the same way)."""
    name: str
    shape: tuple[int, ...]
    data: QTensor

    @classmethod
    def of(cls, name: str, t: np.ndarray | QTensor) -> "_Tensor":
        if isinstance(t, QTensor):
            return cls(name, t.shape, t)
        a = np.ascontiguousarray(t, dtype=np.float32)
        rows = a.reshape(-1, a.shape[-1])
        return cls(name, a.shape, QTensor(rows.view(np.uint8), GGMLType.F32, rows.shape))


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: per head, rows (i, i + Dh/2) become adjacent (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_freqs(scaling: dict, theta: float, head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf's rope_freqs.weight for llama3 RoPE scaling: float32 [head_dim / 2] divisors.

    The converter computes theta ** (2i / head_dim) with torch in float32. NumPy's float32 power takes a different
    SIMD path on each CPU (AVX-512 hosts round some values differently), so the power is taken in float64 and
    rounded once: the same values on every machine, within an ulp of torch's."""
    f32 = np.float32
    exponents = (np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)).astype(np.float64)
    freqs = f32(1) / (np.float64(theta) ** exponents).astype(f32)
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (f32(old_ctx) / wavelen - f32(low)) / f32(high - low)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def _hf_arch(config: dict) -> str:
    names = config.get("architectures") or []
    arch = ModelConfig.from_hf(config).arch  # raises UnsupportedModelError for what the engine cannot run
    if arch not in _HF_ARCHS:
        raise UnsupportedModelError(f"engine.quantize cannot translate config.json architecture {names or arch!r}; "
                                    f"supported: {', '.join(_HF_ARCHS)}. Convert it with llama.cpp's "
                                    "convert_hf_to_gguf.py and pass the GGUF instead.")
    return arch


def _hf_tensors(config: dict, tensors: dict, cfg: ModelConfig) -> list[_Tensor]:
    """The GGUF tensors of an HF checkpoint, in llama.cpp's layout."""
    out = []
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") == "llama3":
        freqs = _llama3_rope_freqs(cfg.rope_scaling, cfg.rope_theta, cfg.head_dim)
        out.append(_Tensor.of("rope_freqs.weight", freqs))
    names = sorted(tensors, key=lambda n: (int(m[1]) if (m := _LAYER.match(n)) else -1, n))
    for name in names:
        if name == "output.weight" and cfg.tie_embeddings:
            continue
        t = tensors[name]
        if cfg.arch in ("llama", "mistral") and re.search(r"\.attn_[qk]\.(weight|bias)$", name):
            heads = cfg.n_heads if ".attn_q." in name else cfg.n_kv_heads
            t = _permute(t.dequantize() if isinstance(t, QTensor) else np.asarray(t, dtype=np.float32), heads)
        elif cfg.arch == "gemma3" and name.endswith("norm.weight"):  # Gemma3RMSNorm scales by (1 + w)
            t = np.asarray(t, dtype=np.float32) + np.float32(1)
        out.append(_Tensor.of(name, t))
    return out


def _hf_metadata(w: gguf.GGUFWriter, src: Path, config: dict, cfg: ModelConfig, n_params: int) -> None:
    """general.* and architecture keys as convert_hf_to_gguf.py writes them (gguf.Metadata: name, size label,
    sampling defaults from generation_config.json; then TextModel / LlamaModel / Qwen2Model / Gemma3Model)."""
    meta = gguf.Metadata.load(None, src, None, n_params)
    meta.name = meta.name or src.resolve().name
    meta.size_label = meta.size_label or gguf.size_label(n_params, 0, 0, 0)
    meta.set_gguf_meta_model(w)
    w.add_type("model")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_context)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    if cfg.rope_theta_swa is not None:
        w.add_rope_freq_base_swa(cfg.rope_theta_swa)
    if config.get("head_dim") is not None or cfg.arch == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.arch == "gemma3":
        if cfg.final_softcap:
            w.add_final_logit_softcapping(cfg.final_softcap)
        if cfg.sliding_window is not None and config.get("sliding_window_pattern") != 1:
            w.add_sliding_window(cfg.sliding_window)
    if cfg.arch in ("llama", "mistral"):
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(cfg.head_dim)


# ---------------------------------------------------------------------------------------------- tokenizer

# tokenizer.json pre-tokenizer regexes (as HF writes them) -> llama.cpp's tokenizer.ggml.pre name
_PRE_BY_REGEX = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+": "qwen2",
}


def _pre_tokenizer_name(tok: dict, where: Path) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json, from its pre_tokenizer section."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        if regex in _PRE_BY_REGEX:
            return _PRE_BY_REGEX[regex]
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    elif kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise TokenizerError(f"{where}: cannot tell which llama.cpp pre-tokenizer matches this tokenizer.json "
                         f"(pre_tokenizer {json.dumps(pre)[:200]}). Pass --tokenizer-pre NAME (e.g. llama-bpe, "
                         "qwen2, smollm, gpt-2: the name llama.cpp's convert_hf_to_gguf.py reports for the model).")


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf's does_token_look_special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def _gpt2_vocab(w: gguf.GGUFWriter, src: Path, vocab_size: int, pre: str | None) -> None:
    """tokenizer.ggml.* for a byte-level BPE tokenizer.json, as convert_hf_to_gguf's _set_vocab_gpt2 writes it:
    tokens (missing ids as [PADi] UNUSED), token types (added tokens CONTROL when special or special-looking,
    else USER_DEFINED), then merges, special token ids, add_bos/add_eos and the chat template (gguf.SpecialVocab)."""
    from tokenizers import Tokenizer as HFTokenizer

    path = src / "tokenizer.json"
    tok_json = jsonfile.read(path)
    try:  # the library's parse also checks the structure the code below reads
        hf = HFTokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means an unusable tokenizer.json
        raise TokenizerError(f"{path}: cannot read ({e}).") from None
    if (tok_json.get("model") or {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(tok_json.get("decoder")):
        raise TokenizerError(f"{path}: only byte-level BPE tokenizer.json files (GPT-2 / Llama-3 / Qwen style) are "
                             "converted. For a SentencePiece model (Llama 2, Mistral, Gemma 3) put its "
                             "tokenizer.model in the directory.")
    pre = pre or _pre_tokenizer_name(tok_json, path)
    vocab = {i: t for t, i in hf.get_vocab(with_added_tokens=True).items()}
    added = hf.get_added_tokens_decoder()
    if max(vocab) >= vocab_size:
        raise TokenizerError(f"{path}: token id {max(vocab)} is outside config.json's vocab_size {vocab_size}.")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in vocab:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            text = vocab[i]
            if added[i].special or _looks_special(text):
                types.append(gguf.TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(src, load_merges=True).add_to_gguf(w, quiet=True)


def _spm_vocab(w: gguf.GGUFWriter, src: Path, vocab_size: int) -> None:
    """tokenizer.ggml.* for a SentencePiece tokenizer.model, as convert_hf_to_gguf's _set_vocab_sentencepiece
    writes it: pieces, scores and types (UNKNOWN / CONTROL / UNUSED / BYTE / NORMAL) for the first vocab_size ids,
    [PADi] UNUSED for ids the model lacks, then the tokens of added_tokens.json (USER_DEFINED) and of
    tokenizer_config.json's added_tokens_decoder (CONTROL when special or special-looking, else USER_DEFINED),
    score -1000; then special ids, add_bos/add_eos and the chat template (gguf.SpecialVocab)."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise TokenizerError(f"{src / 'tokenizer.model'} is a SentencePiece model; reading it needs the "
                             "sentencepiece package: pip install sentencepiece") from None
    path = src / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means an unusable tokenizer.model
        raise TokenizerError(f"{path}: cannot read as a SentencePiece model ({e}).") from None
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL if sp.IsControl(i)
                    else gguf.TokenType.UNUSED if sp.IsUnused(i) else gguf.TokenType.BYTE if sp.IsByte(i)
                    else gguf.TokenType.NORMAL)
    added = jsonfile.read(src / "added_tokens.json") if (src / "added_tokens.json").is_file() else {}
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in added.values()):
        raise TokenizerError(f"{src / 'added_tokens.json'}: not a map of token text to id; the file is corrupt.")
    for text, i in added.items():
        if i < vocab_size:
            tokens[i], scores[i], types[i] = text, -1000.0, gguf.TokenType.USER_DEFINED
    decoder = {}
    if (src / "tokenizer_config.json").is_file():
        decoder = jsonfile.read(src / "tokenizer_config.json").get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict) or not all(
            key.isascii() and key.isdigit() and isinstance(data, dict) and isinstance(data.get("content"), str)
            for key, data in decoder.items()):
        raise TokenizerError(f"{src / 'tokenizer_config.json'}: added_tokens_decoder is not a map of token id to "
                             "{content, special}; the file is corrupt.")
    for key, data in decoder.items():
        i, text = int(key), data["content"]
        if i >= vocab_size:
            continue
        if data.get("special") or _looks_special(text):
            types[i] = gguf.TokenType.CONTROL
        else:
            text = text.replace("\u2581", " ")
            types[i] = gguf.TokenType.USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    gguf.SpecialVocab(src, n_vocab=vocab_size).add_to_gguf(w, quiet=True)


def _vocab(w: gguf.GGUFWriter, src: Path, arch: str, vocab_size: int, pre: str | None) -> None:
    """The tokenizer metadata as the converter's model class writes it: SentencePiece when tokenizer.model exists
    (Llama, Mistral, Gemma 3), else byte-level BPE from tokenizer.json."""
    spm = arch in ("llama", "mistral", "gemma3") and (src / "tokenizer.model").is_file()
    if not spm and not (src / "tokenizer.json").is_file():
        raise TokenizerError(f"{src}: no tokenizer.json (or tokenizer.model); the GGUF must embed a tokenizer. Put "
                             "the model's tokenizer files (tokenizer.json or tokenizer.model, and "
                             "tokenizer_config.json) in the directory.")
    if arch in ("llama", "mistral") and (src / "tokenizer_config.json").is_file():  # LlamaModel.set_vocab
        prefix = jsonfile.read(src / "tokenizer_config.json").get("add_prefix_space")
        if not isinstance(prefix, (bool, type(None))):
            raise TokenizerError(f"{src / 'tokenizer_config.json'}: add_prefix_space is {prefix!r:.40}, expected "
                                 "true or false; the file is corrupt.")
        if prefix is not None:
            w.add_add_space_prefix(prefix)
    if spm:
        _spm_vocab(w, src, vocab_size)
        if arch == "gemma3":
            w.add_add_space_prefix(False)
    else:
        _gpt2_vocab(w, src, vocab_size, pre)


# ------------------------------------------------------------------------------------------------- writing

def _gguf_source(src: Path) -> tuple[gguf.GGUFWriter, list[_Tensor], int, bool]:
    """A writer holding a GGUF's metadata (all value types kept), its tensors, layer count and tied flag."""
    g = GGUFFile(src)
    arch = g.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"{src}: architecture {arch!r} is not supported; supported: "
                                    f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
    w = gguf.GGUFWriter(None, arch)
    skip = ("general.architecture", "general.alignment", "general.file_type", "general.quantization_version")
    for key, value in g.metadata.items():
        if key in skip or key.startswith("split."):
            continue
        vtype, etype = g.metadata_types[key]
        w.add_key_value(key, value, gguf.GGUFValueType(vtype),
                        sub_type=gguf.GGUFValueType(etype) if etype is not None else None)
    tensors = [_Tensor(name, info.shape, g.tensor(name)) if len(info.shape) == 2 and
               info.ggml_type != GGMLType.F32 else _Tensor.of(name, g.tensor(name)) for name, info in g.infos.items()]
    n_layers = int(g.metadata.get(f"{arch}.block_count", 0))
    return w, tensors, n_layers, "output.weight" not in g.infos


def _hf_source(src: Path, pre: str | None) -> tuple[gguf.GGUFWriter, list[_Tensor], int, bool]:
    """A writer holding the GGUF metadata for an HF directory, its tensors, layer count and tied flag."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ModelFileError(f"{src}: no config.json; pass an HF-style model directory or a .gguf file.")
    arch = _hf_arch(jsonfile.read(config_path))
    config, tensors = load_hf_dir(src)
    cfg = ModelConfig.from_hf(config)
    out = _hf_tensors(config, tensors, cfg)
    w = gguf.GGUFWriter(None, "llama" if arch == "mistral" else arch)
    _hf_metadata(w, src, config, cfg, sum(int(np.prod(t.shape, dtype=np.int64)) for t in out))
    _vocab(w, src, arch, cfg.vocab_size, pre)
    return w, out, cfg.n_layers, cfg.tie_embeddings


def _encoded(t: _Tensor, target: GGMLType) -> np.ndarray:
    """t's bytes as `target`: uint8 [rows, row_bytes]; copied as they are when already of that type."""
    q = t.data
    if target == q.ggml_type:
        return q.raw
    step = max(1, _CHUNK_ELEMS // q.shape[1])
    return np.concatenate([quantize(q.rows(slice(i, i + step)), target) for i in range(0, q.shape[0], step)])


def convert(src: str | Path, out: str | Path, file_type: str, tokenizer_pre: str | None = None,
            progress: bool = True) -> dict[str, GGMLType]:
    """Write `out` (GGUF) from `src` (HF-style directory or GGUF) with the tensor types of `file_type`
    (a FILE_TYPES key). Returns {tensor name: type written}."""
    if file_type not in FILE_TYPES:
        raise InvalidRequestError(f"unknown quantization type {file_type!r}; choose one of "
                                  f"{', '.join(FILE_TYPES)}.")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ModelFileError(f"{src}: no such file or directory; pass an HF-style model directory or a .gguf file.")
    if out.resolve() == src.resolve():
        raise InvalidRequestError(f"{out}: the output would overwrite the source; choose another path.")
    w, tensors, n_layers, tied = _hf_source(src, tokenizer_pre) if src.is_dir() else _gguf_source(src)
    ftype = FILE_TYPES[file_type][0]
    w.add_file_type(int(ftype))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = {t.name: tensor_type(t.name, t.shape, file_type, n_layers, tied) for t in tensors}
    for t in tensors:
        rows = int(np.prod(t.shape[:-1], dtype=np.int64)) if len(t.shape) > 1 else 1
        block_elems, block_bytes = block_shape(types[t.name])
        nbytes = rows * (t.shape[-1] // block_elems) * block_bytes
        byte_shape = (*t.shape[:-1], t.shape[-1] // block_elems * block_bytes)
        w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=gguf.GGMLQuantizationType(
            int(types[t.name])))
    tmp = out.with_name(out.name + ".part")  # renamed when complete: an interrupted run leaves no OUT
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        total = sum(int(np.prod(t.shape, dtype=np.int64)) for t in tensors)
        with tqdm(total=total, unit="w", unit_scale=True, desc=f"{file_type} {out.name}", disable=not progress,
                  file=sys.stderr) as bar:
            for t in tensors:
                bar.set_postfix_str(f"{t.name} {types[t.name].name}", refresh=False)
                w.write_tensor_data(_encoded(t, types[t.name]).reshape(-1))
                bar.update(int(np.prod(t.shape, dtype=np.int64)))
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    w.close()
    tmp.replace(out)
    return types
