"""Structured outputs: what constrained decoding costs, and how the constraint libraries compare on this engine.

    python -m bench.structured [--model smollm2] [--tokens 128] [--repeat 3]   # tok/s constrained vs not
    python -m bench.structured --libraries                     # llguidance / outlines-core / xgrammar

The first form decodes the same chat prompt (a JSON list of people) with and without a JSON schema, greedy and with
the model's default sampling, and prints the best decode tok/s of --repeat runs of each (the schema keeps the
answer going for --tokens tokens) and the mask's own cost per token.

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
PROMPT = "Write a JSON list of 30 people, each with a name, an age and a city."


def decode_rate(llm, response_format, tokens: int, repeat: int, **sampling) -> tuple[float, int]:
    """(best decode tok/s of repeat chat answers to PROMPT, tokens generated in the best)."""
    best, count = 0.0, 0
    for _ in range(repeat):
        chat = llm.chat()
        for _ in chat.send(PROMPT, max_tokens=tokens, response_format=response_format, **sampling):
            pass
        if chat.last_usage.decode_tps > best:
            best, count = chat.last_usage.decode_tps, chat.last_usage.completion_tokens
    return best, count


def mask_cost(llm, tokens: int) -> tuple[float, float]:
    """(median µs to compute one mask, median µs to apply it in the sampler) along a constrained greedy answer."""
    from engine.runtime.generate import GenerationStats, generate_tokens
    from engine.runtime.sampler import Sampler, SamplingParams
    from engine.runtime.structured import Guide, json_schema
    params = SamplingParams.from_kwargs(llm.sampling_defaults, temperature=0, response_format=json_schema(PEOPLE))
    prompt = llm.encode_chat(llm.apply_chat_template([{"role": "user", "content": PROMPT}]))
    ids = list(generate_tokens(llm.runner, llm.new_cache(), prompt, params, tokens, llm.tokenizer.eos_ids,
                               GenerationStats(), guide=Guide(params.response_format, llm.tokenizer)))
    guide, logits = Guide(params.response_format, llm.tokenizer), np.zeros(llm.config.vocab_size, np.float32)
    sampler, compute, apply = Sampler(params), [], []
    for token in ids:
        t0 = time.perf_counter()
        allowed = guide.allowed(len(logits))
        t1 = time.perf_counter()
        sampler.distribution(logits, prompt, allowed)
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
    print("| sampling | unconstrained tok/s | constrained tok/s | constrained / unconstrained |\n|---|---|---|---|")
    for label, sampling in (("greedy", {"temperature": 0}), ("model defaults", {})):
        free, n_free = decode_rate(llm, None, args.tokens, args.repeat, **sampling)
        bound, n_bound = decode_rate(llm, fmt, args.tokens, args.repeat, **sampling)
        print(f"| {label} | {free:.1f} ({n_free} tokens) | {bound:.1f} ({n_bound} tokens) | {bound / free:.1%} |")
    compute, apply = mask_cost(llm, args.tokens)
    print(f"\nmask per token: computed in {compute:.0f} µs (median, on a helper thread while the forward runs), "
          f"applied in the sampler in {apply:.0f} µs")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.structured", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="model to load (default: smollm2)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per answer (default: 128)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each case, the best kept (default: 3)")
    p.add_argument("--libraries", action="store_true", help="compare the constraint libraries instead")
    args = p.parse_args(argv)
    if args.libraries:
        compare(args.model)
    else:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
