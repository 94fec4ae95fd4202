"""Typed errors. Each message names the problem and what to do about it.

The classes live at the lowest layer that raises them (here: the base class and the kernels' errors;
models/errors.py: ModelFileError) and are all re-exported by `engine.errors`, the name callers import."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class UnsupportedModelError(EngineError):
    """The file is readable but holds an architecture, quant type or setting we do not implement."""


class DeviceError(EngineError):
    """The requested compute device is unknown or not usable on this machine (e.g. --device cuda without a GPU)."""


class InvalidRequestError(EngineError, ValueError):
    """A caller passed an invalid argument (empty prompt, bad sampling value, ...). param: the argument or request
    field at fault, when one is; code: "invalid_type" or "invalid_value" when known (the server answers both)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code
