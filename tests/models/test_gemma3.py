"""Gemma 3 (one forward with the Llama family, models/llama.py) on a tiny random Gemma3ForCausalLM, against
transformers (float64) on the same weights; its SentencePiece tokenizer against llama.cpp and transformers; its chat
template against transformers' apply_chat_template.

Fixture: tests/fixtures/tiny/gemma3/ (tests/fixtures/make_tiny_models.py): 7 layers, sliding window 5 on layers
0-4 and 6 (RoPE base 1e4), layer 5 global (base 1e6, linear scaling x4), query_pre_attn_scalar = head_dim 32,
q width 128 != hidden 64, tied embeddings, (1 + w) norms, pre/post norms, GeGLU.
"""
import json
import shutil

import gguf
import numpy as np
import pytest

from engine.errors import UnsupportedModelError
from engine.runtime.generate import GenerationStats, generate_tokens
from engine.runtime.runner import DirectRunner
from engine.runtime.sampler import SamplingParams
from models import ModelConfig
from reference import hf_greedy, hf_logits
from tiny_models import TINY, fresh_cache, load, reference

FIXTURE = TINY / "gemma3"
FORMATS = ["hf", "model-F32.gguf", "model-Q8_0.gguf"]
IDS = [2, 5, 17, 100, 200, 3, 44, 91, 250, 12, 7, 300, 2, 64, 128, 33, 9, 101, 480, 6]  # 20 > window 5
TEXTS = ["Hello world", "  two  spaces and a tab\there", "Numbers: 3.14159 and 1,000,000.", "Café, naïve 🙂 — 你好",
         "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n", "\n\n x"]


def test_tiny_gemma3_exercises_the_features():
    hf, gg = load(FIXTURE / "hf").config, load(FIXTURE / "model-F32.gguf").config
    for c in (hf, gg):
        assert c.arch == "gemma3" and c.tie_embeddings and c.qk_norm and c.post_norms and c.ffn_act == "gelu_tanh"
        assert c.sliding_layers == (True,) * 5 + (False, True) and c.sliding_window < len(IDS)
        assert (c.rope_theta, c.rope_theta_swa, c.rope_scaling["factor"]) == (1e6, 1e4, 4.0)
        assert c.n_heads * c.head_dim != c.hidden_size and c.embed_scale == pytest.approx(8.0)
    assert (hf.norm_offset, gg.norm_offset) == (1.0, 0.0)
    # llama.cpp's converter stores Gemma's norm weights as 1 + w
    reader = gguf.GGUFReader(FIXTURE / "model-F32.gguf")
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    hf_w = load(FIXTURE / "hf").model.layers[2]["post_ffw_norm"]  # (1 + w) after loading
    np.testing.assert_array_equal(stored["blk.2.post_ffw_norm.weight"], hf_w)


@pytest.mark.parametrize("fmt", FORMATS)
def test_logits_match_transformers(fmt):
    path = FIXTURE / fmt
    loaded = load(path)
    ours = loaded.model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(loaded))
    ref = reference(path, IDS)
    assert ref.std() > 1.0
    np.testing.assert_array_less(np.abs(ours - ref).max(), 1e-4 if fmt != "model-Q8_0.gguf" else 5e-3)


@pytest.mark.parametrize("fmt", ["hf", "model-F32.gguf"])
def test_prefill_then_decode_equals_one_forward(fmt):
    """Chunks and single tokens against the cache, past the sliding window, equal transformers' one forward."""
    path = FIXTURE / fmt
    loaded = load(path)
    cache = fresh_cache(loaded)
    parts = [loaded.model.forward(np.array(IDS[:7]), np.arange(7), cache),
             loaded.model.forward(np.array(IDS[7:10]), np.arange(7, 10), cache)]
    parts += [loaded.model.forward(np.array([i]), np.array([p]), cache) for p, i in enumerate(IDS[10:], 10)]
    np.testing.assert_array_less(np.abs(np.concatenate(parts) - reference(path, IDS)).max(), 1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_32_greedy_tokens_identical(fmt):
    path = FIXTURE / fmt
    loaded = load(path)
    prompt = IDS[:6]
    ours = list(generate_tokens(DirectRunner(loaded.model), fresh_cache(loaded), prompt, SamplingParams(), 32,
                                frozenset(), GenerationStats()))
    ref = hf_greedy(path, prompt, 32)
    assert len(set(ref)) >= 3  # the reference is not stuck on one token
    assert ours == ref


def test_layer_types_query_scalar_and_final_softcap_from_config_json(tmp_path):
    """transformers 5 style `layer_types`, query_pre_attn_scalar != head_dim and final_logit_softcapping."""
    for f in (FIXTURE / "hf").iterdir():
        shutil.copy(f, tmp_path / f.name)
    config = json.loads((FIXTURE / "hf" / "config.json").read_text())
    config.pop("sliding_window_pattern")
    config.update(layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                               "full_attention", "full_attention", "sliding_attention"],
                  query_pre_attn_scalar=20, final_logit_softcapping=3.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load(tmp_path)
    assert loaded.config.sliding_layers == (True, False, True, True, False, False, True)
    ours = loaded.model.forward(np.array(IDS), np.arange(len(IDS)), fresh_cache(loaded))
    ref = hf_logits(tmp_path, IDS)
    assert np.abs(ref).max() < 3.0  # soft-capped
    np.testing.assert_array_less(np.abs(ours - ref).max(), 1e-4)


def test_multimodal_checkpoint_is_refused_with_a_typed_error():
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": json.loads((FIXTURE / "hf" / "config.json").read_text())}
    with pytest.raises(UnsupportedModelError, match="GGUF of its text model"):
        ModelConfig.from_hf(config)


@pytest.fixture(scope="module")
def llama_cpp_vocab():
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(str(FIXTURE / "model-F32.gguf"), vocab_only=True, verbose=False)


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_spm_tokenizer_matches_llama_cpp_and_transformers(llama_cpp_vocab, text):
    from transformers import AutoTokenizer

    ours = load(FIXTURE / "model-F32.gguf").tokenizer
    want = llama_cpp_vocab.tokenize(text.encode(), add_bos=True, special=True)
    assert ours.encode(text, add_special=True, parse_special=True) == want
    assert ours.decode(want[1:]) == text
    hf = AutoTokenizer.from_pretrained(FIXTURE / "hf")
    assert hf(text).input_ids == want
    assert load(FIXTURE / "hf").tokenizer.encode(text) == want


def test_chat_template_matches_transformers():
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": " Hi! "},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}]
    want = AutoTokenizer.from_pretrained(FIXTURE / "hf").apply_chat_template(messages, tokenize=False,
                                                                           add_generation_prompt=True)
    assert want.startswith("<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>")
    for fmt in ("hf", "model-F32.gguf"):
        loaded = load(FIXTURE / fmt)
        assert loaded.template.render(messages, add_generation_prompt=True) == want
        end_of_turn = loaded.tokenizer.token_to_id("<end_of_turn>")
        assert loaded.tokenizer.is_eos(end_of_turn)
