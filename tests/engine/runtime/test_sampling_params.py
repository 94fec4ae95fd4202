"""SamplingParams as every entry point builds it: the same settings from command-line flags, Python keywords and an
OpenAI body; the model's recommended defaults (generation_config.json, GGUF general.sampling.*, then the registry's
model-card values) over the engine's; validation errors that name the field."""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import gguf
import pytest

import engine
from engine.cli import chat, generate
from engine.errors import InvalidRequestError, ModelFileError
from engine.runtime.sampler import SamplingParams, model_defaults
from gguf_copy import copy_gguf

TINY = Path(__file__).parents[2] / "fixtures" / "tiny" / "qwen3"
ENGINE_DEFAULTS = SamplingParams(temperature=0.0, top_k=None, top_p=None, min_p=None, repeat_penalty=1.0,
                                 repeat_last_n=64, seed=None, max_tokens=None, stop=())
MODEL = SamplingParams(temperature=0.6, top_k=20, top_p=0.95, repeat_penalty=1.1)  # stands for a model's defaults


@pytest.mark.parametrize("parser", [generate.build_parser, chat.build_parser])
def test_flags_keywords_and_openai_body_give_the_same_params(parser):
    args = parser().parse_args(["--max-tokens", "12", "--temperature", "0.8", "--top-k", "5", "--top-p", "0.9",
                                "--min-p", "0.05", "--repeat-penalty", "1.2", "--repeat-last-n", "16",
                                "--seed", "-3", "--stop", "END", "--stop", "\n\n"])
    kwargs = dict(max_tokens=12, temperature=0.8, top_k=5, top_p=0.9, min_p=0.05, repeat_penalty=1.2,
                  repeat_last_n=16, seed=-3, stop=["END", "\n\n"])
    body = {**kwargs, "messages": [], "stream": False}
    cli = SamplingParams.from_args(args, MODEL)
    assert cli == SamplingParams.from_kwargs(MODEL, **kwargs) == SamplingParams.from_openai(body, MODEL, 256)
    assert cli == SamplingParams(**kwargs) and cli.stop == ("END", "\n\n")


def test_what_is_left_out_keeps_the_defaults():
    assert SamplingParams() == ENGINE_DEFAULTS
    assert SamplingParams.from_args(generate.build_parser().parse_args([]), MODEL) == MODEL
    assert SamplingParams.from_kwargs(MODEL) == MODEL
    assert SamplingParams.from_openai({"temperature": None, "messages": []}, MODEL) == MODEL
    assert SamplingParams.from_kwargs(MODEL, top_k=None).top_k is None  # None turns a model's filter off
    body = {"max_completion_tokens": 5, "max_tokens": 7}
    assert SamplingParams.from_openai(body, MODEL).max_tokens == 7  # max_tokens wins, as before


@pytest.mark.parametrize("field,value,code", [
    ("temperature", -0.1, "invalid_value"), ("temperature", "hot", "invalid_type"),
    ("temperature", float("nan"), "invalid_value"), ("top_k", 0, "invalid_value"), ("top_k", 2.5, "invalid_type"),
    ("top_p", 0.0, "invalid_value"), ("min_p", 1.0, "invalid_value"), ("repeat_penalty", float("inf"), "invalid_value"),
    ("repeat_last_n", -1, "invalid_value"), ("seed", 1 << 64, "invalid_value"), ("seed", True, "invalid_type"),
    ("max_tokens", 0, "invalid_value"), ("max_tokens", "ten", "invalid_type"), ("stop", [""], "invalid_value"),
    ("stop", [1], "invalid_type"),
])
def test_validation_errors_name_the_field(field, value, code):
    for build in (lambda: SamplingParams(**{field: value}),
                  lambda: SamplingParams.from_kwargs(MODEL, **{field: value}),
                  lambda: SamplingParams.from_openai({field: value}, MODEL, 256)):
        with pytest.raises(InvalidRequestError, match=field) as e:
            build()
        assert (e.value.param, e.value.code) == (field, code)


def test_request_bodies_have_the_api_limits_and_their_own_field_names():
    checks = [({"max_completion_tokens": 0}, "max_completion_tokens"), ({"max_tokens": 257}, "max_tokens"),
              ({"temperature": 2.5}, "temperature"), ({"stop": ["x"] * 17}, "stop")]
    for body, param in checks:
        with pytest.raises(InvalidRequestError, match=param) as e:
            SamplingParams.from_openai(body, MODEL, 256)
        assert e.value.param == param
    assert SamplingParams.from_kwargs(MODEL, temperature=2.5, max_tokens=10 ** 6).temperature == 2.5  # Python: no cap
    with pytest.raises(InvalidRequestError, match="unknown sampling option"):
        SamplingParams.from_kwargs(MODEL, temprature=0.5)


def hf_copy(tmp_path: Path, generation_config) -> Path:
    """The tiny Qwen3 HF directory with generation_config.json replaced (a dict, or raw text)."""
    shutil.copytree(TINY / "hf", tmp_path / "hf")
    text = generation_config if isinstance(generation_config, str) else json.dumps(generation_config)
    (tmp_path / "hf" / "generation_config.json").write_text(text)
    return tmp_path / "hf"


@pytest.mark.parametrize("do_sample", [True, None])
def test_defaults_come_from_generation_config(tmp_path, do_sample):
    config = {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.0, "repetition_penalty": 1.1,
              "max_new_tokens": 30, "eos_token_id": [381, 379]} | ({} if do_sample is None else {"do_sample": True})
    llm = engine.load(str(hf_copy(tmp_path, config)))
    assert llm.sampling_defaults == SamplingParams(temperature=0.6, top_k=20, top_p=0.95, min_p=0.0,
                                                   repeat_penalty=1.1)


def test_do_sample_false_or_no_file_keeps_the_engine_defaults(tmp_path):
    assert engine.load(str(TINY / "hf")).sampling_defaults == ENGINE_DEFAULTS  # the fixture says do_sample: false
    off = hf_copy(tmp_path, {"do_sample": False, "temperature": 0.6, "eos_token_id": [381, 379]})
    assert engine.load(str(off)).sampling_defaults == ENGINE_DEFAULTS
    (off / "generation_config.json").unlink()
    assert engine.load(str(off)).sampling_defaults == ENGINE_DEFAULTS


@pytest.mark.parametrize("text,match", [("{not json", "generation_config.json.*not valid JSON"),
                                        ('{"temperature": "hot", "eos_token_id": 381}', "temperature"),
                                        ('{"do_sample": "yes", "eos_token_id": 381}', "do_sample")])
def test_malformed_generation_config_is_a_model_file_error_naming_it(tmp_path, text, match):
    with pytest.raises(ModelFileError, match=match) as e:
        engine.load(str(hf_copy(tmp_path, text)))
    assert "generation_config.json" in str(e.value)


def gguf_with(tmp_path: Path, keys: dict) -> str:
    return str(copy_gguf(TINY / "model-Q8_0.gguf", tmp_path / "m.gguf", keys))


def test_defaults_come_from_gguf_general_sampling_keys(tmp_path):
    F32, I32 = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.INT32
    keys = {gguf.Keys.General.SAMPLING_TEMP: (0.7, F32), gguf.Keys.General.SAMPLING_TOP_K: (40, I32),
            gguf.Keys.General.SAMPLING_TOP_P: (0.9, F32), gguf.Keys.General.SAMPLING_MIN_P: (0.05, F32),
            gguf.Keys.General.SAMPLING_PENALTY_REPEAT: (1.3, F32),
            gguf.Keys.General.SAMPLING_PENALTY_LAST_N: (32, I32)}
    llm = engine.load(gguf_with(tmp_path, keys))
    assert llm.sampling_defaults == SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05,
                                                   repeat_penalty=1.3, repeat_last_n=32)
    assert engine.load(str(TINY / "model-Q8_0.gguf")).sampling_defaults == ENGINE_DEFAULTS


def test_gguf_off_values_and_corrupt_values(tmp_path):
    I32, F32 = gguf.GGUFValueType.INT32, gguf.GGUFValueType.FLOAT32
    llm = engine.load(gguf_with(tmp_path, {"general.sampling.top_k": (0, I32),
                                           "general.sampling.penalty_last_n": (-1, I32)}), n_ctx=100)
    assert llm.sampling_defaults == SamplingParams(top_k=None, repeat_last_n=100)  # llama.cpp: off, whole context
    with pytest.raises(ModelFileError, match=r"m\.gguf.*general\.sampling\.temp"):
        engine.load(gguf_with(tmp_path, {"general.sampling.temp": (-1.0, F32)}))


def test_generate_chat_and_cli_start_from_the_model_defaults(tmp_path):
    plain = engine.load(str(TINY / "model-Q8_0.gguf"))
    expected = "".join(plain.generate("Hello there", max_tokens=12, repeat_penalty=1.3))
    assert expected != "".join(plain.generate("Hello there", max_tokens=12))  # the penalty shows
    llm = engine.load(gguf_with(tmp_path, {"general.sampling.penalty_repeat": (1.3, gguf.GGUFValueType.FLOAT32)}))
    assert "".join(llm.generate("Hello there", max_tokens=12)) == expected
    c = llm.chat()
    assert "".join(p.text for p in c.send("Hi", max_tokens=6)) == \
        "".join(p.text for p in plain.chat().send("Hi", max_tokens=6, repeat_penalty=1.3))
    assert SamplingParams.from_args(generate.build_parser().parse_args([]), llm.sampling_defaults).repeat_penalty == \
        pytest.approx(1.3)
    assert asdict(llm.sampling_defaults)["repeat_penalty"] == 1.3  # float32 read back as its shortest decimal


def test_registry_sampling_sits_between_the_model_file_and_the_engine_defaults(tmp_path):
    card = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}
    assert model_defaults({}, None, 100, "m.gguf", card) == SamplingParams(**card)
    assert model_defaults({}, None, 100, "m.gguf") == model_defaults({}, None, 100, "m.gguf", {}) == ENGINE_DEFAULTS
    gguf_keys = {"general.sampling.temp": 0.7, "general.sampling.top_k": 0}  # the file wins, field by field
    assert model_defaults(gguf_keys, None, 100, "m.gguf", card) == \
        SamplingParams(temperature=0.7, top_k=None, top_p=0.9, repeat_penalty=1.1)
    hf = hf_copy(tmp_path, {"temperature": 0.6, "top_k": 20, "eos_token_id": [381, 379]})
    assert model_defaults(None, hf, 100, str(hf), card) == \
        SamplingParams(temperature=0.6, top_k=20, top_p=0.9, repeat_penalty=1.1)


def test_the_embedded_model_samples_by_its_card_and_temperature_0_is_greedy(smollm2_gguf):
    llm = engine.load("smollm2", n_ctx=256)
    assert llm.sampling_defaults == SamplingParams(temperature=0.2, top_p=0.9, repeat_penalty=1.1)
    assert SamplingParams.from_args(generate.build_parser().parse_args(["--temperature", "0"]),
                                    llm.sampling_defaults).temperature == 0
    greedy = ["".join(llm.generate("The sea is", max_tokens=8, temperature=0, seed=seed)) for seed in (1, 2)]
    assert greedy[0] == greedy[1]
    assert engine.load(str(smollm2_gguf), n_ctx=256).sampling_defaults == ENGINE_DEFAULTS  # a path: no registry
