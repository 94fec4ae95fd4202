"""Structured outputs: what constrained decoding costs, and how the constraint libraries compare on this engine.

    python -m bench.structured [--model smollm2] [--tokens 100] [--repeat 3]   # tok/s constrained vs not
    python -m bench.structured --libraries                     # llguidance / outlines-core / xgrammar

The first form continues the same raw prompt (a JSON list of people) with and without a JSON schema, greedy and with
the model's default sampling, and prints the best decode tok/s of --repeat runs of each (the two take turns; the
schema keeps the answer going for --tokens tokens, the free text usually goes on too), their ratio and the median
ratio of the runs taken in pairs, and the mask's own cost per token.

--libraries compares llguidance (the engine's) with outlines-core and xgrammar where they are importable (install
them off the engine's environment, e.g. `pip install --no-deps --target /tmp/libs xgrammar apache-tvm-ffi
outlines-core` and PYTHONPATH=/tmp/libs): each builds its vocabulary from the engine's tokenizer, compiles the
schemas of bench/json_schemas.py plus a few harder keywords, and computes masks along SmolLM2's constrained greedy
answers (the same tokens for every library). Prints a markdown table: install size, vocabulary build, compile time,
mask time per token, schemas compiled, whether importing it loads torch.
"""
import argparse
import statistics
import sys
import time

import numpy as np

from bench.structured_libs import compare, cpu_name

PEOPLE = {"type": "array", "minItems": 30, "maxItems": 30, "items": {
    "type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0,
                                                                       "maximum": 120},
                   "city": {"type": "string", "maxLength": 24}}}}
PROMPT = "Here is a JSON list of 30 people, each with a name, an age and a city:\n"  # a raw prompt: both go on


def decode_rates(llm, response_format, tokens: int, repeat: int, **sampling) -> list[list[tuple[float, int]]]:
    """[[(decode tok/s, tokens generated) of each run]] of PROMPT's continuation without and with response_format,
    the two taking turns repeat times (a drifting load on a shared machine hits both alike)."""
    runs = [[], []]
    for _ in range(repeat):
        for i, fmt in enumerate((None, response_format)):
            for _ in llm.generate(PROMPT, max_tokens=tokens, response_format=fmt, **sampling):
                pass
            runs[i].append((llm.last_stats.decode_tps, llm.last_stats.completion_tokens))
    return runs


def mask_cost(llm, tokens: int) -> tuple[float, float]:
    """(median µs to compute one mask, median µs to apply it: unpack the bits, -inf where not allowed) along a
    constrained greedy answer."""
    from engine.runtime.generate import GenerationStats, generate_tokens
    from engine.runtime.sampler import SamplingParams
    from engine.runtime.structured import Guide, json_schema
    params = SamplingParams.from_kwargs(llm.sampling_defaults, temperature=0, response_format=json_schema(PEOPLE))
    ids = list(generate_tokens(llm.runner, llm.new_cache(), llm.encode_prompt(PROMPT), params, tokens,
                               llm.tokenizer.eos_ids, GenerationStats(),
                               guide=Guide(params.response_format, llm.tokenizer)))
    guide, logits = Guide(params.response_format, llm.tokenizer), np.zeros(llm.config.vocab_size, np.float32)
    compute, apply = [], []
    for token in ids:
        t0 = time.perf_counter()
        guide._fill()
        t1 = time.perf_counter()
        np.where(guide.unpack(len(logits)), logits, np.float32(-np.inf))
        apply.append(time.perf_counter() - t1)
        compute.append(t1 - t0)
        guide.consume(token)
    return statistics.median(compute) * 1e6, statistics.median(apply) * 1e6


def throughput(args) -> None:
    import engine
    llm = engine.load(args.model)
    print(f"{llm.source.id}, {llm.runner.describe()}, {cpu_name()}; best of {args.repeat}, up to {args.tokens} "
          "tokens\n")
    fmt = {"type": "json_schema", "json_schema": {"name": "people", "schema": PEOPLE}}
    print("| sampling | unconstrained tok/s | constrained tok/s | constrained / unconstrained: best, median of "
          "pairs |\n|---|---|---|---|")
    for label, sampling in (("greedy", {"temperature": 0}), ("model defaults", {})):
        free, bound = decode_rates(llm, fmt, args.tokens, args.repeat, **sampling)
        (top_free, n_free), (top_bound, n_bound) = max(free), max(bound)
        pairs = statistics.median(b[0] / f[0] for f, b in zip(free, bound))
        print(f"| {label} | {top_free:.1f} ({n_free} tokens) | {top_bound:.1f} ({n_bound} tokens) | "
              f"{top_bound / top_free:.1%}, {pairs:.1%} |")
    compute, apply = mask_cost(llm, args.tokens)
    print(f"\nmask per token: computed in {compute:.0f} µs (median, on a helper thread while the forward runs), "
          f"applied in the sampler in {apply:.0f} µs")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.structured", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model to load (default: smollm2)")
    p.add_argument("--tokens", type=int, default=100, help="tokens per answer (default: 100)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each case (default: 3)")
    p.add_argument("--libraries", action="store_true", help="compare the constraint libraries instead")
    args = p.parse_args(argv)
    if args.libraries:
        compare(args.model)
    else:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
