"""`python -m engine.quantize SRC --type TYPE -o OUT.gguf`: write a quantized GGUF file
(engine/formats/convert.py)."""
import argparse
import json
import sys
from pathlib import Path

from engine.cli.common import int_in, new_parser
from engine.errors import EngineError
from engine.formats import convert
from engine.runtime.quality import MIN_CTX

DESCRIPTION = """Write a quantized GGUF file from an HF-style model directory or a GGUF file, as llama.cpp's
convert_hf_to_gguf.py and llama-quantize do. --report then measures what quantizing cost: perplexity and KL
divergence on a shipped text."""
EXIT_STATUS = """exit status: 0 on success; 1 when SRC cannot be converted; 2 for a bad flag or a report that
cannot run (e.g. --report-ctx past the model's context)."""


def build_parser() -> argparse.ArgumentParser:
    ap = new_parser("python -m engine.quantize", DESCRIPTION, EXIT_STATUS)
    ap.add_argument("src", metavar="SRC", help="HF-style model directory or .gguf file")
    ap.add_argument("--type", required=True, choices=list(convert.FILE_TYPES),
                    help="tensor type mix (as llama-quantize)")
    ap.add_argument("-o", "--output", required=True, metavar="OUT", help="the .gguf file to write")
    ap.add_argument("--tokenizer-pre", default=None, metavar="NAME", help="llama.cpp pre-tokenizer name "
                    "(tokenizer.ggml.pre) when it cannot be detected (default: detected)")
    ap.add_argument("--report", action="store_true",
                    help="then measure what quantizing cost: perplexity of SRC and OUT and OUT's KL divergence "
                         "from SRC on a shipped public-domain text (engine/runtime/quality.py)")
    ap.add_argument("--report-file", default=None, metavar="FILE",
                    help="also write the report as JSON here; implies --report (default: none)")
    ap.add_argument("--report-text", default=None, metavar="FILE", help="the text of the report (default: the "
                    "shipped one)")
    ap.add_argument("--report-ctx", type=int_in(MIN_CTX), default=512, metavar="N",
                    help=f"tokens per chunk, >= {MIN_CTX}")
    ap.add_argument("--report-chunks", type=int_in(1), default=None, metavar="N",
                    help="chunks to score (default: all of the text)")
    ap.add_argument("--threads", type=int_in(1), default=None, metavar="N",
                    help="threads of the report's forwards (default: all cores)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        types = convert.convert(args.src, args.output, args.type, args.tokenizer_pre)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = {}
    for t in types.values():
        counts[t.name] = counts.get(t.name, 0) + 1
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output}: {size / 1e6:.1f} MB, tensors " +
          ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), file=sys.stderr)
    if args.report or args.report_file:
        return _report(args)
    return 0


def _report(args) -> int:
    """Print (and with --report-file write) the quality report of OUT against SRC; 2 on a bad request."""
    from engine.runtime import quality

    def progress(name, chunk, chunks, ppl, tps):
        print(f"\r{name}: [{chunk}/{chunks}] PPL {ppl:.4f}, {tps:.1f} tok/s", end="", file=sys.stderr, flush=True)
    try:
        r = quality.report(args.src, args.output, args.report_text, args.report_ctx, args.report_chunks, progress,
                           threads=args.threads)
    except EngineError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    base, quant, kl = r["base"], r["quantized"], r["quantized"]["kl"]
    print(f"\nquality on {r['text']} (ctx {base['ctx']}, {base['chunks']} chunks, {base['scored_tokens']} scored "
          f"tokens):\n  {args.src}: PPL {base['ppl']:.4f} +/- {base['se']:.4f}\n  {args.output}: PPL "
          f"{quant['ppl']:.4f} +/- {quant['se']:.4f}; KL mean {kl['kl_mean']:.6f}, p99 {kl['kl_p99']:.6f}, max "
          f"{kl['kl_max']:.6f} nats; top-1 agreement {100 * kl['top1']:.2f}%; correct-token probability change "
          f"mean {100 * kl['dp_mean']:+.3f}%, p1 {100 * kl['dp_p1']:+.3f}%, p99 {100 * kl['dp_p99']:+.3f}%")
    if args.report_file:
        Path(args.report_file).write_text(json.dumps(r, indent=2) + "\n")
    return 0
