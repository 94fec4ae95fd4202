"""Typed errors. Each message names the problem and what to do about it.

Every error class is importable from here. Those raised below the engine are defined at the lowest layer that
raises them (kernels/errors.py, models/errors.py) and re-exported: one class each, so `isinstance` checks hold."""
from kernels.errors import DeviceError, EngineError, InvalidRequestError, UnsupportedModelError
from models.errors import ModelFileError

__all__ = ["EngineError", "ModelFileError", "UnsupportedModelError", "TokenizerError", "ModelNotFoundError",
           "TemplateError", "ContextOverflowError", "DeviceError", "InvalidRequestError", "SessionStorageError"]


class TokenizerError(EngineError):
    """No usable tokenizer could be built, or text could not be tokenized."""


class ModelNotFoundError(EngineError):
    """A model id could not be resolved to local files (unknown id, offline hub, missing download)."""


class TemplateError(EngineError):
    """A chat template failed to render."""


class ContextOverflowError(EngineError):
    """The prompt (plus what is asked to be generated) does not fit in the context window."""


class SessionStorageError(EngineError):
    """The sessions database (engine.chat.sessions_db) cannot be opened, read or written: a corrupt or foreign file,
    a schema from a newer engine, a file locked by another process past the busy timeout, a disk error."""
