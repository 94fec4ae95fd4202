"""The public API: `engine.load(model)` → `LLM` with tokenizer, logits() and a streaming generate()."""
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from engine.errors import ContextOverflowError, InvalidRequestError, TemplateError
from engine.formats import hub
from engine.formats.loader import load_source
from engine.runtime.generate import GenerationStats, finite_logits, stream_text
from engine.runtime.kvcache import KVCache, check_memory
from engine.runtime.runner import DirectRunner, Runner
from engine.runtime.sampler import SamplingParams, model_defaults
from kernels import cpu, cuda
from kernels.device import select_device
from kernels.qtensor import QTensor


class LLM:
    """A loaded model ready to run.

    model: the weights (models.Llama); runner: the engine.runtime.runner.Runner every forward goes through (a
    DirectRunner unless given; see with_runner). tokenizer: engine.text.tokenizer.Tokenizer; config:
    models.ModelConfig; template: ChatTemplate or None;
    n_ctx: context length of each sequence's KV cache (ContextOverflowError at load when its cache cannot fit in
    memory); where: the model file or directory; last_stats: GenerationStats of the latest generate();
    sampling_defaults: the SamplingParams every caller starts from (the model's recommended sampling over the
    engine defaults, read once here: see engine.runtime.sampler.model_defaults).
    """

    def __init__(self, loaded, source, n_ctx: int | None = None, load_s: float = 0.0, runner: Runner | None = None):
        self._loaded = loaded
        self.model = loaded.model
        self.device = loaded.model.device
        self.runner = DirectRunner(self.model) if runner is None else runner
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.template = loaded.template
        self.metadata = loaded.metadata
        self.weight_bytes = loaded.weight_bytes
        self.source = source
        self.n_ctx = int(n_ctx or self.config.max_context)
        if self.n_ctx < 1:
            raise InvalidRequestError(f"n_ctx must be positive, got {n_ctx}")
        check_memory(self.config.n_layers, self.config.n_kv_heads, self.config.head_dim, self.n_ctx, device=self.device)
        self.where = str(source.gguf_paths[0] if source.gguf_paths else source.hf_dir)
        self.load_s = load_s
        self.sampling_defaults = model_defaults(self.metadata if source.gguf_paths else None, source.hf_dir,
                                                self.n_ctx, self.where, source.sampling)
        self.last_stats: GenerationStats | None = None

    def with_runner(self, runner: Runner) -> "LLM":
        """A new LLM over the same loaded model (weights, tokenizer, template, n_ctx) whose forwards run on runner,
        e.g. the server's engine.runtime.scheduler.BatchingRunner; its last_stats are its own."""
        return LLM(self._loaded, self.source, self.n_ctx, self.load_s, runner=runner)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty KV cache for one sequence of up to max_len (default n_ctx) positions."""
        c = self.config
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, max_len or self.n_ctx, device=self.device)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), vocab] float32 of one forward over ids on a fresh cache."""
        ids = self._check_ids(ids)
        cache = self.new_cache(len(ids))
        return finite_logits(self.runner.forward(np.asarray(ids), np.arange(len(ids)), cache), self.where)

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a raw prompt: text is tokenized with BOS as the model wants and special tokens parsed."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt is empty; pass some text to continue.")
            return self._in_vocabulary(self.tokenizer.encode(prompt, add_special=True, parse_special=True))
        return self._check_ids(prompt)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render messages [{"role", "content"}, ...] with the model's chat template."""
        if self.template is None:
            raise TemplateError("this model has no chat template; use a raw prompt (no --chat), or a model "
                                "whose tokenizer_config.json / GGUF metadata carries one.")
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

    def encode_chat(self, rendered: str) -> list[int]:
        """Token ids of a rendered chat: special tokens parsed; BOS added only if the template did not write it."""
        ids = self.tokenizer.encode(rendered, add_special=False, parse_special=True)
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return self._in_vocabulary(ids)

    def generate(self, prompt: str | Sequence[int], **sampling) -> Iterator[str]:
        """Stream the continuation of prompt (text or token ids) as text pieces.

        sampling: SamplingParams fields (max_tokens, temperature, top_k, top_p, min_p, repeat_penalty,
        repeat_last_n, seed, stop, response_format); those left out keep self.sampling_defaults. Stops at an
        end-of-sequence token, after max_tokens tokens (default: the rest of the context), at a full context, or
        before any stop string (which is never emitted). Statistics land in self.last_stats.
        response_format constrains the text: {"type": "json_schema", "json_schema": {"name", "schema"}},
        {"type": "json_object"}, {"type": "regex", "regex"}, {"type": "grammar", "grammar"} or a Pydantic model
        class (engine.runtime.structured.response_format); one that does not compile raises InvalidRequestError
        here, before anything runs.
        """
        params = SamplingParams.from_kwargs(self.sampling_defaults, **sampling)
        ids = self.encode_prompt(prompt)
        return self.stream(ids, self.new_cache(), params)

    def chat(self, system: str | None = None, enable_thinking: bool | None = None,
             context_overflow: str = "truncate_oldest"):
        """A multi-turn engine.chat.Chat whose KV cache is reused from turn to turn (see engine/chat/)."""
        from engine.chat import Chat
        return Chat(self, system=system, enable_thinking=enable_thinking, context_overflow=context_overflow)

    def stream(self, ids: list[int], cache: KVCache, params: SamplingParams, max_tokens: int | None = None,
               stop: str | Sequence[str] | None = None, stats: GenerationStats | None = None) -> Iterator[str]:
        """Generate after ids, reusing whatever prefix of ids the cache already holds. max_tokens and stop, when
        given, replace params' (whose max_tokens None is the rest of the cache). stats (default: a new one) is
        filled in as generation runs and kept as last_stats."""
        if len(ids) > cache.max_len:
            raise ContextOverflowError(f"the prompt is {len(ids)} tokens but the context holds {cache.max_len}; "
                                       "shorten the prompt or load the model with a larger n_ctx "
                                       f"(the model supports up to {self.config.max_context}).")
        params = replace(params, **{k: v for k, v in (("max_tokens", max_tokens), ("stop", stop)) if v is not None})
        max_tokens = params.max_tokens or max(1, cache.max_len - len(ids))
        stops = list(params.stop)
        stats = self.last_stats = stats or GenerationStats()
        stats.prompt_tokens = len(ids)
        return stream_text(self.runner, self.tokenizer, cache, ids, params, max_tokens, stops, stats, self.where)

    def _check_ids(self, ids) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise InvalidRequestError("the prompt is empty; pass at least one token.")
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise InvalidRequestError(f"token id(s) {bad[:5]} are outside the vocabulary (0..{self.config.vocab_size - 1})")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens do not fit in the {self.n_ctx}-token context.")
        return ids

    def _in_vocabulary(self, ids: list[int]) -> list[int]:
        """ids from the tokenizer, refused when one has no embedding row (a tokenizer may define tokens past the
        model's vocabulary, e.g. Gemma 3's image placeholder)."""
        bad = next((i for i in ids if i >= self.config.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"the text contains the token {self.tokenizer.decode([bad])!r} (id {bad}), "
                                      f"which this model has no embedding for (vocabulary 0..{self.config.vocab_size - 1}); "
                                      "remove it from the prompt.")
        return ids


def load(model: str | None = None, n_ctx: int | None = None, threads: int | None = None,
         activations: str | None = None, device: str | None = None, kernels: str | None = None,
         progress: Callable[[str], None] | None = None) -> LLM:
    """Load a model: a registry id (`smollm2`, `qwen3.4b_q4`), a .gguf path, an HF-style directory or an HF repo
    id (`org/name`, or `org/name:file.gguf`). None loads the embedded default (SmolLM2-135M-Instruct Q4_1).

    n_ctx: context length per sequence (default: the model's). The rest make the model's kernels.device.Device
    (kernels.device.select_device; None reads ENGINE_THREADS, ENGINE_ACTIVATIONS, ENGINE_DEVICE, ENGINE_KERNELS):
    threads: CPU kernel threads (default: all cores); activations: "float32" (default) or "int8" for the opt-in
    int8 mat-vec; device: "auto" (CUDA when a GPU is usable, the default), "cpu" or "cuda"; kernels: "numba"
    (default) or "numpy" (the reference operators). Each LLM keeps its own: several can share a process.
    progress(line): told before the compiled CPU kernels of a weight type are compiled for the first time on this
    machine, and how long that took (default: a line on stderr); a warm cache says nothing."""
    t0 = time.perf_counter()
    dev = select_device(device, kernels, activations, threads)
    source = hub.resolve(model)
    loaded = load_source(source, dev)
    if dev.kind == "cuda":
        cuda.upload(loaded.model)
    elif dev.compiled:
        _warm_up(loaded, progress or _on_stderr)
    return LLM(loaded, source, n_ctx, load_s=time.perf_counter() - t0)


def _on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


LAYER_OPERATORS_S = 5  # seconds to compile the small layer operators on a 2-core machine (for the first run's note)


def _weight_types(model) -> tuple[set[int], set[int]]:
    """The GGML types of the model's quantized matrices that are multiplied, and of its quantized embedding."""
    matrices = [w for layer in model.layers for w in layer.values()] + [model.output]
    return ({int(w.ggml_type) for w in matrices if isinstance(w, QTensor)},
            {int(model.tok_embd.ggml_type)} if isinstance(model.tok_embd, QTensor) else set())


def _warm_up(loaded, say: Callable[[str], None]) -> None:
    """Compile (or load from numba's cache) the kernels of the model's weight types, then run a 2-token and a
    1-token forward on a scratch cache, so that no kernel is compiled or loaded during the first prompt; say(line)
    tells of each first compile before it starts. They run on a thread of their own that then ends: libgomp keeps
    a pool of worker threads for each thread that launches parallel kernels while that thread lives, and with more
    threads than CPUs it stops spinning between launches (README, "Notes on the CPU kernels")."""
    model, c = loaded.model, loaded.config
    cache = KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 3)
    failure = []

    def forwards() -> None:
        model.forward(np.zeros(2, np.int64), np.arange(2), cache, last_only=True)
        model.forward(np.zeros(1, np.int64), np.array([2]), cache, last_only=True)

    def run() -> None:
        try:
            model.device.enter()
            cpu.prepare(*_weight_types(model), model.device.int8, say)
            cpu.first_use.run_group(f"the {c.arch} layer operators", LAYER_OPERATORS_S, forwards, say)
        except BaseException as e:  # noqa: BLE001 — raised again on the loading thread
            failure.append(e)

    thread = threading.Thread(target=run, name="engine-warm-up")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
