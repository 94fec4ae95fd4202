"""Model definitions: architecture name → class. Runtime code (loading, generation) lives in engine/."""
from models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from models.llama import Llama

ARCHITECTURES = {"llama": Llama, "mistral": Llama, "qwen2": Llama, "qwen3": Llama, "gemma3": Llama}

__all__ = ["ARCHITECTURES", "SUPPORTED_ARCHITECTURES", "ModelConfig", "Llama"]
