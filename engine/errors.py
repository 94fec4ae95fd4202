"""Typed errors. Each message names the problem and what to do about it."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelFileError(EngineError):
    """A model file is missing, truncated, corrupt or not in the expected format."""


class UnsupportedModelError(EngineError):
    """The file is readable but holds an architecture, quant type or setting we do not implement."""


class TokenizerError(EngineError):
    """No usable tokenizer could be built, or text could not be tokenized."""


class ModelNotFoundError(EngineError):
    """A model id could not be resolved to local files (unknown id, offline hub, missing download)."""


class TemplateError(EngineError):
    """A chat template failed to render."""


class ContextOverflowError(EngineError):
    """The prompt (plus what is asked to be generated) does not fit in the context window."""


class DeviceError(EngineError):
    """The requested compute device is unknown or not usable on this machine (e.g. --device cuda without a GPU)."""


class InvalidRequestError(EngineError, ValueError):
    """A caller passed an invalid argument (empty prompt, bad sampling value, ...). param: the argument or request
    field at fault, when one is; code: "invalid_type" or "invalid_value" when known (the server answers both)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code

