"""engine.text.tokenizer against llama.cpp: its own vocabulary test vectors, and its answers on the SmolLM2 GGUF."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ModelFileError, TokenizerError
from engine.formats.gguf import read_metadata
from engine.text.tokenizer import SUPPORTED_PRE_TOKENIZERS, StreamDecoder, Tokenizer
from tests.conftest import LLAMA_VOCABS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SMOLLM2_TOKENS = FIXTURES / "smollm2_tokens.json"


# --- 1. llama.cpp's vocabulary test vectors (tests/test-tokenizer-0.cpp) ---------------------------------------


def _read_vocab_tests(path: Path) -> list[tuple[str, list[int]]]:
    """Pairs (text, ids) as test-tokenizer-0.cpp reads them: texts separated by "\\n__ggml_vocab_test__\\n" (a
    trailing separator ends the list), one line of space-separated ids per text."""
    raw = path.with_name(path.name + ".inp").read_bytes().decode("utf-8")
    sep = "\n__ggml_vocab_test__\n"
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(sep)
    lines = path.with_name(path.name + ".out").read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines), f"{path.name}: {len(texts)} texts, {len(lines)} id lines"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def llama_vocab(llama_vocab_dir):
    cache: dict[str, Tokenizer] = {}

    def get(name: str) -> tuple[Tokenizer, Path]:
        path = llama_vocab_dir / f"ggml-vocab-{name}.gguf"
        if name not in cache:
            cache[name] = Tokenizer.from_gguf(read_metadata(path))
        return cache[name], path

    return get


@pytest.mark.parametrize("name", LLAMA_VOCABS)
def test_llama_cpp_vocab_vectors(llama_vocab, name):
    # test-tokenizer-0.cpp: common_tokenize(ctx, text, add_special=false, parse_special=false), exact ids
    tok, path = llama_vocab(name)
    tests = _read_vocab_tests(path)
    assert len(tests) > 30
    bad = []
    for text, want in tests:
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != want:
            bad.append(f"{text!r}: want {want}, got {got}")
        # llama.cpp's test only prints the detokenization; we require the exact text back
        elif tok.decode(got) != text:
            bad.append(f"{text!r}: decodes to {tok.decode(got)!r}")
    assert not bad, f"{name}: {len(bad)}/{len(tests)} differ:\n" + "\n".join(bad)


def test_llama_cpp_vocab_settings(llama_vocab):
    spm, _ = llama_vocab("llama-spm")
    assert (spm.bos_id, spm.eos_id, spm.add_bos, spm.add_eos) == (1, 2, True, False)
    assert spm.bos_token == "<s>" and spm.eos_token == "</s>"
    assert spm.encode("Hello") == [1] + spm.encode("Hello", add_special=False)
    # SentencePiece: space prefix on each text run (also after a special token), byte fallback, "<s>" parsing
    assert spm.encode("<s>Hello", add_special=False) == [1] + spm.encode("Hello", add_special=False)
    assert spm.encode("<s>Hello", add_special=False, parse_special=False)[0] != 1
    assert spm.decode(spm.encode("Hello world")) == "<s> Hello world"  # llama.cpp keeps the space after BOS
    assert spm.decode(spm.encode("Hello world"), skip_special=True) == " Hello world"
    assert spm.decode(spm.encode("Hello world", add_special=False)) == "Hello world"
    rare = "\U0001F999"  # not in the vocabulary: 4 byte tokens
    ids = spm.encode(rare, add_special=False)
    assert [spm.id_to_token(i) for i in ids[-4:]] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]

    l3, _ = llama_vocab("llama-bpe")
    assert l3.add_bos and l3.bos_token == "<|begin_of_text|>"
    assert l3.token_to_id("<|eot_id|>") in l3.eos_ids and l3.eos_id in l3.eos_ids
    ids = l3.encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    assert ids[:2] == [128000, 128006] and ids[-1] == 128009
    assert l3.decode(ids, skip_special=True) == "user\n\nHi"

    q, _ = llama_vocab("qwen2")
    assert not q.add_bos and q.encode("hi") == q.encode("hi", add_special=False)
    assert q.token_to_id("<|im_end|>") in q.eos_ids


# --- 2. SmolLM2 GGUF against llama.cpp (fixture made by tests/fixtures/make_tokenizer_fixtures.py) -------------


@pytest.fixture(scope="module")
def smollm2_reference() -> dict:
    if not SMOLLM2_TOKENS.is_file():
        pytest.fail(f"{SMOLLM2_TOKENS} is missing: run tests/fixtures/make_tokenizer_fixtures.py")
    return json.loads(SMOLLM2_TOKENS.read_text(encoding="utf-8"))


def test_smollm2_matches_llama_cpp(smollm2_tokenizer, smollm2_reference):
    tok = smollm2_tokenizer
    bad = []
    for case in smollm2_reference["cases"]:
        text, add, parse = case["text"], case["add_special"], case["parse_special"]
        got = tok.encode(text, add_special=add, parse_special=parse)
        if got != case["ids"]:
            bad.append(f"{text!r} add_special={add} parse_special={parse}: want {case['ids']}, got {got}")
    assert not bad, f"{len(bad)}/{len(smollm2_reference['cases'])} differ:\n" + "\n".join(bad)


def test_smollm2_decode_matches_llama_cpp(smollm2_tokenizer, smollm2_reference):
    tok = smollm2_tokenizer
    for case in smollm2_reference["cases"]:
        assert tok.decode_bytes(case["ids"]) == bytes.fromhex(case["detokenized_hex"]), case["text"]
        assert tok.decode(case["ids"]) == case["text"]


def test_smollm2_special_tokens(smollm2_tokenizer, smollm2_reference):
    tok, ref = smollm2_tokenizer, smollm2_reference
    assert tok.vocab_size == ref["n_vocab"] == 49152
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (ref["bos_id"], ref["eos_id"], ref["add_bos"])
    assert tok.eos_ids == frozenset(ref["eog_ids"])
    assert {i for i in range(tok.vocab_size) if tok.is_special(i)} == set(ref["control_ids"])
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert tok.token_to_id("<|im_start|>") == 1 and tok.token_to_id("no such token") is None
    assert tok.id_to_token(tok.encode(" hello", add_special=False)[0]) == "Ġhello"
    assert tok.id_to_piece(tok.encode(" hello", add_special=False)[0]) == " hello"
    prompt = "<|im_start|>user\nHi<|im_end|>\n"
    ids = tok.encode(prompt)
    assert ids[0] == 1 and 2 in ids
    assert tok.decode(ids) == prompt
    assert tok.decode(ids, skip_special=True) == "user\nHi\n"
    plain = tok.encode(prompt, parse_special=False)
    assert 1 not in plain and 2 not in plain and tok.decode(plain) == prompt


# --- 3. StreamDecoder ------------------------------------------------------------------------------------------

STREAM_TEXTS = [
    "Hello 世界! 🦙🚀 😶\u200d🌫️ 👨\u200d👩\u200d👧\u200d👦 naïve ✅",
    "日本語のテキスト、한국어, ภาษาไทย, កាន់តែពិសេស",
    "<|im_start|>assistant\n𝟘𝟙 ∑ ∞ — “quotes” 🇫🇷<|im_end|>",
]


def _stream(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    dec = StreamDecoder(tok, skip_special=skip_special)
    return [dec.push(i) for i in ids] + [dec.flush()]


@pytest.mark.parametrize("text", STREAM_TEXTS)
@pytest.mark.parametrize("skip_special", [False, True])
def test_stream_decoder_utf8(smollm2_tokenizer, text, skip_special):
    tok = smollm2_tokenizer
    ids = tok.encode(text)
    # the test is only meaningful if some characters are split over several byte-level tokens
    assert any("\ufffd" in tok.id_to_piece(i) for i in ids)
    chunks = _stream(tok, ids, skip_special)
    assert "".join(chunks) == tok.decode(ids, skip_special=skip_special)
    assert all("\ufffd" not in c for c in chunks)
    if not skip_special:
        assert "".join(chunks) == text
    # every character comes out exactly once, whole, as soon as its last byte is in
    emitted = ""
    for k, c in enumerate(chunks[:-1]):
        emitted += c
        prefix = tok.decode_bytes(ids[: k + 1], skip_special).decode("utf-8", errors="ignore")
        assert emitted == prefix


def test_stream_decoder_spm_and_invalid(llama_vocab):
    spm, _ = llama_vocab("llama-spm")
    text = "Hi \U0001F999 and 世界"  # the llama is 4 <0xXX> byte tokens
    ids = spm.encode(text)
    chunks = _stream(spm, ids)
    assert "".join(chunks) == spm.decode(ids) and all("\ufffd" not in c for c in chunks)
    assert "\U0001F999" in chunks
    ids = spm.encode(text, add_special=False)
    assert "".join(_stream(spm, ids)) == text  # leading space prefix dropped, as decode does
    # an incomplete sequence at the end becomes one U+FFFD at flush, as in decode
    cut = [spm.token_to_id("<0xF0>"), spm.token_to_id("<0x9F>")]
    chunks = _stream(spm, cut)
    assert chunks == ["", "", "\ufffd"] and spm.decode(cut) == "\ufffd"
    # a stray continuation byte is invalid at once
    assert _stream(spm, [spm.token_to_id("<0x80>")])[0] == "\ufffd"


# --- 4. tokenizer.json ------------------------------------------------------------------------------------------


def test_from_file_with_configs(tmp_path, smollm2_tokenizer):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    g = smollm2_tokenizer
    g.hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"__type": "AddedToken", "content": "<|im_start|>"}, "eos_token": "<|im_end|>",
        "add_bos_token": False}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.vocab_size) == (1, 2, False, 49152)
    assert tok.eos_ids == frozenset({0, 2})
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    for text in ["Hello 世界 🦙 <|im_start|>user\nx<|im_end|>", "a  b\n\n 123456", "<repo_name>x"]:
        for parse in (True, False):
            ids = tok.encode(text, parse_special=parse)
            assert ids == g.encode(text, parse_special=parse)
            assert tok.decode(ids) == text
            assert tok.decode(ids, skip_special=True) == g.decode(ids, skip_special=True)

    # no add_bos_token in tokenizer_config.json: the post-processor decides; config_dir given explicitly
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    other = tmp_path / "other"
    other.mkdir()
    hf.save(str(other / "tokenizer.json"))
    tok2 = Tokenizer.from_file(other / "tokenizer.json", config_dir=tmp_path)  # add_bos_token=False wins
    assert not tok2.add_bos and tok2.encode("hi") == g.encode("hi")
    tok3 = Tokenizer.from_file(other / "tokenizer.json", config_dir=other)  # no configs: BOS from the post-processor
    assert tok3.add_bos and tok3.bos_id == 1 and tok3.eos_id is None and tok3.eos_ids == frozenset()
    assert tok3.encode("hi") == [1] + g.encode("hi") and tok3.encode("hi", add_special=False) == g.encode("hi")


# --- 5. errors --------------------------------------------------------------------------------------------------


def _gpt2_meta(**extra):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ"],
            "tokenizer.ggml.token_type": [1, 1, 1, 1], "tokenizer.ggml.merges": ["a b"]}
    meta.update(extra)
    return meta


def test_errors():
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.from_gguf({"general.architecture": "llama"})
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": []})
    with pytest.raises(TokenizerError, match="'bert'"):
        Tokenizer.from_gguf(_gpt2_meta(**{"tokenizer.ggml.model": "bert"}))
    with pytest.raises(TokenizerError, match=r"'deepseek-llm'.*smollm"):
        Tokenizer.from_gguf(_gpt2_meta(**{"tokenizer.ggml.pre": "deepseek-llm"}))
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_gguf(_gpt2_meta(**{"tokenizer.ggml.merges": []}))
    with pytest.raises(TokenizerError):
        Tokenizer.from_file("/nonexistent/tokenizer.json")
    assert {"smollm", "qwen2", "llama-bpe", "gpt-2", "default"} <= set(SUPPORTED_PRE_TOKENIZERS)
    # a tiny vocabulary works; no pre-tokenizer type means llama.cpp's 'default'
    tok = Tokenizer.from_gguf(_gpt2_meta())
    assert tok.encode("ab a") == [2, 3, 0] and tok.decode([2, 3, 0]) == "ab a"
    assert tok.bos_id is None and not tok.add_bos and tok.eos_ids == frozenset()
    with pytest.raises(TokenizerError):
        tok.decode([99])


def test_from_file_sentencepiece(tmp_path, llama_vocab):
    # a Llama-2 style tokenizer.json (Prepend/Replace normalizer, byte fallback, Strip decoder)
    g, path = llama_vocab("llama-spm")
    g.hf_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>"}))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.eos_ids) == (1, 2, True, frozenset({2}))
    for text, want in _read_vocab_tests(path):
        assert tok.encode(text, add_special=False, parse_special=False) == want, text
        assert tok.encode(text) == g.encode(text)
        assert tok.decode(want) == text


def test_user_defined_and_rstrip(llama_vocab):
    # Phi-3 (by model name, as llama.cpp): ASCII whitespace after its special tokens is dropped, other spaces kept
    phi3, _ = llama_vocab("phi-3")
    user = phi3.token_to_id("<|user|>")
    assert phi3.encode("<|user|> \n\tHi", add_special=False) == phi3.encode("<|user|>Hi", add_special=False)
    assert phi3.encode("<|user|>\u00a0Hi", add_special=False) != phi3.encode("<|user|>Hi", add_special=False)
    assert phi3.encode("<|user|>Hi", add_special=False)[0] == user
    assert user not in phi3.encode("<|user|>Hi", add_special=False, parse_special=False)
    # user-defined tokens (type 4) are matched even with parse_special=False and decode to their plain text (they
    # are not byte-level encoded); control tokens (type 3) only with parse_special, and skip_special drops them
    meta = _gpt2_meta(**{"tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ", "<｜user▁x｜>", "<c>", "<", "c", ">"],
                         "tokenizer.ggml.token_type": [1, 1, 1, 1, 4, 3, 1, 1, 1]})
    tok = Tokenizer.from_gguf(meta)
    text = "ab<｜user▁x｜> a<c>"
    assert tok.encode(text, parse_special=False) == [2, 4, 3, 0, 6, 7, 8]
    assert tok.encode(text) == [2, 4, 3, 0, 5]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text), skip_special=True) == "ab<｜user▁x｜> a"


# --- 6. untrusted tokenizer files ------------------------------------------------------------------------------

TINY_LLAMA = FIXTURES / "tiny" / "llama" / "hf"


def _tiny_copy(tmp_path: Path, **mutations) -> Path:
    """The tiny Llama's tokenizer files in tmp_path, each file_json=mutate applied to that (parsed) file."""
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        value = json.loads((TINY_LLAMA / name).read_text())
        mutations.get(name.replace(".", "_"), lambda v: None)(value)
        (tmp_path / name).write_text(json.dumps(value))
    return tmp_path / "tokenizer.json"


@pytest.mark.parametrize(("file", "mutate", "message"), [
    # no added_tokens: the BOS id the configs name (380) is no token of the file any more (was an IndexError)
    ("tokenizer_json", lambda t: t.pop("added_tokens"), "BOS token id 380 is outside the vocabulary"),
    ("tokenizer_json", lambda t: t["model"]["vocab"].update(a=2**31), "id 2147483648, far beyond the 384 tokens"),
    ("tokenizer_json", lambda t: t["model"]["vocab"].update(a=-1), "not a usable tokenizer.json"),
    ("tokenizer_json", lambda t: t["model"].update(vocab=[1, 2]), "not a usable tokenizer.json"),
    ("tokenizer_config_json", lambda t: t.update(add_bos_token="yes"), "add_bos_token is 'yes', expected true or"),
    ("tokenizer_config_json", lambda t: t.update(bos_token=5), "bos_token is int 5, expected a token string"),
    ("tokenizer_config_json", lambda t: t.update(eos_token={"content": ["x"]}), "eos_token is dict"),
    ("generation_config_json", lambda t: t.update(eos_token_id="2"), "generation_config.json eos_token_id is '2'"),
    ("generation_config_json", lambda t: t.update(bos_token_id=[1.5]), "bos_token_id is \\[1.5\\]"),
    ("config_json", lambda t: t.update(bos_token_id=True), "config.json bos_token_id is True"),
])
def test_malformed_tokenizer_files_are_refused(tmp_path, file, mutate, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_file(_tiny_copy(tmp_path, **{file: mutate}))


def test_post_processor_ids_outside_the_vocabulary_are_refused(tmp_path):
    def template(t):
        t["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [99999], "tokens": ["<s>"]}}}
    path = _tiny_copy(tmp_path, tokenizer_json=template,
                      tokenizer_config_json=lambda t: [t.pop(k) for k in ("add_bos_token", "add_eos_token")])
    with pytest.raises(TokenizerError, match="post-processor's special token id 99999 is outside the vocabulary"):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b"[" * 100000 + b"]" * 100000])
def test_unparseable_tokenizer_json_is_a_tokenizer_error(tmp_path, raw):
    path = _tiny_copy(tmp_path)
    path.write_bytes(raw)
    with pytest.raises(TokenizerError, match="tokenizer.json: not a usable tokenizer.json"):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "generation_config.json", "config.json"])
def test_unparseable_config_files_name_the_file(tmp_path, name):
    path = _tiny_copy(tmp_path)
    (tmp_path / name).write_bytes(b'{"bos_token": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    with pytest.raises(ModelFileError, match=f"{name}: not valid JSON .*nested too deeply"):
        Tokenizer.from_file(path)


def test_padding_and_truncation_of_the_file_are_ignored(tmp_path):
    """Prompts are encoded whole: a tokenizer.json padding to 2^20 ids (or truncating to 2) changes nothing."""
    plain = Tokenizer.from_file(_tiny_copy(tmp_path))
    padded = Tokenizer.from_file(_tiny_copy(tmp_path, tokenizer_json=lambda t: t.update(
        padding={"strategy": {"Fixed": 2**20}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                 "pad_type_id": 0, "pad_token": "<|end_of_text|>"},
        truncation={"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0})))
    assert padded.encode("Hello world, hi") == plain.encode("Hello world, hi") and len(plain.encode("Hello")) > 2
