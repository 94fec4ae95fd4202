"""`python -m engine.quantize SRC --type TYPE -o OUT.gguf`: write a quantized GGUF file
(engine/formats/convert.py)."""
import argparse
import sys
from pathlib import Path

from engine.errors import EngineError
from engine.formats import convert


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.quantize", description=convert.__doc__.split("\n")[0])
    ap.add_argument("src", help="HF-style model directory or .gguf file")
    ap.add_argument("--type", required=True, choices=list(convert.FILE_TYPES),
                    help="tensor type mix (as llama-quantize)")
    ap.add_argument("-o", "--output", required=True, help="the .gguf file to write")
    ap.add_argument("--tokenizer-pre", default=None,
                    help="llama.cpp pre-tokenizer name (tokenizer.ggml.pre) when it cannot be detected")
    args = ap.parse_args(argv)
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
    return 0
