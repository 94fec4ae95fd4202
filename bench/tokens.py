"""Token throughput: prefill and decode tok/s, achieved GB/s and peak memory; ours against llama.cpp and transformers.

    python -m bench.tokens --model ID_OR_PATH [--prompt-len 128] [--gen 64] [--threads 2] [--repeat 1]
        [--activations float32|int8] [--device cpu|cuda]
        [--vs llama.cpp] [--vs transformers] [--hf-dir DIR] [--no-ours] [--json out.json]

Each engine runs in its own subprocess (so peak RSS is its own) on the same prompt: prompt-len pseudo-random
ordinary token ids. Every engine first runs an untimed warm-up (the same prefill, then 2 decode steps): numba
compilation and cache loading, first-call allocations. Then, best of --repeat runs on a fresh cache:
    prefill: one forward over the prompt, and the argmax of its last logits (time to first token);
    decode:  gen single-token forwards, each fed the previous argmax (greedy; end-of-sequence is ignored).
GB/s = weight bytes read per decoded token × decode tok/s, next to a read bandwidth measured here (a parallel
numba sum over 400 MB with the same thread count). Bytes read per token: every weight tensor as stored (the
token embedding only when it is also the output matrix, i.e. tied; otherwise one row of it is negligible).
Peers: llama-cpp-python on the same GGUF (default KV cache type, f16); transformers in float32 on --hf-dir (or
the model itself when it is an HF directory; a GGUF is dequantized by transformers' own GGUF loader).
"""
import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ("ours", "llama.cpp", "transformers")
WARMUP_GEN = 2


def prompt_ids(n: int, vocab: int) -> list[int]:
    """n fixed pseudo-random ids, clear of the special tokens at either end of common vocabularies."""
    hi = min(vocab, 32000)
    return np.random.default_rng(0).integers(min(100, hi // 4), hi, n).tolist()


def timed_runs(first_token, next_token, ids: list[int], gen: int, repeat: int) -> dict:
    """first_token(ids) -> argmax after a fresh prefill; next_token(tok) -> argmax after one more token."""
    tok = first_token(ids)  # warm-up, same shapes as the timed runs
    for _ in range(WARMUP_GEN):
        tok = next_token(tok)
    prefill, decode = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tok = first_token(ids)
        t1 = time.perf_counter()
        for _ in range(gen):
            tok = next_token(tok)
        t2 = time.perf_counter()
        prefill.append(len(ids) / (t1 - t0))
        decode.append(gen / (t2 - t1))
    return {"prefill_tps": max(prefill), "decode_tps": max(decode)}


def run_ours(path: str, a) -> dict:
    import engine

    llm = engine.load(path, n_ctx=a.prompt_len + a.gen + 8, threads=a.threads, activations=a.activations,
                      device=a.device)
    model, runner = llm.model, llm.runner
    state = {}

    def first_token(ids):
        state["cache"] = cache = llm.new_cache()
        return int(runner.forward(np.asarray(ids), np.arange(len(ids)), cache, last_only=True)[-1].argmax())

    def next_token(tok):
        cache = state["cache"]
        return int(runner.forward(np.asarray([tok]), np.asarray([cache.length]), cache, last_only=True)[-1].argmax())

    tensors = [model.output, model.output_norm] + [w for layer in model.layers for w in layer.values()]
    res = timed_runs(first_token, next_token, prompt_ids(a.prompt_len, llm.config.vocab_size), a.gen, a.repeat)
    return dict(res, load_s=llm.load_s, weight_bytes=sum(int(w.nbytes) for w in tensors))


def gguf_read_bytes(path: str) -> int:
    """Bytes of a GGUF's tensors, less the token embedding when the file has a separate output matrix."""
    from gguf import GGUFReader
    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    return sum(sizes.values()) - (sizes["token_embd.weight"] if "output.weight" in sizes else 0)


def run_llama_cpp(path: str, a) -> dict:
    from bench.make_models import import_llama_cpp
    llama_cpp = import_llama_cpp()

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=a.prompt_len + a.gen + 8, n_batch=max(512, a.prompt_len),
                          n_threads=a.threads, n_threads_batch=a.threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0

    def first_token(ids):
        llm.reset()
        llm.eval(ids)
        return int(np.argmax(llm.scores[llm.n_tokens - 1]))

    def next_token(tok):
        llm.eval([tok])
        return int(np.argmax(llm.scores[llm.n_tokens - 1]))

    res = timed_runs(first_token, next_token, prompt_ids(a.prompt_len, llm.n_vocab()), a.gen, a.repeat)
    return dict(res, load_s=load_s, weight_bytes=gguf_read_bytes(path))


def run_transformers(path: str, a) -> dict:
    os.environ["TQDM_DISABLE"] = "1"  # transformers' loading progress bars
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)

    t0 = time.perf_counter()
    p = Path(path)
    if p.is_dir():
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    state = {}

    @torch.inference_mode()
    def step(ids):
        out = model(input_ids=torch.tensor([ids]), past_key_values=state.get("past"), use_cache=True)
        state["past"] = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def first_token(ids):
        state.clear()
        return step(ids)

    read = sum(t.nbytes for _, t in model.named_parameters())  # a tied embedding appears once
    if not model.config.tie_word_embeddings:
        read -= model.get_input_embeddings().weight.nbytes
    res = timed_runs(first_token, lambda tok: step([tok]), prompt_ids(a.prompt_len, model.config.vocab_size),
                     a.gen, a.repeat)
    return dict(res, load_s=load_s, weight_bytes=read)


RUNNERS = {"ours": run_ours, "llama.cpp": run_llama_cpp, "transformers": run_transformers}
REQUIRES = {"llama.cpp": "llama_cpp", "transformers": "transformers"}


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux from VmHWM: ru_maxrss would include the parent's peak, which
    Linux carries over fork and exec."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: ru_maxrss is in bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


def child(engine: str, path: str, a) -> None:
    res = RUNNERS[engine](path, a)
    res["peak_rss_mb"] = peak_rss_mb()
    Path(a.result).write_text(json.dumps(res))


def spawn(engine: str, path: str, a) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp, "result.json")
        cmd = [sys.executable, "-m", "bench.tokens", "--model", a.model, "--child", engine, "--child-path", path,
               "--result", str(result), "--prompt-len", str(a.prompt_len), "--gen", str(a.gen),
               "--threads", str(a.threads), "--repeat", str(a.repeat), "--activations", a.activations,
               "--device", a.device]
        r = subprocess.run(cmd)
        if r.returncode != 0 or not result.exists():
            print(f"{engine}: failed (exit status {r.returncode})", file=sys.stderr)
            return None
        return json.loads(result.read_text())


def read_bandwidth(threads: int, mb: int = 400) -> float:
    """GB/s of a parallel sum over a float32 array of mb MB, best of 10 (it varies run to run on a shared host)."""
    import numba
    numba.set_num_threads(threads)

    @numba.njit(parallel=True, fastmath=True)
    def total(x):
        s = np.float32(0)
        for i in numba.prange(x.shape[0]):
            s += x[i]
        return s

    a = np.ones(mb * 2**20 // 4, dtype=np.float32)
    total(a)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        total(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def gpu_read_bandwidth(mb: int = 1024) -> float:
    """GB/s of a CuPy sum over a float32 array of mb MB in GPU memory, best of 10 (timed with CUDA events)."""
    import cupy
    a = cupy.ones(mb * 2**20 // 4, dtype=cupy.float32)
    a.sum()
    best = float("inf")
    for _ in range(10):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        a.sum()
        end.record()
        end.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return a.nbytes / best / 1e9


def report(results: dict, bw: float, load: float, a, model: str) -> dict:
    print(f"\nmodel {model} | prompt {a.prompt_len} tokens, {a.gen} generated | {a.threads} threads | our "
          f"activations {a.activations} | best of "
          f"{a.repeat} | warm-up excluded | measured read bandwidth {bw:.1f} GB/s | load average before "
          f"{load:.2f}")
    print(f"{'engine':<13} {'prefill tok/s':>13} {'decode tok/s':>12} {'weights MB':>10} {'GB/s':>6} {'% bw':>5} "
          f"{'peak RSS MB':>11} {'load s':>6}")
    for name, r in results.items():
        r["gbs"] = r["weight_bytes"] * r["decode_tps"] / 1e9
        r["bw_fraction"] = r["gbs"] / bw
        print(f"{name:<13} {r['prefill_tps']:>13.1f} {r['decode_tps']:>12.2f} {r['weight_bytes'] / 1e6:>10.0f} "
              f"{r['gbs']:>6.2f} {100 * r['bw_fraction']:>5.0f} {r['peak_rss_mb']:>11.0f} {r['load_s']:>6.2f}")
    ratios = {}
    if "ours" in results:
        for peer in ("llama.cpp", "transformers"):
            if peer in results:
                o, p = results["ours"], results[peer]
                ratios[f"ours/{peer}"] = {k: o[k] / p[k] for k in ("prefill_tps", "decode_tps", "peak_rss_mb")}
                x = ratios[f"ours/{peer}"]
                print(f"ours / {peer}: prefill {x['prefill_tps']:.2f}x, decode {x['decode_tps']:.2f}x, "
                      f"peak RSS {x['peak_rss_mb']:.2f}x")
    return {"model": model, "prompt_len": a.prompt_len, "gen": a.gen, "threads": a.threads, "repeat": a.repeat,
            "activations": a.activations,
            "read_bandwidth_gbs": bw, "load_average_before": load, "llama_cpp_kv_type": "f16 (default)",
            "transformers_dtype": "float32", "results": results, "ratios": ratios}


def positive(text: str) -> int:
    """The argparse type of the count flags: an integer >= 1. (Not engine.cli.common's: the peers' child processes
    parse these flags too, and must not import the engine into the peak memory they report.)"""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="registry id, .gguf path or HF-style directory")
    ap.add_argument("--prompt-len", type=positive, default=128, metavar="N", help="prompt tokens (default: 128)")
    ap.add_argument("--gen", type=positive, default=64, metavar="N", help="decoded tokens (default: 64)")
    ap.add_argument("--threads", type=positive, default=2, metavar="N", help="threads of every engine (default: 2)")
    ap.add_argument("--repeat", type=positive, default=1, metavar="N",
                    help="timed runs per engine; the best is reported (default: 1)")
    ap.add_argument("--activations", choices=("float32", "int8"), default="float32",
                    help="our one-token mat-vec activations (int8: the opt-in integer path; default: float32)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where our engine runs (default: cpu)")
    ap.add_argument("--vs", action="append", default=[], choices=ENGINES[1:],
                    help="peer engine (repeatable; default: none)")
    ap.add_argument("--hf-dir", default=None, help="HF directory for transformers (default: the model)")
    ap.add_argument("--no-ours", action="store_true", help="run the peers only")
    ap.add_argument("--json", default=None, help="write every figure to this file (default: none)")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--child-path", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, a.child_path, a)

    from engine.formats import hub
    source = hub.resolve(a.model)
    model_path = str(source.gguf_paths[0] if source.is_gguf else source.hf_dir)
    paths = {"ours": model_path, "llama.cpp": model_path, "transformers": a.hf_dir or model_path}
    engines = ([] if a.no_ours else ["ours"]) + list(dict.fromkeys(a.vs))
    if "llama.cpp" in engines and not source.is_gguf:
        print("llama.cpp: skipped (the model is not a GGUF file)")
        engines.remove("llama.cpp")
    for peer in [e for e in engines if e in REQUIRES]:
        if importlib.util.find_spec(REQUIRES[peer]) is None:
            print(f"{peer}: skipped ({REQUIRES[peer]} cannot be imported; pip install -e '.[bench]')")
            engines.remove(peer)

    load = os.getloadavg()[0]  # other work on the machine skews every figure
    bw = gpu_read_bandwidth() if a.device == "cuda" else read_bandwidth(a.threads)
    results = {}
    for e in engines:
        print(f"running {e} on {paths[e]} ...", flush=True)
        r = spawn(e, paths[e], a)
        if r:
            results[e] = r
    out = report(results, bw, load, a, model_path)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
