"""engine.load / LLM: the public API on tiny fixtures and the real SmolLM2, and its errors."""
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import engine
from engine.errors import (ContextOverflowError, InvalidRequestError, ModelFileError, TokenizerError,
                           UnsupportedModelError)
from gguf_copy import copy_gguf
from reference import gguf_logits

TINY = Path(__file__).parents[2] / "fixtures" / "tiny"
ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def tiny():
    return engine.load(str(TINY / "qwen2" / "model-Q8_0.gguf"), n_ctx=48)


def test_logits_api_shape_and_values(tiny):
    ids = [3, 50, 7, 120]
    out = tiny.logits(ids)
    assert out.shape == (4, tiny.config.vocab_size) and out.dtype == np.float32
    np.testing.assert_array_less(np.abs(out - gguf_logits(TINY / "qwen2" / "model-Q8_0.gguf", ids)).max(), 5e-3)


def test_generate_streams_text_that_decodes_the_greedy_tokens(tiny):
    prompt = "the cat"
    pieces = list(tiny.generate(prompt, max_tokens=12))
    ids = tiny.tokenizer.encode(prompt)
    expected, history = [], list(ids)
    for _ in range(12):  # greedy by full recompute through the public logits()
        nxt = int(np.argmax(tiny.logits(history)[-1]))
        if nxt in tiny.tokenizer.eos_ids:
            break
        expected.append(nxt)
        history.append(nxt)
    assert "".join(pieces) == tiny.tokenizer.decode(expected)
    assert tiny.last_stats.completion_tokens == len(expected)
    assert tiny.last_stats.prompt_tokens == len(ids)


def test_stop_string_is_never_emitted_even_across_tokens(tiny):
    full = "".join(tiny.generate("the cat", max_tokens=20))
    assert len(full) > 6
    stop = full[3:6]  # ends generation; likely spans a token boundary
    text = "".join(tiny.generate("the cat", max_tokens=20, stop=[stop]))
    assert text == full[:full.index(stop)]
    assert tiny.last_stats.finish_reason == "stop"


def test_seed_makes_sampling_reproducible(tiny):
    kw = dict(max_tokens=10, temperature=1.5, top_k=50, top_p=0.95, seed=123)
    assert list(tiny.generate("the cat", **kw)) == list(tiny.generate("the cat", **kw))


def test_full_context_stops_with_length(tiny):
    text = list(tiny.generate([1] * 46, max_tokens=10))
    assert tiny.last_stats.completion_tokens <= 3 and tiny.last_stats.finish_reason in ("length", "stop")
    assert isinstance(text, list)


def test_bad_requests(tiny):
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny.generate("")
    with pytest.raises(InvalidRequestError, match="empty"):
        tiny.logits([])
    with pytest.raises(ContextOverflowError, match="context"):
        tiny.generate("word " * 200)
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        tiny.logits([tiny.config.vocab_size])
    with pytest.raises(InvalidRequestError, match="temperature"):
        tiny.generate("hi", temperature=-1)
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        tiny.generate("hi", max_tokens=0)


def test_unknown_architecture(tmp_path):
    copy_gguf(TINY / "qwen2" / "model-Q8_0.gguf", tmp_path / "m.gguf", {"general.architecture": "rwkv9"})
    with pytest.raises(UnsupportedModelError, match="rwkv9.*Supported architectures: llama"):
        engine.load(str(tmp_path / "m.gguf"))


def test_missing_tokenizer(tmp_path):
    copy_gguf(TINY / "qwen2" / "model-Q8_0.gguf", tmp_path / "m.gguf", drop_prefixes=("tokenizer.",))
    with pytest.raises(TokenizerError, match="no tokenizer"):
        engine.load(str(tmp_path / "m.gguf"))
    hf = tmp_path / "hf"
    shutil.copytree(TINY / "qwen2" / "hf", hf)
    (hf / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer"):
        engine.load(str(hf))


def test_truncated_safetensors(tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(TINY / "llama" / "hf", hf)
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        engine.load(str(hf))


def test_smollm2_says_paris(smollm2_gguf):
    llm = engine.load(str(smollm2_gguf))
    text = "".join(llm.generate("The capital of France is", max_tokens=1))
    assert text == " Paris"


def test_cli_streams_and_reports(tmp_path):
    model = TINY / "qwen3" / "model-Q8_0.gguf"
    r = subprocess.run([sys.executable, "-m", "engine.generate", "--model", str(model), "--prompt", "hello",
                        "--max-tokens", "5", "--raw", "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "loaded" in r.stderr and "tok/s" in r.stderr
    llm = engine.load(str(model))
    assert r.stdout == "".join(llm.generate("hello", max_tokens=5)) + "\n"


def test_cli_error_is_one_clean_line(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope" * 10)
    r = subprocess.run([sys.executable, "-m", "engine.generate", "--model", str(bad), "--prompt", "hi"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr


# -- malformed GGUF files: typed errors naming the file and the problem, never NaN or an untyped exception -------

def _patched(tmp_path: Path, src: Path, changes: list[tuple[int, bytes]]) -> Path:
    data = bytearray(src.read_bytes())
    for at, new in changes:
        data[at:at + len(new)] = new
    path = tmp_path / f"patched-{src.parent.name}-{src.name}"
    path.write_bytes(bytes(data))
    return path


def _field_at(src: Path, key: str, part: int) -> int:
    """File offset of part `part` of a metadata field as gguf-py's reader splits it (3: a scalar's value)."""
    field = gguf.GGUFReader(src).fields[key]
    return field.offset + sum(p.nbytes for p in field.parts[:part])


def _data_at(src: Path, name: str) -> int:
    return int(next(t for t in gguf.GGUFReader(src).tensors if t.name == name).data_offset)


def test_a_context_length_past_memory_is_refused_at_load_naming_ctx_size(tmp_path):
    src = TINY / "qwen2" / "model-Q8_0.gguf"
    bad = _patched(tmp_path, src, [(_field_at(src, "qwen2.context_length", 3), struct.pack("<I", 2**32 - 1))])
    with pytest.raises(ContextOverflowError, match=r"4294967295-token context .*smaller n_ctx \(--ctx-size\)"):
        engine.load(str(bad))
    llm = engine.load(str(bad), n_ctx=32)
    assert llm.n_ctx == 32 and llm.config.max_context == 2**32 - 1
    assert np.isfinite(llm.logits([1, 2, 3])).all()


def test_nan_weights_end_generation_with_a_typed_error(tmp_path):
    """NaN in a matrix (not scanned at load): logits() and generation, greedy or sampled, raise ModelFileError
    naming the file instead of emitting token 0 forever or failing in the sampler."""
    src = TINY / "llama" / "model-F32.gguf"
    bad = _patched(tmp_path, src, [(_data_at(src, "output.weight") + 4 * 1000, struct.pack("<f", float("nan")))])
    llm = engine.load(str(bad), n_ctx=32)
    for run in (lambda: llm.logits([1, 2, 3]), lambda: list(llm.generate("the cat", max_tokens=4)),
                lambda: list(llm.generate("the cat", max_tokens=4, temperature=0.9, seed=1))):
        with pytest.raises(ModelFileError, match=re.escape(f"{bad}: the model computed NaN or infinite logits")):
            run()


def test_nan_in_a_norm_is_refused_at_load(tmp_path):
    src = TINY / "llama" / "model-Q8_0.gguf"
    bad = _patched(tmp_path, src, [(_data_at(src, "blk.1.ffn_norm.weight"), struct.pack("<f", float("inf")))])
    with pytest.raises(ModelFileError, match=f"{bad}: tensor 'blk.1.ffn_norm.weight' holds NaN or infinite"):
        engine.load(str(bad))


def test_a_wrong_typed_hyperparameter_names_the_file_and_key(tmp_path):
    src = TINY / "qwen3" / "model-Q8_0.gguf"
    at = _field_at(src, "qwen3.block_count", 2)  # the value type: UINT32 -> FLOAT32, same 4 bytes
    bad = _patched(tmp_path, src, [(at, struct.pack("<I", gguf.GGUFValueType.FLOAT32))])
    with pytest.raises(ModelFileError, match=f"{bad}: GGUF metadata qwen3.block_count is float .*positive integer"):
        engine.load(str(bad))


def test_special_token_ids_outside_the_vocabulary_are_not_used(tmp_path):
    src = TINY / "llama" / "model-Q8_0.gguf"
    bad = _patched(tmp_path, src, [(_field_at(src, "tokenizer.ggml.bos_token_id", 3), struct.pack("<I", 10**6)),
                                   (_field_at(src, "tokenizer.ggml.eos_token_id", 3), struct.pack("<I", 2**32 - 1))])
    llm = engine.load(str(bad), n_ctx=32)
    assert llm.tokenizer.eos_id is None or llm.tokenizer.eos_id < llm.config.vocab_size
    ids = llm.encode_prompt("the cat")
    assert ids and max(ids) < llm.config.vocab_size
    assert isinstance("".join(llm.generate(ids, max_tokens=3)), str)


def test_invalid_utf8_tokens_load_as_replacement_characters(tmp_path):
    src = TINY / "qwen2" / "model-Q8_0.gguf"
    field = gguf.GGUFReader(src).fields["tokenizer.ggml.tokens"]
    i = next(i for i, k in enumerate(field.data) if field.parts[k].nbytes == 3)  # a 3-byte token
    at = field.offset + sum(p.nbytes for p in field.parts[:field.data[i]])
    bad = _patched(tmp_path, src, [(at, b"\xff\xfe\xfd")])
    llm = engine.load(str(bad), n_ctx=32)
    assert llm.tokenizer.id_to_token(i) == b"\xff\xfe\xfd".decode("utf-8", errors="replace")
    assert isinstance(llm.tokenizer.decode([i, 5, i]), str)
    assert isinstance("".join(llm.generate([i, 5, i], max_tokens=3)), str)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    src = TINY / "qwen2" / "model-Q8_0.gguf"  # tied embeddings: token_embd.weight is also the output
    t = next(t for t in gguf.GGUFReader(src).tensors if t.name == "token_embd.weight")
    dims_at = t.field.offset + sum(p.nbytes for p in t.field.parts[:3])
    bad = _patched(tmp_path, src, [(dims_at, struct.pack("<2Q", 256, 256))])  # 384 rows -> 256
    with pytest.raises(ModelFileError, match=f"{bad}: the tokenizer has 384 tokens but the model's embedding only "
                                             "256 rows"):
        engine.load(str(bad))


def test_a_token_past_the_embedding_in_the_text_is_refused(tmp_path):
    """A tokenizer may define tokens the embedding has no row for (Gemma 3 1B's <image_soft_token>): text that
    encodes to one is a request error naming the token, in a raw prompt and in a chat."""
    import json

    hf = tmp_path / "hf"
    shutil.copytree(TINY / "qwen2" / "hf", hf)
    vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
    tok = json.loads((hf / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": vocab, "content": "<image_soft_token>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (hf / "tokenizer.json").write_text(json.dumps(tok))
    llm = engine.load(str(hf), n_ctx=32)
    with pytest.raises(InvalidRequestError, match=f"<image_soft_token>.*id {vocab}"):
        llm.generate("look: <image_soft_token>")
    with pytest.raises(InvalidRequestError, match="no embedding"):
        llm.encode_chat(llm.apply_chat_template([{"role": "user", "content": "<image_soft_token>"}]))
    assert "".join(llm.generate("look", max_tokens=2))  # other text still works
