"""The command lines, apart from the library they drive: `python -m engine COMMAND` and the per-command entry
points `python -m engine.generate`, `engine.chat`, `engine.serve` and `engine.quantize` (each a thin
`__main__` block in the library module that calls `main()` here). Each module holds one command's argument parser
and `main(argv) -> exit status`; common.py the flags and model loading they share. Library code never imports
this package."""
