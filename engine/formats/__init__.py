"""Model files: reading GGUF (gguf.py) and safetensors / HF directories (safetensors.py), naming and fetching
models (hub.py: registry ids, paths and HF repo ids → files), bounded JSON reading (jsonfile.py), turning files
into a model, tokenizer and template (loader.py), and writing quantized GGUF files (convert.py, behind
`python -m engine.quantize`). With engine.text it is the lowest floor of engine/: it imports engine.errors,
engine.text, models and kernels, never engine.runtime, engine.chat, engine.server or engine.cli."""
