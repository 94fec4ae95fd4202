"""The command lines as a new user meets them: every flag checked by argparse before anything loads (exit status 2,
the flag named), --ctx-size against the model's context, help with defaults, --version, the console scripts, a
busy port reported before serving, and Ctrl-C in the chat REPL."""
import importlib
import io
import re
import signal
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

import engine
from bench import tokens
from engine import __main__ as engine_main
from engine.chat import Piece
from engine.cli import chat, common, generate, quantize, serve
from engine.cli.chat import _Repl
from serve_process import start_serve

ROOT = Path(__file__).parents[3]
TINY_HF = str(ROOT / "tests" / "fixtures" / "tiny" / "qwen2" / "hf")
QUANTIZE = [TINY_HF, "--type", "q8_0", "-o", "out.gguf"]
PARSERS = {"generate": generate.build_parser, "chat": chat.build_parser, "serve": serve.build_parser,
           "quantize": quantize.build_parser}


@pytest.fixture
def no_load(monkeypatch):
    """engine.load fails the test: an argparse error must come before any model loads."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(engine, "load", load)


BAD_FLAGS = [  # (main, argv, the flag argparse names)
    (generate.main, ["--prompt", "hi", "--max-tokens", "-1"], "--max-tokens"),
    (generate.main, ["--prompt", "hi", "--max-tokens", "0"], "--max-tokens"),
    (generate.main, ["--prompt", "hi", "--top-p", "5"], "--top-p"),
    (generate.main, ["--prompt", "hi", "--top-p", "0"], "--top-p"),
    (generate.main, ["--prompt", "hi", "--min-p", "1"], "--min-p"),
    (generate.main, ["--prompt", "hi", "--temperature", "-0.5"], "--temperature"),
    (generate.main, ["--prompt", "hi", "--temperature", "nan"], "--temperature"),
    (generate.main, ["--prompt", "hi", "--top-k", "-1"], "--top-k"),
    (generate.main, ["--prompt", "hi", "--top-k", "2.5"], "--top-k"),
    (generate.main, ["--prompt", "hi", "--repeat-penalty", "0"], "--repeat-penalty"),
    (generate.main, ["--prompt", "hi", "--repeat-last-n", "-1"], "--repeat-last-n"),
    (generate.main, ["--prompt", "hi", "--seed", str(1 << 64)], "--seed"),
    (generate.main, ["--prompt", "hi", "--stop", ""], "--stop"),
    (generate.main, ["--prompt", "hi", "--threads", "0"], "--threads"),
    (generate.main, ["--prompt", "hi", "--ctx-size", "0"], "--ctx-size"),
    (generate.main, ["--prompt", "hi", "--ctx-size", "8"], "--ctx-size"),
    (generate.main, ["--prompt", ""], "--prompt"),
    (generate.main, ["--prompt", " \n", "--raw"], "--prompt"),
    (generate.main, ["--prompt", "", "--chat"], "--prompt"),
    (chat.main, ["--threads", "0"], "--threads"),
    (chat.main, ["--top-p", "5"], "--top-p"),
    (serve.main, ["--port", "65536"], "--port"),
    (serve.main, ["--max-batch", "0"], "--max-batch"),
    (serve.main, ["--max-queue", "-1"], "--max-queue"),
    (serve.main, ["--kv-budget", "inf"], "--kv-budget"),
    (serve.main, ["--ctx-size", "8"], "--ctx-size"),
    (quantize.main, QUANTIZE + ["--report-ctx", "2"], "--report-ctx"),
    (quantize.main, QUANTIZE + ["--report-chunks", "0"], "--report-chunks"),
    (quantize.main, QUANTIZE + ["--threads", "0"], "--threads"),
    (tokens.main, ["--model", "m", "--gen", "0"], "--gen"),
    (tokens.main, ["--model", "m", "--prompt-len", "-3"], "--prompt-len"),
    (tokens.main, ["--model", "m", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("main, argv, flag", BAD_FLAGS,
                         ids=[f"{main.__module__.rsplit('.', 1)[-1]} {' '.join(argv[-2:])}" for main, argv, _ in BAD_FLAGS])
def test_a_bad_value_is_argparse_error_naming_the_flag(main, argv, flag, no_load, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"error: argument {flag}: " in capsys.readouterr().err
    assert not (tmp_path / "out.gguf").exists()


def test_bench_tokens_requires_model(capsys):
    with pytest.raises(SystemExit) as e:
        tokens.main(["--gen", "4"])
    assert e.value.code == 2 and "the following arguments are required: --model" in capsys.readouterr().err


def test_an_empty_prompt_fails_before_loading_from_the_shell():
    r = subprocess.run([sys.executable, "-m", "engine.generate", "--prompt", ""], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == ("python -m engine.generate: error: argument --prompt: must not be empty "
                                         "(or only whitespace)")


def test_ctx_size_past_the_model_or_too_small_for_the_prompt_names_the_flag(smollm2_gguf, capsys):
    model = ["--model", str(smollm2_gguf), "--threads", "1"]
    assert generate.main(model + ["--prompt", "hi", "--ctx-size", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: --ctx-size 100000 is larger than the model's context of 8192 tokens; "
                                    "pass --ctx-size 8192 or less, or leave it out.")
    assert generate.main(model + ["--prompt", "word " * 40, "--raw", "--ctx-size", "16"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: the prompt is ") and "--ctx-size" in err and "n_ctx" not in err


@pytest.mark.parametrize("name", PARSERS)
def test_help_describes_the_command_and_gives_every_flag_a_default(name, capsys):
    parser = PARSERS[name]()
    assert parser.description and "`" not in parser.description and "exit status" in parser.epilog
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and not action.required:
            assert "default" in formatter._get_help_string(action) % vars(action) or "required" in action.help, \
                action.option_strings
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0 and "(default: " in capsys.readouterr().out


def test_version_on_every_command(capsys):
    assert engine.__version__ == version("engine")
    assert engine.__version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for main in (generate.main, chat.main, serve.main, quantize.main):
        with pytest.raises(SystemExit) as e:
            main(["--version"])
        assert e.value.code == 0 and capsys.readouterr().out == f"engine {engine.__version__}\n"
    r = subprocess.run([sys.executable, "-m", "engine", "--version"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout == f"engine {engine.__version__}\n"


def test_python_m_engine_lists_the_commands(capsys):
    assert engine_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"^  {name} ", out, re.M) for name in PARSERS)
    assert engine_main.main([]) == 2 and "commands:" in capsys.readouterr().err
    assert engine_main.main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_console_scripts_name_the_command_lines():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"engine", "engine-generate", "engine-chat", "engine-serve", "engine-quantize"} <= set(scripts)
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    assert scripts["engine-generate"] == "engine.cli.generate:main"


def test_serve_reports_a_busy_port_before_loading(no_load, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: port {port} on 127.0.0.1 is in use (Errno 98): pass --port N (0: any free port)\n"


def test_serve_listens_before_it_prints_its_url_and_stops_on_ctrl_c(smollm2_gguf):
    p, url = start_serve("--model", str(smollm2_gguf), "--threads", "1", "--device", "cpu")
    try:
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()
        p.wait()


class _Chat:
    """What the REPL's answer() uses of an engine.chat.Chat."""
    last_usage = None
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_ctrl_c_during_an_answer_prints_nothing_more():
    chat = _Chat()

    def pieces():
        yield Piece("Paris")
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the next token is computed: it is sampled all the same
        yield Piece(" is")
        raise AssertionError("the answer went on after Ctrl-C")

    out = io.StringIO()
    _Repl(chat, {}, False, out=out, err=io.StringIO()).answer(pieces())
    assert chat.cancelled and out.getvalue() == "Paris\n"


def test_exit_status_puts_engine_terms_as_flags(capsys):
    from engine.errors import ContextOverflowError, ModelFileError

    def overflow():
        raise ContextOverflowError("load the model with a smaller n_ctx (--ctx-size).")
    assert common.exit_status(overflow) == 2
    assert capsys.readouterr().err == "error: load the model with a smaller --ctx-size.\n"

    def corrupt():
        raise ModelFileError("x.gguf: truncated")
    assert common.exit_status(corrupt) == 1
