"""`python -m bench.structured --libraries`: llguidance, outlines-core and xgrammar side by side on this engine's
tokenizer (see bench/structured.py). A library that is not importable is left out of the table."""
import importlib.metadata
import json
import statistics
import sys
import time

import numpy as np

from bench.json_schemas import EXTRA, SCHEMAS

WHITESPACE = r"[\x20\x0A\x0D\x09]{0,24}"  # the engine's JSON whitespace (engine.runtime.structured.JSON_OPTIONS)
# mandatory run-time dependencies beyond numpy / pydantic, as their wheels declare them
DEPENDENCIES = {"llguidance": [], "outlines_core": [], "xgrammar": ["apache-tvm-ffi", "torch", "transformers",
                                                                    "triton"]}


def installed_mb(dist: str) -> float | None:
    """Megabytes of a distribution's installed files (its RECORD), None when it is not installed."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return sum(f.size or 0 for f in files) / 1e6


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer):
        import llguidance

        from engine.runtime.structured import _Vocabulary
        self.llg = llguidance
        self.vocab = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)),  # not the cached one
                                            n_vocab=tokenizer.vocab_size, eos_token=sorted(tokenizer.eos_ids))

    def compile(self, schema):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_pattern": WHITESPACE})
        failed, messages = self.llg.LLMatcher.validate_grammar_with_warnings(grammar)
        if failed:
            raise ValueError(messages[0])
        if self.matcher(grammar).is_error():  # what the engine does per request: a matcher over the vocabulary
            raise ValueError(self.matcher(grammar).get_error())
        return grammar

    def matcher(self, compiled):
        return self.llg.LLMatcher(self.vocab, compiled, log_level=0)

    def mask(self, m, bits: np.ndarray) -> None:
        m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)

    def advance(self, m, token: int) -> bool:
        return m.consume_token(token)


class OutlinesCore:
    name = "outlines_core"

    def __init__(self, tokenizer):
        import outlines_core
        self.oc = outlines_core
        eos = min(tokenizer.eos_ids)
        pieces: dict[bytes, list[int]] = {}
        for i in range(tokenizer.vocab_size):
            b = tokenizer.token_bytes(i)
            if b and not tokenizer.is_special(i) and i not in tokenizer.eos_ids:
                pieces.setdefault(b, []).append(i)
        self.vocab = outlines_core.Vocabulary(eos, pieces)

    def compile(self, schema):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), WHITESPACE)
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def mask(self, m, bits: np.ndarray) -> None:
        m.write_mask_into(bits.ctypes.data, bits.size, 4)

    def advance(self, m, token: int) -> bool:
        try:
            m.advance(token)
            return True
        except ValueError:
            return False


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer):
        import xgrammar
        self.xgr = xgrammar
        tokens = [b"" if tokenizer.is_special(i) else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        info = xgrammar.TokenizerInfo(tokens, xgrammar.VocabType.RAW, vocab_size=tokenizer.vocab_size,
                                      stop_token_ids=sorted(tokenizer.eos_ids))
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True, strict_mode=True)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m, bits: np.ndarray) -> None:
        m.fill_next_token_bitmask(bits.reshape(1, -1))

    def advance(self, m, token: int) -> bool:
        return m.accept_token(token)


def answers(llm) -> dict[str, list[int]]:
    """SmolLM2's greedy answer under each schema (the engine's constraint), as token ids: the replayed paths."""
    from engine.runtime.generate import GenerationStats, generate_tokens
    from engine.runtime.sampler import SamplingParams
    from engine.runtime.structured import Guide, json_schema
    out = {}
    for name, (prompt, schema) in SCHEMAS.items():
        ids = llm.encode_chat(llm.apply_chat_template([{"role": "system", "content": "Answer in JSON."},
                                                       {"role": "user", "content": prompt}]))
        params = SamplingParams.from_kwargs(llm.sampling_defaults, temperature=0, response_format=json_schema(schema))
        guide = Guide(params.response_format, llm.tokenizer)
        out[name] = list(generate_tokens(llm.runner, llm.new_cache(), ids, params, 200, llm.tokenizer.eos_ids,
                                         GenerationStats(), guide=guide))
    return out


def walk(lib, m, tokens, bits: np.ndarray) -> tuple[bool, list[float]]:
    """Feed tokens to matcher m, computing the mask before each: (all allowed and accepted, seconds per mask)."""
    times = []
    for token in tokens:
        t0 = time.perf_counter()
        lib.mask(m, bits)
        times.append(time.perf_counter() - t0)
        if not (bits[token >> 5] >> (token & 31)) & 1 or not lib.advance(m, token):
            return False, times
    return True, times


def measure(lib, paths: dict[str, list[int]], tokenizer) -> dict:
    """Compile every schema (seconds each), replay each answer computing a mask before every token (seconds each),
    count compiled schemas and answers accepted whole; and the library's verdict on each EXTRA keyword."""
    compile_s, mask_s, compiled, rejected, verdicts = [], [], 0, [], {}
    bits = np.zeros((tokenizer.vocab_size + 31) // 32, np.int32)
    for name, (_, schema) in SCHEMAS.items():
        t0 = time.perf_counter()
        try:
            grammar = lib.compile(schema)
        except Exception:  # noqa: BLE001 — a library's refusal is what is measured
            continue
        compile_s.append(time.perf_counter() - t0)
        compiled += 1
        ok, times = walk(lib, lib.matcher(grammar), paths[name], bits)
        mask_s += times
        if not ok:
            rejected.append(name)
    for key, (schema, violating) in EXTRA.items():
        try:
            grammar = lib.compile(schema)
        except Exception:  # noqa: BLE001
            verdicts[key] = "refused"
            continue
        m, ids = lib.matcher(grammar), tokenizer.encode(violating, add_special=False)
        ended = walk(lib, m, ids, bits)[0] and (lib.mask(m, bits) or any(
            (bits[e >> 5] >> (e & 31)) & 1 for e in tokenizer.eos_ids))  # the whole text accepted, then the end
        verdicts[key] = "ignored" if ended else "enforced"
    return {"compile_s": compile_s, "mask_s": mask_s, "compiled": compiled, "rejected": rejected,
            "verdicts": verdicts}


def compare(model: str) -> None:
    import engine
    llm = engine.load(model)
    tok = llm.tokenizer
    print(f"{llm.source.id} ({tok.vocab_size} tokens), {cpu_name()}; {len(SCHEMAS)} schemas (bench/json_schemas.py)")
    paths = answers(llm)
    print(f"replayed: {sum(map(len, paths.values()))} tokens of SmolLM2's constrained greedy answers\n")
    print("| library | installed (MB) | run-time dependencies | imports torch | vocabulary build | compile median / "
          "max | mask per token median / p99 | schemas compiled | answers accepted |")
    print("|---|---|---|---|---|---|---|---|---|")
    notes = []
    for cls in (Llguidance, OutlinesCore, Xgrammar):
        had_torch = "torch" in sys.modules
        try:
            t0 = time.perf_counter()
            lib = cls(tok)
            build = time.perf_counter() - t0
        except ImportError:
            print(f"| {cls.name} | not importable here | | | | | | | |")
            continue
        r = measure(lib, paths, tok)
        deps = [f"{d} {installed_mb(d):.0f} MB" if installed_mb(d) else d for d in DEPENDENCIES[cls.name]]
        torch = "?" if had_torch else "yes" if "torch" in sys.modules else "no"
        cs, ms = r["compile_s"] or [float("nan")], r["mask_s"] or [float("nan")]
        print(f"| {cls.name} | {installed_mb(cls.name.replace('_', '-')) or 0:.1f} | {', '.join(deps) or 'none'} | "
              f"{torch} | {build:.2f} s | {statistics.median(cs) * 1e3:.1f} / {max(cs) * 1e3:.0f} ms | "
              f"{statistics.median(ms) * 1e6:.0f} / {np.percentile(ms, 99) * 1e6:.0f} µs | "
              f"{r['compiled']}/{len(SCHEMAS)} | {r['compiled'] - len(r['rejected'])}/{r['compiled']} |")
        notes.append((cls.name, r))
    print("\n| keyword | " + " | ".join(name for name, _ in notes) + " |\n|---|" + "---|" * len(notes))
    for key in EXTRA:
        print(f"| {key} | " + " | ".join(r["verdicts"][key] for _, r in notes) + " |")
    for name, r in notes:
        if r["rejected"]:
            print(f"\n{name} rejected the engine's answer to: {', '.join(r['rejected'])}")
