"""Structured outputs (engine.runtime.structured): the response_format forms and their typed errors, the llguidance
vocabulary of byte-level BPE and SentencePiece tokenizers (the tiny fixtures, random weights: only the mask keeps
their output valid), the per-sequence mask in the generate loop (computed on a helper thread while the forward
runs, under continuous batching too), and SmolLM2's answers to the schemas of bench/json_schemas.py, greedy and
sampled, every one valid by `jsonschema`."""
import json
import re
import threading
from dataclasses import asdict
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel, Field

import engine
from bench.json_schemas import SCHEMAS
from engine.errors import InvalidRequestError
from engine.runtime import structured
from engine.runtime.generate import GenerationStats, generate_tokens
from engine.runtime.runner import Deferred
from engine.runtime.sampler import SamplingParams
from engine.runtime.scheduler import BatchingRunner

TINY = Path(__file__).parents[2] / "fixtures" / "tiny"
SAMPLED = {"temperature": 0.8, "seed": 7}
MIXED = {"type": "object", "additionalProperties": False, "required": ["a", "b", "c"], "properties": {
    "a": {"type": "integer", "minimum": 0, "maximum": 999}, "b": {"type": "string", "maxLength": 12},
    "c": {"type": "array", "maxItems": 3, "items": {"enum": ["x", "yé", "ü€"]}}}}
GBNF = 'root ::= answer " because " reason\nanswer ::= "yes" | "no"\nreason ::= [a-z ]{5,40} "."'
LARK = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,4}/'


def as_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def smollm2():
    return engine.load("smollm2")


# -- forms and errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, kind", [
    ({"type": "json_object"}, "json_object"),
    (as_format({"type": "object"}), "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}, "strict": None}},
     "json_schema"),
    ({"type": "regex", "regex": "[a-z]+"}, "regex"),
    ({"type": "grammar", "grammar": GBNF}, "grammar"),
    ({"type": "grammar", "grammar": LARK, "syntax": "lark"}, "grammar"),
    ({"type": "grammar", "grammar": LARK}, "grammar"),  # told apart from GBNF by its rules
])
def test_response_format_forms(value, kind):
    fmt = SamplingParams(response_format=value).response_format
    assert fmt.kind == kind and structured.response_format(fmt) is fmt
    assert structured.response_format(fmt.spec) == fmt  # the spec a request would carry compiles to the same


def test_text_is_unconstrained_and_asdict_keeps_the_constraint():
    assert SamplingParams(response_format={"type": "text"}).response_format is None
    params = SamplingParams(temperature=0.5, response_format={"type": "json_object"})
    copied = asdict(params)  # what the server and the REPL pass on as keywords
    assert copied["response_format"] is params.response_format and SamplingParams(**copied) == params
    with pytest.raises(AttributeError):
        params.response_format.kind = "regex"


@pytest.mark.parametrize("value, fragment", [
    (as_format({"type": "foo"}), "Invalid type: foo"),
    (as_format({"$ref": "#/$defs/nope"}), "does not exist"),
    (as_format({"type": "array", "uniqueItems": True}), "uniqueItems"),  # refused, never silently ignored
    (as_format({"not": {"type": "string"}}), "not"),
    (as_format({"type": "integer", "minimum": 5, "maximum": 1}), "Unsatisfiable"),
    (as_format({"type": "string", "pattern": "(("}), "unclosed group"),
    ({"type": "json_schema"}, "'json_schema' must be an object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}, "'json_schema' must be an object"),
    ({"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}, "'json_schema.name' must be a string"),
    ({"type": "regex", "regex": "(("}, "unclosed group"),
    ({"type": "regex"}, "'regex' must be a non-empty string"),
    ({"type": "grammar", "grammar": "root ::= foo"}, "cannot be compiled"),
    ({"type": "grammar", "grammar": "start: foo", "syntax": "lark"}, "unknown name"),
    ({"type": "grammar", "grammar": GBNF, "syntax": "ebnf"}, "'syntax' must be one of"),
    ({"type": "xml"}, "'type' is one of"),
    ("json", "'type' is one of"),
])
def test_bad_formats_are_typed_errors_naming_the_field(value, fragment):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(response_format=value)
    assert e.value.param == "response_format" and fragment in str(e.value)


def test_a_bad_schema_fails_before_anything_runs(smollm2):
    with pytest.raises(InvalidRequestError, match="Invalid type"):
        smollm2.generate("Hi", response_format=as_format({"type": "foo"}))  # raised by the call, not the iteration
    with pytest.raises(InvalidRequestError, match="'type' is one of"):
        smollm2.chat().send("Hi", response_format={"type": "yaml"})
    with pytest.raises(InvalidRequestError):
        SamplingParams.from_openai({"response_format": {"type": "regex", "regex": ")"}}, SamplingParams())


# -- the vocabulary ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["gemma3/model-Q8_0.gguf", "mistral_spm/model-Q8_0.gguf", "qwen2/model-Q8_0.gguf",
                                  "llama/model-Q8_0.gguf", "mistral_spm/hf", "qwen3/hf"])
def test_random_tiny_models_follow_the_constraint(path):
    """Random weights at temperature 1.5: only a correct mask (token bytes of SentencePiece and byte-level BPE
    vocabularies, multi-byte characters split over tokens) keeps every answer valid and ended by the grammar."""
    llm = engine.load(str(TINY / path))
    for seed in range(3):
        text = "".join(llm.generate("Hello world", max_tokens=250, temperature=1.5, seed=seed, repeat_penalty=1.0,
                                    response_format=as_format(MIXED)))
        assert llm.last_stats.finish_reason == "stop"
        jsonschema.validate(json.loads(text), MIXED)
        pattern = r"[a-z]{2,6}( [0-9]{1,3}){2}"
        text = "".join(llm.generate("Hello", max_tokens=60, temperature=1.5, seed=seed,
                                    response_format={"type": "regex", "regex": pattern}))
        assert re.fullmatch(pattern, text) and llm.last_stats.finish_reason == "stop"


@pytest.mark.parametrize("path", ["mistral_spm/model-Q8_0.gguf", "gemma3/model-Q8_0.gguf"])
def test_forced_text_tokenizes_to_its_own_bytes(path, smollm2):
    """llguidance tokenizes the text a grammar forces with the vocabulary's function, which must give exactly that
    text's bytes: a SentencePiece encoder would put a space in front ("▁{")."""
    for tokenizer in (engine.load(str(TINY / path)).tokenizer, smollm2.tokenizer):
        vocab = structured._Vocabulary(tokenizer)
        special = {i for i in range(300) if tokenizer.is_special(i) or i in tokenizer.eos_ids}
        assert vocab.tokens[:300] == [(b"\xff" if i in special else b"") + tokenizer.token_bytes(i)
                                      for i in range(300)]
        for text in ("{", " {", '{"a": "héllo"}', "\n\n", "ü€"):
            assert b"".join(vocab.tokens[i] for i in vocab(text)) == text.encode()


# -- the generate loop -------------------------------------------------------------------------------------------


def test_each_mask_is_computed_on_a_helper_thread_while_the_forward_runs(smollm2, monkeypatch):
    """The mask of a token starts before the forward that gives the token's logits (so it runs beside it), on a
    helper thread; no forward runs after the grammar has ended."""
    events, fill, start = [], structured.Guide._fill, structured.Guide.start

    def traced_fill(guide):
        events.append(("fill", threading.current_thread().name))
        fill(guide)

    def traced_start(guide):
        events.append(("start", None))
        start(guide)

    class Traced:
        def forward(self, *a, **k):
            events.append(("forward", None))
            return smollm2.runner.forward(*a, **k)

        def submit(self, *a, **k):  # as DirectRunner: the forward runs when its result is asked for
            return Deferred(lambda: self.forward(*a, **k))

    monkeypatch.setattr(structured.Guide, "_fill", traced_fill)
    monkeypatch.setattr(structured.Guide, "start", traced_start)
    fmt = SamplingParams(temperature=0, response_format={"type": "regex", "regex": "(yes|no)!"})
    ids = smollm2.encode_prompt("Is the sky blue? Answer:")
    guide = structured.Guide(fmt.response_format, smollm2.tokenizer)
    stats = GenerationStats()
    tokens = list(generate_tokens(Traced(), smollm2.new_cache(), ids, fmt, 20, smollm2.tokenizer.eos_ids, stats,
                                  guide=guide))
    assert smollm2.tokenizer.decode(tokens) in ("yes!", "no!") and stats.finish_reason == "stop"
    kinds = [k for k, _ in events if k != "fill"]
    assert kinds == ["start", "forward"] * len(tokens)  # the last token ends the grammar: no forward after it
    assert {name.startswith("engine-mask") for k, name in events if k == "fill"} == {True}


def test_end_of_sequence_only_where_the_grammar_accepts(smollm2):
    tok = smollm2.tokenizer
    eos = sorted(tok.eos_ids)
    a, b = (tok.encode(c, add_special=False)[0] for c in "ab")
    guide = structured.Guide(SamplingParams(response_format={"type": "regex", "regex": "ab(ab)*"}).response_format,
                             tok)
    allowed = guide.allowed(smollm2.config.vocab_size)
    assert allowed[a] and not allowed[b] and not allowed[eos].any()  # nothing yet: no end
    guide.consume(a)
    allowed = guide.allowed(smollm2.config.vocab_size)
    assert allowed[b] and not allowed[eos].any()
    guide.consume(b)
    allowed = guide.allowed(smollm2.config.vocab_size)
    assert allowed[a] and allowed[eos].all() and not guide.finished  # accepted, and it may go on
    assert not allowed[[i for i in range(len(allowed)) if tok.is_special(i) and i not in tok.eos_ids]].any()


def test_constrained_and_free_sequences_share_the_batch(smollm2):
    """Four sequences in one BatchingRunner, each with its own matcher (three schemas, one free): every greedy
    answer is the one it gives alone."""
    jobs = [("person", as_format(SCHEMAS["person"][1])), ("enum", as_format(SCHEMAS["enum"][1])),
            ("top_level_array", as_format(SCHEMAS["top_level_array"][1])), ("person", None)]

    def answer(llm, name, fmt):
        chat = llm.chat(system="Answer in JSON.")
        return "".join(p.text for p in chat.send(SCHEMAS[name][0], max_tokens=60, temperature=0,
                                                 response_format=fmt))

    alone = [answer(smollm2, *job) for job in jobs]
    runner = BatchingRunner(smollm2.model)
    served, got = smollm2.with_runner(runner), [None] * len(jobs)

    def work(i):
        try:
            got[i] = answer(served, *jobs[i])
        finally:
            runner.leave()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        runner.close()
    assert got == alone and runner.max_rows_per_step > 1
    for (name, fmt), text in zip(jobs[:3], got):
        jsonschema.validate(json.loads(text), SCHEMAS[name][1])


# -- SmolLM2's answers -------------------------------------------------------------------------------------------


def test_the_schema_suite_is_broad():
    assert len(SCHEMAS) >= 20
    text = json.dumps(list(SCHEMAS.values()))
    for keyword in ('"$ref"', '"enum"', '"minimum"', '"items"', '"anyOf"', '"format"', '"pattern"'):
        assert keyword in text


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_smollm2_answers_validate_greedy_and_sampled(smollm2, name):
    prompt, schema = SCHEMAS[name]
    for sampling in ({"temperature": 0}, SAMPLED):
        chat = smollm2.chat(system="Answer in JSON.")
        text = "".join(p.text for p in chat.send(prompt, max_tokens=400, response_format=as_format(schema, name),
                                                 **sampling))
        assert chat.last_usage.finish_reason == "stop", (sampling, text)
        jsonschema.validate(json.loads(text), schema)


def test_raw_generate_json_object_and_pydantic_model(smollm2):
    text = "".join(smollm2.generate("A JSON object describing a cat:", max_tokens=200, temperature=0,
                                    response_format={"type": "json_object"}))
    assert isinstance(json.loads(text), dict) and smollm2.last_stats.finish_reason == "stop"

    class Country(BaseModel):
        name: str = Field(max_length=30)
        code: str = Field(min_length=2, max_length=2)

    class City(BaseModel):
        name: str = Field(max_length=30)
        country: Country
        population: int = Field(ge=0, le=50_000_000)

    for sampling in ({"temperature": 0}, SAMPLED):
        chat = smollm2.chat()
        text = "".join(p.text for p in chat.send("Describe Paris.", max_tokens=200, response_format=City,
                                                 **sampling))
        City.model_validate_json(text)


@pytest.mark.parametrize("fmt, pattern", [
    ({"type": "grammar", "grammar": GBNF}, r"(yes|no) because [a-z ]{5,40}\."),
    ({"type": "grammar", "grammar": LARK, "syntax": "lark"}, r"The answer is [0-9]{1,4}\."),
    ({"type": "regex", "regex": r"(Paris|London|Rome), [A-Z][a-z]{2,12}"}, r"(Paris|London|Rome), [A-Z][a-z]{2,12}"),
])
def test_smollm2_regex_and_grammars(smollm2, fmt, pattern):
    for sampling in ({"temperature": 0}, SAMPLED):
        chat = smollm2.chat()
        text = "".join(p.text for p in chat.send("Is the sky blue? What is 12 * 12? Name a capital city.",
                                                 max_tokens=80, response_format=fmt, **sampling))
        assert re.fullmatch(pattern, text) and chat.last_usage.finish_reason == "stop"
