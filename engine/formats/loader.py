"""From local files (a hub.ModelSource) to a ready model, tokenizer and chat template."""
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError, ModelFileError, TokenizerError
from engine.formats.gguf import GGUFFile
from engine.formats.safetensors import load_hf_dir
from engine.text.template import ChatTemplate
from engine.text.tokenizer import Tokenizer
from kernels.device import CPU, Device
from models import ARCHITECTURES, ModelConfig


@dataclass
class Loaded:
    """Everything load_source() builds. metadata: GGUF metadata, or the HF config.json dict."""
    config: ModelConfig
    model: object
    tokenizer: Tokenizer
    template: ChatTemplate | None
    metadata: dict
    weight_bytes: int


def _accessor(tensors, where: str):
    """weights(name, shape, optional) for a model constructor: checks presence and shape."""
    def weights(name: str, shape: tuple, optional: bool = False):
        if name not in tensors:
            if optional:
                return None
            raise ModelFileError(f"{where}: weight {name!r} is missing; the model file is incomplete or not a "
                                 "model of the architecture it declares.")
        t = tensors[name] if isinstance(tensors, dict) else tensors.tensor(name)
        if tuple(t.shape) != tuple(shape):
            raise ModelFileError(f"{where}: weight {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                                 "from the model's configuration; the file is inconsistent.")
        return t
    return weights


@contextmanager
def _naming(where: str):
    """Put the model file's name in front of the engine errors raised inside (the config and tokenizer readers
    see only metadata, not the file)."""
    try:
        yield
    except EngineError as e:
        if where in str(e):
            raise
        raise type(e)(f"{where}: {e}") from e


def _tokenizer_from_dir(d: Path | None) -> Tokenizer | None:
    if d is not None and (Path(d) / "tokenizer.json").is_file():
        return Tokenizer.from_file(Path(d) / "tokenizer.json", Path(d))
    return None


def load_source(source, device: Device = CPU) -> Loaded:
    """Build the model named by a hub.ModelSource (gguf_paths, or hf_dir; tokenizer_dir optional) for device (its
    weights still on the host: kernels.cuda.upload moves them to a GPU)."""
    if source.gguf_paths:
        g = GGUFFile(source.gguf_paths[0])
        where = str(source.gguf_paths[0])
        with _naming(where):
            config = ModelConfig.from_gguf(g.metadata, {n: i.shape for n, i in g.infos.items()})
            model = ARCHITECTURES[config.arch](config, _accessor(g, where), device)
            metadata = g.metadata
            tokenizer = (Tokenizer.from_gguf(metadata) if "tokenizer.ggml.tokens" in metadata
                         else _tokenizer_from_dir(source.tokenizer_dir))
        weight_bytes = sum(i.nbytes for i in g.infos.values())
    else:
        where = str(source.hf_dir)
        metadata, tensors = load_hf_dir(source.hf_dir)
        config = ModelConfig.from_hf(metadata)
        model = ARCHITECTURES[config.arch](config, _accessor(tensors, where), device)
        tokenizer = _tokenizer_from_dir(source.hf_dir) or _tokenizer_from_dir(source.tokenizer_dir)
        weight_bytes = sum(t.nbytes for t in tensors.values())
    if tokenizer is None:
        raise TokenizerError(f"{where}: no tokenizer found (no tokenizer in the GGUF metadata and no "
                             "tokenizer.json beside the weights). Put tokenizer.json (and tokenizer_config.json) "
                             "in the model directory, or use a GGUF file that embeds its tokenizer.")
    if source.gguf_paths and tokenizer.vocab_size > config.vocab_size:
        raise ModelFileError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
                             f"only {config.vocab_size} rows; the tokenizer does not belong to these weights.")
    template = ChatTemplate.from_sources(metadata if source.gguf_paths else None,
                                         source.tokenizer_dir or source.hf_dir,
                                         tokenizer.bos_token, tokenizer.eos_token)
    return Loaded(config, model, tokenizer, template, metadata, weight_bytes)

