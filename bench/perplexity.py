"""Perplexity of a model on a text, and KL divergence against a base model's saved logits (llama-perplexity's method).

    python -m bench.perplexity [--model ID_OR_PATH] --file TEXT [--ctx 512] [--chunks N] [--json out.json]
        [--save-logits base.npz | --kl-base base.npz] [--activations float32|int8] [--device auto|cpu|cuda]
        [--threads N] [--kernels numba|numpy] [--vs llama.cpp]

The text is cut into non-overlapping chunks of --ctx tokens, each evaluated from an empty KV cache (its first
token replaced by BOS when the model's tokenizer adds BOS); in each chunk the tokens after the first half are
scored (positions ctx//2 .. ctx-2 predict the tokens ctx//2+1 .. ctx-1). PPL = exp(mean NLL), printed with its
standard error. The text must hold at least 2 x ctx tokens. --save-logits FILE keeps the top-32 log-probs of
each scored token (198 bytes per token); --kl-base FILE compares this model with the one that saved FILE on
the same text and ctx (KL divergence, top-1 agreement, change of the correct token's probability). The method
and the file format: engine/runtime/quality.py and README's Quality section. --vs llama.cpp (a GGUF model,
llama-cpp-python installed) runs the same token ids through llama.cpp too and prints both perplexities, the KL
divergence of ours from llama.cpp's distributions and each engine's tokens/s.

Exit status: 0, 2 for bad input (flags, text, a logits file that does not match), 1 for other engine errors
(a model that cannot be loaded), 130 on Ctrl-C.
"""
import argparse
import json
import sys
import time

import numpy as np

import engine
from engine.errors import ContextOverflowError, EngineError, InvalidRequestError
from engine.runtime import quality


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.perplexity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--model", default=None, help="registry id, .gguf path, HF-style directory or HF repo id "
                   "(default: the embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--file", required=True, help="the text (UTF-8), at least 2 x ctx tokens")
    p.add_argument("--ctx", type=int, default=None, help="tokens per chunk (default 512, or the --kl-base "
                   "file's)")
    p.add_argument("--chunks", type=int, default=None, help="evaluate at most N chunks (default: all, or the "
                   "logits file's)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: ENGINE_THREADS or all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to compute (default: ENGINE_DEVICE or auto)")
    p.add_argument("--activations", choices=("float32", "int8"), default=None,
                   help="one-token mat-vec activations (default: ENGINE_ACTIVATIONS or float32)")
    p.add_argument("--kernels", choices=("numba", "numpy"), default=None,
                   help="CPU kernels (default: ENGINE_KERNELS or numba)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    kl = p.add_mutually_exclusive_group()
    kl.add_argument("--save-logits", default=None, metavar="FILE",
                    help=f"save the top-{quality.TOP_K} log-probs of every scored token (the base for --kl-base)")
    kl.add_argument("--kl-base", default=None, metavar="FILE",
                    help="report the KL divergence of this model from the one that saved FILE (same text, ctx)")
    kl.add_argument("--vs", choices=("llama.cpp",), default=None,
                    help="also run llama.cpp (llama-cpp-python) on the same ids: both PPLs, KL of ours from it")
    return p.parse_args(argv)


def print_progress(chunk: int, total: int, ppl: float, tokens_per_s: float) -> None:
    """llama-perplexity's running line, [1]18.3012,[2]17.9345,..., then the throughput after the last chunk."""
    print(f"[{chunk}]{ppl:.4f},", end="", file=sys.stderr, flush=True)
    if chunk == total:
        print(f" ({tokens_per_s:.1f} tok/s)", file=sys.stderr, flush=True)


def report(r: quality.QualityResult) -> str:
    """The lines printed on stdout: PPL, then the KL statistics when there are any."""
    lines = [f"{r.chunks} chunks of {r.ctx} tokens, {len(r.nll)} scored, {r.tokens / r.seconds:.1f} tok/s",
             f"PPL = {r.ppl:.4f} +/- {r.se:.5f}"]
    k = r.kl
    if k is not None:
        lines += [f"PPL(base) = {k.ppl_base:.4f} ({k.base_model})",
                  f"KL divergence (top-{quality.TOP_K} + rest): mean {k.kl_mean:.6f}, median {k.kl_median:.6f}, "
                  f"p99 {k.kl_p99:.6f}, max {k.kl_max:.6f}",
                  f"top-1 agreement: {100 * k.top1:.2f} %",
                  f"correct token probability change: mean {100 * k.dp_mean:+.3f} %, p1 {100 * k.dp_p1:+.3f} %, "
                  f"p99 {100 * k.dp_p99:+.3f} %"]
    return "\n".join(lines)


def llama_cpp_records(path: str, todo: list[list[int]], ctx: int, vocab: int, threads: int | None):
    """llama.cpp's records of the chunks todo (quality.chunks), scored as ours are: (SavedLogits, tok/s)."""
    from bench.make_models import import_llama_cpp
    if not str(path).endswith(".gguf"):
        raise InvalidRequestError("--vs llama.cpp needs a .gguf model.", param="vs")
    llama = import_llama_cpp().Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=threads,
                                     n_threads_batch=threads, logits_all=True, verbose=False)
    first, rows, tops, t0 = quality.first_scored(ctx), quality.slice_rows(vocab), [], time.perf_counter()
    for number, chunk in enumerate(todo, 1):
        llama.reset()
        llama.eval(chunk)
        for lo in range(first, ctx - 1, rows):
            hi = min(ctx - 1, lo + rows)
            lp = quality.log_softmax(np.asarray(llama.scores[lo:hi, :vocab], dtype=np.float32))
            tops.append(quality.TopK.of(lp, np.asarray(chunk[lo + 1:hi + 1])))
        print(f"[{number}]", end="", file=sys.stderr, flush=True)
    tokens_per_s = len(todo) * ctx / (time.perf_counter() - t0)
    print(f" llama.cpp ({tokens_per_s:.1f} tok/s)", file=sys.stderr)
    saved = quality.SavedLogits(f"llama.cpp {path}", ctx, vocab, np.asarray(todo, dtype=np.int32),
                                quality.TopK.concat(tops))
    return saved, tokens_per_s


def side_by_side(r: quality.QualityResult, theirs: quality.SavedLogits, their_tps: float) -> str:
    """Ours and llama.cpp on the same ids: PPL ± SE and tok/s of each, and the KL of ours from llama.cpp's."""
    their_ppl, their_se = quality.ppl_and_se(-theirs.top.target.astype(np.float64))
    k = r.kl
    return "\n".join([f"{'engine':<10} {'PPL':>12} {'+/- SE':>10} {'tok/s':>8}",
                      f"{'ours':<10} {r.ppl:>12.4f} {r.se:>10.5f} {r.tokens / r.seconds:>8.1f}",
                      f"{'llama.cpp':<10} {their_ppl:>12.4f} {their_se:>10.5f} {their_tps:>8.1f}",
                      f"KL(llama.cpp || ours): mean {k.kl_mean:.6f}, p99 {k.kl_p99:.6f}, max {k.kl_max:.6f}; "
                      f"top-1 agreement {100 * k.top1:.2f} %"])


def run(a: argparse.Namespace) -> None:
    text = quality.read_text(a.file)
    base = quality.SavedLogits.load(a.kl_base) if a.kl_base else None
    if a.ctx is None:
        a.ctx = base.ctx if base is not None else 512
    quality.check_ctx(a.ctx)
    llm = engine.load(a.model, n_ctx=a.ctx, threads=a.threads, activations=a.activations, device=a.device,
                      kernels=a.kernels)
    print(f"loaded {llm.source.id} in {llm.load_s:.2f} s; {llm.runner.describe()}", file=sys.stderr)
    ids = quality.text_ids(llm, text)
    their_tps = None
    if a.vs:
        bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
        base, their_tps = llama_cpp_records(llm.where, quality.chunks(ids, a.ctx, bos, a.chunks), a.ctx,
                                            llm.config.vocab_size, a.threads)
    r = quality.evaluate(llm, ids, a.ctx, a.chunks, base=base, keep_top_k=quality.TOP_K if a.save_logits else 0,
                         progress=print_progress)
    print(side_by_side(r, base, their_tps) if a.vs else report(r))
    if a.save_logits:
        r.saved.save(a.save_logits)
        print(f"saved the top-{quality.TOP_K} log-probs of {len(r.nll)} tokens to {a.save_logits}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": str(llm.source.id), "file": a.file, **r.to_dict()}, f, indent=2)


def main(argv=None) -> int:
    """Exit status: 0; 2 for bad input (argparse's own errors exit 2 too); 1 for other engine errors."""
    a = parse_args(argv)
    try:
        run(a)
        return 0
    except (EngineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (InvalidRequestError, ContextOverflowError, OSError)) else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
