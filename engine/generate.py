"""The streaming generate loop, and the command line: `python -m engine.generate --prompt TEXT`."""
import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from engine.errors import EngineError, ModelFileError
from engine.sampler import Sampler, SamplingParams
from kernels import backend


@dataclass
class GenerationStats:
    """What one generation did. finish_reason: "stop" (EOS or a stop string) or "length" (max_tokens or a full
    context)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str | None = None

    @property
    def prefill_tps(self) -> float:
        return (self.prompt_tokens - self.cached_tokens) / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s and self.completion_tokens > 1 else 0.0


def generate_tokens(model, cache, ids: list[int], params: SamplingParams, max_tokens: int, eos_ids,
                    stats: GenerationStats, where: str = "the model"):
    """Yield sampled token ids after ids. The cache may already hold a prefix of ids; only the rest is run.
    Non-finite logits end generation with ModelFileError naming `where` (the model file).

    Prefill time ends when the first token is sampled; decode time covers the tokens after it. A model that can
    queue a forward and return at once (`submit`, as engine.scheduler.Scheduler) gets the next token's forward
    before the token is yielded, so the caller's work on it (detokenizing, streaming) overlaps that forward; if
    the caller then stops, that forward is still waited for (it writes the cache, which then holds the token).
    """
    sampler = Sampler(params)
    keep = min(cache.length, len(ids) - 1)  # at least one token must run to get logits
    cache.truncate(keep)
    stats.cached_tokens = keep
    history = list(ids)
    t0 = time.perf_counter()
    new = np.asarray(history[keep:])
    logits = model.forward(new, np.arange(keep, keep + len(new)), cache, last_only=True)
    stats.finish_reason = "length"
    for n in range(max_tokens):
        token = sampler(finite_logits(backend.to_host(logits[-1]), where), history)
        now = time.perf_counter()
        if n == 0:
            stats.prefill_s = now - t0
        else:
            stats.decode_s = now - t0 - stats.prefill_s
        if token in eos_ids:
            stats.finish_reason = "stop"
            return
        stats.completion_tokens += 1
        history.append(token)
        if n + 1 == max_tokens or cache.length >= cache.max_len:
            yield token
            return
        ahead = queue_forward(model, np.asarray([token]), np.asarray([cache.length]), cache, last_only=True)
        try:
            yield token
        except GeneratorExit:
            ahead.settle()
            raise
        logits = ahead.result()


def finite_logits(logits: np.ndarray, where: str) -> np.ndarray:
    """logits (a host array) if every value is finite, else ModelFileError naming where: NaN or infinite weights
    would otherwise make greedy decoding pick token 0 forever and sampling fail untyped."""
    if not np.isfinite(logits).all():
        raise ModelFileError(f"{where}: the model computed NaN or infinite logits; its weights hold non-finite "
                             "values or the file is damaged: download it again.")
    return logits


class DeferredForward:
    """A forward run when its result is asked for: queue_forward's handle for models that cannot queue one."""

    def __init__(self, run):
        self._run = run

    def result(self):
        return self._run()

    def settle(self) -> None:
        """Nothing ran, nothing to wait for."""


def queue_forward(model, tokens, positions, cache, last_only: bool = False):
    """model.forward(...) as a handle: result() gives the logits, settle() waits for a queued forward without
    its result. Queued at once where the model has `submit`, else deferred until result()."""
    submit = getattr(model, "submit", None)
    if submit is not None:
        return submit(tokens, positions, cache, last_only=last_only)
    return DeferredForward(lambda: model.forward(tokens, positions, cache, last_only=last_only))


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that is the start of some stop string (it may still become one)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


def stream_text(model, tokenizer, cache, ids, params, max_tokens, stops, stats, where: str = "the model"):
    """Text pieces of the generated tokens: UTF-8 safe, and cut before the first stop string. where: the model
    file, for the error on non-finite logits."""
    from engine.tokenizer import StreamDecoder
    decoder = StreamDecoder(tokenizer, continuation=True)
    pending = ""
    for token in generate_tokens(model, cache, ids, params, max_tokens, tokenizer.eos_ids, stats, where):
        pending += decoder.push(token)
        hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
        if hits:
            stats.finish_reason = "stop"
            if min(hits):
                yield pending[:min(hits)]
            return
        cut = len(pending) - _held_back(pending, stops)
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
    pending += decoder.flush()
    hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
    if hits:
        stats.finish_reason = "stop"
        pending = pending[:min(hits)]
    if pending:
        yield pending


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.generate", description=__doc__)
    p.add_argument("--model", default=None, help="registry id, .gguf path, HF-style directory or HF repo id "
                   "(default: the embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--prompt", default=None, help="the prompt (with --chat: the user message; --chat without "
                   "--prompt starts the interactive chat of python -m engine.chat)")
    p.add_argument("--system", default=None, help="system message (chat mode)")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="render the prompt with the model's chat template (default when it has one)")
    chat.add_argument("--raw", dest="chat", action="store_false", help="use the prompt as it is")
    add_run_args(p)
    return p


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Sampling, context and thread flags shared by engine.generate and engine.chat."""
    SamplingParams.add_arguments(p)
    p.add_argument("--ctx-size", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: ENGINE_THREADS or all cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to compute (default: ENGINE_DEVICE or auto = CUDA when a GPU is usable)")
    p.add_argument("--activations", choices=("float32", "int8"), default=None,
                   help="one-token mat-vec activations: float32 (default, exact) or int8 (opt-in, faster; "
                        "default: ENGINE_ACTIVATIONS)")


def load_from_args(args):
    """engine.load with the model, context, thread, activation and device flags of a command line (flags a
    command does not define keep their defaults)."""
    import engine
    return engine.load(args.model, n_ctx=args.ctx_size, threads=args.threads,
                       activations=getattr(args, "activations", None), device=getattr(args, "device", None))


def loaded_line(llm) -> str:
    """What was loaded, how fast, and which kernels run (printed on stderr by the command lines)."""
    from kernels import backend
    return (f"loaded {llm.source.id} ({llm.config.arch}, {llm.weight_bytes / 1e6:.0f} MB) in {llm.load_s:.2f} s; "
            f"{backend.describe()}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompt is None:
        if not args.chat:
            parser.error("--prompt is required (or pass --chat without --prompt for an interactive chat)")
        from engine.chat import run_cli
        return run_cli(args)
    try:
        llm = load_from_args(args)
        print(loaded_line(llm), file=sys.stderr)
        use_chat = args.chat if args.chat is not None else llm.template is not None
        if use_chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": args.prompt})
            ids = llm.encode_chat(llm.apply_chat_template(messages))
        else:
            ids = llm.encode_prompt(args.prompt)
        params = SamplingParams.from_args(args, llm.sampling_defaults)
        for piece in llm.stream(ids, llm.new_cache(), params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        s = llm.last_stats
        print(f"prompt: {s.prompt_tokens} tokens, {s.prefill_tps:.1f} tok/s | generated: {s.completion_tokens} "
              f"tokens, {s.decode_tps:.1f} tok/s | finish: {s.finish_reason}", file=sys.stderr)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
