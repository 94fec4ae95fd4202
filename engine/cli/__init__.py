"""The command lines, apart from the library they drive: `python -m engine COMMAND` and the per-command entry
points `python -m engine.generate`, `engine.chat`, `engine.serve` and `engine.quantize` (thin entry modules,
engine/generate.py, engine/chat/__main__.py, engine/serve.py and engine/quantize.py, that call `main()` here).
Each module holds one command's argument parser and `main(argv) -> exit status`; common.py the flags and model
loading they share. The top floor of engine/: it may import every other sub-package, and library code never
imports it."""
