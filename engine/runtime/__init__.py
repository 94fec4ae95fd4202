"""Running a loaded model: `load` and `LLM` (llm.py, the public API re-exported as `engine.load` /
`engine.LLM`), the KV cache (kvcache.py), sampling parameters and the sampler (sampler.py), the streaming
generate loop (generate.py), and how forwards run (runner.py: the Runner interface and DirectRunner;
scheduler.py: BatchingRunner, continuous batching; graphs.py: the GPU decode step captured as a CUDA graph, which a
DirectRunner on a GPU replays), and the quality of a model's predictions on a text (quality.py: perplexity by
llama-perplexity's method, KL divergence against a base model's saved top-K log-probs). It imports
engine.formats, engine.text, engine.errors, models and kernels, never engine.server or engine.cli, and engine.chat
only where `LLM.chat()` builds a Chat."""
