"""engine.formats.convert (python -m engine.quantize) against llama.cpp: its converter + quantizer files
(tests/fixtures/tiny), llama_model_quantize, llama.cpp's logits and tokenizer; our engine's logits against
transformers on the gguf-py-dequantized weights."""
import ctypes
import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer as HFTokenizer

import engine
from engine.cli.quantize import main
from engine.errors import InvalidRequestError, ModelFileError, TokenizerError, UnsupportedModelError
from engine.formats.convert import _llama3_rope_freqs, convert
from engine.formats.gguf import read_metadata
from engine.text.tokenizer import Tokenizer
from gguf_copy import copy_gguf
from reference import gguf_logits

TINY = Path(__file__).parents[2] / "fixtures" / "tiny"
IDS = [5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2, 64, 128, 33, 9, 101]
TEXTS = ["Hello, world! How are you?", "def fibonacci(n: int) -> int:\n    return n", "Café 42 🙂 <|im_start|>user",
         "  spaces   and\ttabs\n\nnew lines 1,000,000"]
SPM_TEXTS = TEXTS + ["[INST] Once upon a time [/INST] the end</s>", "<start_of_turn>user\nhi<end_of_turn>\n"]
LLAMA_CPP_FILES = {"q8_0": "model-Q8_0.gguf", "q4_k_m": "model-Q4_K_M.gguf"}  # converter / llama_model_quantize
BPE_ARCHS = ["llama", "qwen2", "qwen3"]  # tokenizer.json; llama.cpp files of both types
SPM_ARCHS = ["gemma3", "mistral_spm"]  # tokenizer.model (SentencePiece); llama.cpp's converter file in q8_0 only
CASES = [(a, t) for a in BPE_ARCHS for t in LLAMA_CPP_FILES] + [(a, "q8_0") for a in SPM_ARCHS]


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(path).tensors}


def _fields(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: (tuple(f.types), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _llama_cpp_logits(path: Path, ids) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(list(ids))
    out = np.array(llm.scores[:len(ids)], dtype=np.float64)
    llm.close()
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Our files from the tiny HF directories: {(arch, type): path}, made once."""
    out = tmp_path_factory.mktemp("quantized")
    files = {}
    for arch, t in CASES:
        files[arch, t] = out / f"{arch}-{t}.gguf"
        convert(TINY / arch / "hf", files[arch, t], t, progress=False)
    return files


@pytest.mark.parametrize(("arch", "file_type"), CASES)
def test_hf_matches_llama_cpp_files(converted, arch, file_type):
    """Same tensors (names, types, bytes: Q/K permutation, rope_freqs, tied output, Q4_K_M mix, Gemma 3 norms
    1 + w) and the same metadata (keys, value types, values: SentencePiece pieces, scores, token types, added
    tokens, gemma3 keys) as llama.cpp's converter + quantizer; llama.cpp's logits agree."""
    ours, theirs = converted[arch, file_type], TINY / arch / LLAMA_CPP_FILES[file_type]
    assert _tensors(ours) == _tensors(theirs)
    assert _fields(ours) == _fields(theirs)
    diff = np.abs(_llama_cpp_logits(ours, IDS) - _llama_cpp_logits(theirs, IDS)).max()
    print(f"{arch} {file_type}: max |llama.cpp logits, our file - llama.cpp's file| = {diff:.3g}")
    assert diff == 0.0


def _converter_rope_freqs(scaling: dict, theta: float, dim: int) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py computes it (LlamaModel, llama3 scaling), in torch."""
    import math

    import torch

    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


@pytest.mark.parametrize("theta", [1e4, 5e5, 123456.0, 1e6])
@pytest.mark.parametrize("dim", [32, 64, 128, 256])
@pytest.mark.parametrize("old", [64, 1000, 8192])
def test_llama3_rope_freqs_match_the_converter(theta, dim, old):
    """Equal to the converter's torch computation up to its rounding: torch's float32 power is accurate to an
    ulp, and in the smoothing band r = 1 / ((1 - s) / f + s), s = (old / wavelen - low) / (high - low), a relative
    error e in a frequency becomes kappa * e in r with kappa = (1 - 1/f) * r * (old / wavelen) / (high - low);
    each side then rounds a few more times. (The fixture files above pin the exact bytes for one configuration.)"""
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": old}
    ours, theirs = _llama3_rope_freqs(scaling, theta, dim), _converter_rope_freqs(scaling, theta, dim)
    wavelen = 2 * np.pi * theta ** (np.arange(0, dim, 2) / dim)
    kappa = (1 - 1 / 8.0) * theirs * (old / wavelen) / 3.0
    ulp = np.finfo(np.float32).eps
    assert np.all(np.abs(ours - theirs) <= (kappa + 4) * ulp * theirs)


@pytest.mark.parametrize(("arch", "file_type"), CASES)
def test_engine_logits_on_our_file(converted, arch, file_type):
    """Our engine on our file vs transformers (float64) on the gguf-py-dequantized weights of that file."""
    path = converted[arch, file_type]
    diff = np.abs(engine.load(str(path)).logits(IDS) - gguf_logits(path, IDS)).max()
    assert diff <= 5e-3, diff


@pytest.mark.parametrize("arch", BPE_ARCHS + SPM_ARCHS)
def test_tokenizer_round_trip(converted, arch):
    """The tokenizer written into the GGUF encodes like the HF tokenizer.json, in our engine and in llama.cpp;
    a SentencePiece one also like the tokenizer.model itself (sentencepiece)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = converted[arch, "q8_0"]
    hf = HFTokenizer.from_file(str(TINY / arch / "hf" / "tokenizer.json"))
    ours = Tokenizer.from_gguf(read_metadata(path))
    llm = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    # with a dummy prefix (Mistral), SentencePiece and llama.cpp prefix a text that starts with a space with one
    # more, HF's Metaspace (prepend_scheme "first") does not; and llama.cpp also prefixes the text after each
    # special token: there the reference is llama.cpp on the same file
    dummy_prefix = arch == "mistral_spm"
    for text in TEXTS:
        if not (dummy_prefix and text.startswith(" ")):
            want = hf.encode(text).ids  # with the BOS the post-processor adds (llama, SPM) or not (qwen)
            assert ours.encode(text) == want, text
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == want, text
    if arch in SPM_ARCHS:
        sp = pytest.importorskip("sentencepiece").SentencePieceProcessor(
            model_file=str(TINY / arch / "hf" / "tokenizer.model"))
        for text in TEXTS:
            assert ours.encode(text, add_special=False) == sp.encode(text), text
        for text in SPM_TEXTS:
            assert ours.encode(text) == llm.tokenize(text.encode(), add_bos=True, special=True), text
    llm.close()


def test_requantize_gguf_matches_llama_quantize(tmp_path):
    """From llama.cpp's F32 GGUF, our q4_k_m is llama_model_quantize's Q4_K_M byte for byte, metadata included."""
    out = tmp_path / "llama-q4_k_m.gguf"
    convert(TINY / "llama" / "model-F32.gguf", out, "q4_k_m", progress=False)
    theirs = TINY / "llama" / "model-Q4_K_M.gguf"
    assert _tensors(out) == _tensors(theirs)
    assert _fields(out) == _fields(theirs)


def test_requantize_quantized_gguf(tmp_path):
    """A Q8_0 GGUF dequantized and requantized to q4_0: llama.cpp's mix (Q6_K output), loads in both engines."""
    out = tmp_path / "qwen3-q4_0.gguf"
    types = convert(TINY / "qwen3" / "model-Q8_0.gguf", out, "q4_0", progress=False)
    assert types["token_embd.weight"].name == "Q6_K"  # tied: the embedding is the output
    assert types["blk.0.ffn_up.weight"].name == "Q4_0" and types["blk.0.attn_norm.weight"].name == "F32"
    src = _fields(TINY / "qwen3" / "model-Q8_0.gguf")
    got = _fields(out)
    assert got.pop("general.file_type")[1] == gguf.LlamaFileType.MOSTLY_Q4_0
    src.pop("general.file_type")
    assert got == src
    diff = np.abs(engine.load(str(out)).logits(IDS) - gguf_logits(out, IDS)).max()
    assert diff <= 5e-3, diff
    assert np.isfinite(_llama_cpp_logits(out, IDS)).all()


def _odd_shaped_model(root: Path) -> Path:
    """A tiny Llama with hidden 96 and intermediate 80: rows fit no K-quant block (and ffn_down's fit no 32-block)."""
    hf = root / "hf"
    hf.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / "llama" / "hf" / name, hf / name)
    config = json.loads((TINY / "llama" / "hf" / "config.json").read_text())
    config.update(hidden_size=96, intermediate_size=80, num_attention_heads=3, num_key_value_heads=1, head_dim=32,
                  rope_scaling=None)
    (hf / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(7)
    d, f, v = 96, 80, config["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, d), "lm_head.weight": (v, d), "model.norm.weight": (d,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (32, d),
                       p + "self_attn.v_proj.weight": (32, d), p + "self_attn.o_proj.weight": (d, d),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
    tensors = {n: (1 + 0.2 * rng.standard_normal(s) if len(s) == 1 else rng.standard_normal(s) / np.sqrt(s[1]))
               .astype(np.float32) for n, s in shapes.items()}
    save_file(tensors, str(hf / "model.safetensors"))
    return hf


def test_fallback_types_match_llama_quantize(tmp_path):
    """Rows that are not multiples of 256 (or 32): the same fallback types and bytes as llama_model_quantize."""
    llama_cpp = pytest.importorskip("llama_cpp")
    hf = _odd_shaped_model(tmp_path)
    f16 = tmp_path / "f16.gguf"
    convert(hf, f16, "f16", progress=False)  # llama.cpp quantizes from a file; both start from these F16 weights
    theirs = tmp_path / "theirs.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    ours = tmp_path / "ours.gguf"
    types = convert(f16, ours, "q4_k_m", progress=False)
    assert types["token_embd.weight"].name == "Q5_0"  # Q4_K -> Q5_0
    assert types["output.weight"].name == "Q8_0"  # Q6_K -> Q8_0
    assert types["blk.0.ffn_down.weight"].name == "F16"  # 80 is not a multiple of 32 either
    assert _tensors(ours) == _tensors(theirs)


def test_bad_input(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        convert(tmp_path / "missing", tmp_path / "o.gguf", "q8_0")
    with pytest.raises(InvalidRequestError, match="q4_k_m"):
        convert(TINY / "qwen2" / "hf", tmp_path / "o.gguf", "q3_k")
    with pytest.raises(ModelFileError, match="config.json"):
        convert(tmp_path, tmp_path / "o.gguf", "q8_0")
    src = TINY / "qwen2" / "model-Q8_0.gguf"
    with pytest.raises(InvalidRequestError, match="overwrite"):
        convert(src, src, "q8_0")
    bad_arch = tmp_path / "gpt2"
    bad_arch.mkdir()
    (bad_arch / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        convert(bad_arch, tmp_path / "o.gguf", "q8_0")
    odd_gguf = tmp_path / "falcon.gguf"
    copy_gguf(src, odd_gguf, set_keys={"general.architecture": "falcon"})
    with pytest.raises(UnsupportedModelError, match="falcon"):
        convert(odd_gguf, tmp_path / "o.gguf", "q8_0")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(TINY / "qwen2" / "hf", no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        convert(no_tok, tmp_path / "o.gguf", "q8_0")
    assert not list(tmp_path.glob("o.gguf*"))


def test_sentencepiece_errors(tmp_path, monkeypatch):
    """A tokenizer.model that is not SentencePiece, or no sentencepiece package: TokenizerError saying what to do."""
    bad = tmp_path / "bad"
    shutil.copytree(TINY / "gemma3" / "hf", bad)
    (bad / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match="SentencePiece"):
        convert(bad, tmp_path / "o.gguf", "q8_0")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails as when it is not installed
    with pytest.raises(TokenizerError, match="pip install sentencepiece"):
        convert(TINY / "gemma3" / "hf", tmp_path / "o.gguf", "q8_0")
    assert not list(tmp_path.glob("o.gguf*"))


def test_cli(tmp_path, capsys):
    out = tmp_path / "q.gguf"
    assert main([str(TINY / "qwen2" / "hf"), "--type", "q6_k", "-o", str(out)]) == 0
    assert {t for t, _ in _tensors(out).values()} == {"F32", "Q6_K"}
    assert "wrote" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--type", "q8_0", "-o", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(TINY / "qwen2" / "hf"), "--type", "q3_k", "-o", str(out)])


def test_cli_quality_report(tmp_path, capsys):
    """--report: perplexity of source and output on the shipped text and the output's KL from the source (the
    scoring itself is checked against a plain forward in tests/bench/test_perplexity.py). Both reports score the
    same source; F16 loses less than Q4_0."""
    src = TINY / "qwen3" / "hf"
    reports = {}
    for file_type in ("f16", "q4_0"):
        out, js = tmp_path / f"{file_type}.gguf", tmp_path / f"{file_type}.json"
        assert main([str(src), "--type", file_type, "-o", str(out), "--report-file", str(js), "--report-ctx", "64",
                     "--report-chunks", "3", "--threads", "1"]) == 0
        reports[file_type] = json.loads(js.read_text())
        assert "top-1 agreement" in capsys.readouterr().out
    f16, q4 = reports["f16"], reports["q4_0"]
    assert f16["text"] == "sotu_1962.txt" and f16["base"]["chunks"] == f16["quantized"]["chunks"] == 3
    assert f16["base"]["ppl"] == q4["base"]["ppl"] and f16["base"]["scored_tokens"] == 3 * 31
    assert 0 < f16["quantized"]["kl"]["kl_mean"] < q4["quantized"]["kl"]["kl_mean"]
    assert f16["quantized"]["kl"]["top1"] >= q4["quantized"]["kl"]["top1"]
    assert main([str(src), "--type", "q8_0", "-o", str(tmp_path / "x.gguf"), "--report", "--report-ctx", "100000"]) == 2
    assert "error:" in capsys.readouterr().err
