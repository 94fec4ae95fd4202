"""A from-scratch LLM inference engine. `engine.load(model)` returns an `LLM`; see README.md."""

__all__ = ["LLM", "load"]


def __getattr__(name):
    # Imported on first use so that `engine.errors`, `engine.formats.gguf`, ... load without the whole runtime.
    if name in __all__:
        from engine.runtime import llm
        return getattr(llm, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
