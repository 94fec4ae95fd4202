"""--json-schema FILE, --grammar FILE and --regex PATTERN on the command lines: checked (read and compiled) by
argparse before any model loads, one at most, and obeyed by the answer."""
import json
import re

import jsonschema
import pytest

import engine
from engine.cli import chat, generate
from engine.runtime.sampler import SamplingParams

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
          "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}}}
GBNF = 'root ::= ("yes" | "no") ", " [a-z]{2,10} "."'
LARK = 'start: "Answer: " NUMBER\nNUMBER: /[0-9]{1,3}/'


@pytest.fixture
def files(tmp_path):
    paths = {"schema.json": json.dumps(SCHEMA), "bad.json": '{"type": "foo"}', "broken.json": "{nope",
             "unique.json": '{"type": "array", "uniqueItems": true}', "g.gbnf": GBNF, "g.lark": LARK,
             "bad.gbnf": "root ::= missing"}
    for name, text in paths.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.fixture
def no_load(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(engine, "load", load)


@pytest.mark.parametrize("argv, fragment", [
    (["--json-schema", "missing.json"], "--json-schema: cannot read missing.json"),
    (["--json-schema", "broken.json"], "--json-schema: "),
    (["--json-schema", "bad.json"], "--json-schema: the JSON schema cannot be compiled: Invalid type: foo"),
    (["--json-schema", "unique.json"], "uniqueItems"),
    (["--grammar", "bad.gbnf"], "--grammar: the grammar cannot be compiled"),
    (["--regex", "(("], "--regex: the regular expression cannot be compiled"),
    (["--regex", "a", "--grammar", "g.gbnf"], "not allowed with argument"),
])
def test_bad_constraints_fail_before_loading(argv, fragment, files, no_load, capsys, monkeypatch):
    monkeypatch.chdir(files)
    for main in (generate.main, chat.main):
        with pytest.raises(SystemExit) as e:
            main((["--prompt", "hi"] if main is generate.main else []) + argv)
        assert e.value.code == 2 and fragment in capsys.readouterr().err


def test_the_flags_make_the_sampling_constraint(files):
    args = chat.build_parser().parse_args(["--grammar", str(files / "g.lark")])
    params = SamplingParams.from_args(args, SamplingParams())
    assert params.response_format.kind == "grammar" and params.response_format.spec["syntax"] == "lark"
    assert SamplingParams.from_args(chat.build_parser().parse_args([]), SamplingParams()).response_format is None


@pytest.mark.parametrize("flag, value, check", [
    ("--json-schema", "schema.json", lambda out: jsonschema.validate(json.loads(out), SCHEMA)),
    ("--grammar", "g.gbnf", lambda out: re.fullmatch(r"(yes|no), [a-z]{2,10}\.", out) or pytest.fail(out)),
    ("--grammar", "g.lark", lambda out: re.fullmatch(r"Answer: [0-9]{1,3}", out) or pytest.fail(out)),
    ("--regex", "[A-Z][a-z]{2,12}", lambda out: re.fullmatch(r"[A-Z][a-z]{2,12}", out) or pytest.fail(out)),
])
def test_generate_obeys_the_constraint(flag, value, check, files, smollm2_gguf, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = ["--model", str(smollm2_gguf), "--prompt", "Where is the Eiffel tower?", "--max-tokens", "80", flag, value]
    assert generate.main(argv) == 0
    check(capsys.readouterr().out.removesuffix("\n"))
