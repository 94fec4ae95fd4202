"""`python -m engine.quantize SRC --type TYPE -o OUT.gguf`: write a quantized GGUF file. The command line is
engine/cli/quantize.py; the converter and GGUF writer are engine/formats/convert.py."""
import sys

if __name__ == "__main__":
    from engine.cli.quantize import main
    sys.exit(main())
