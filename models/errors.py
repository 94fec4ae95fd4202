"""The error the model code raises (re-exported by `engine.errors`); the others come from kernels/errors.py."""
from kernels.errors import EngineError


class ModelFileError(EngineError):
    """A model file is missing, truncated, corrupt or not in the expected format."""
