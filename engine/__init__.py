"""A from-scratch LLM inference engine. `engine.load(model)` returns an `LLM`; see README.md."""

__all__ = ["LLM", "load"]


def __getattr__(name):
    # Imported on first use so that `engine.errors`, `engine.formats.gguf`, ... load without the whole runtime.
    if name in __all__:
        from engine.runtime import llm
        return getattr(llm, name)
    if name == "__version__":
        globals()[name] = _version()
        return globals()[name]
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, as pip installed it); pyproject.toml's own when
    the package runs from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("engine")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path
        return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
