"""engine.template.ChatTemplate against transformers' own apply_chat_template (the reference)."""

from __future__ import annotations

import json

import pytest

from engine.errors import InvalidRequestError, TemplateError
from engine.template import ChatTemplate

SYSTEM_USER = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
MULTI_TURN = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "Name three prime numbers — in English, s'il vous plaît."},
]
NO_SYSTEM = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye."},
]


def hf_render(template: str, messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>", **kwargs):
    """transformers' PreTrainedTokenizerFast.apply_chat_template(..., tokenize=False) with this template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    vocab = {"<unk>": 0}
    for t in (bos_token, eos_token):
        if t is not None:
            vocab.setdefault(t, len(vocab))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        bos_token=bos_token, eos_token=eos_token, chat_template=template,
    )
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


@pytest.fixture(scope="module")
def smollm2_template_source(smollm2_gguf_metadata) -> str:
    src = smollm2_gguf_metadata["tokenizer.chat_template"]
    assert isinstance(src, str) and "<|im_start|>" in src
    return src


# SmolLM2's bos/eos as its tokenizer_config.json and GGUF (token ids 1 and 2) have them.
SMOL_BOS, SMOL_EOS = "<|im_start|>", "<|im_end|>"


@pytest.mark.parametrize("messages, add_gen", [
    (SYSTEM_USER, True),
    (SYSTEM_USER, False),
    (MULTI_TURN, True),
    (MULTI_TURN, False),
    (NO_SYSTEM, True),  # the template inserts its default system prompt
])
def test_smollm2_template_matches_transformers(smollm2_template_source, messages, add_gen):
    ours = ChatTemplate(smollm2_template_source, bos_token=SMOL_BOS, eos_token=SMOL_EOS)
    got = ours.render(messages, add_generation_prompt=add_gen)
    want = hf_render(smollm2_template_source, messages, add_gen, bos_token=SMOL_BOS, eos_token=SMOL_EOS)
    assert got == want
    assert got.endswith("<|im_start|>assistant\n") == add_gen


def test_smollm2_template_from_gguf_metadata(smollm2_gguf_metadata):
    t = ChatTemplate.from_sources(smollm2_gguf_metadata, None, SMOL_BOS, SMOL_EOS)
    assert t is not None and t.bos_token == SMOL_BOS and t.eos_token == SMOL_EOS
    assert t.render(SYSTEM_USER) == (
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# A Qwen3-style template exercising what real templates use: namespace, loop controls, reversed loops,
# tojson of tools, extra kwargs (enable_thinking), reasoning_content, bos_token, `is defined`, string methods.
QWEN_LIKE = """{{- bos_token if bos_token is defined else '' -}}
{%- if tools %}
{{- '<|im_start|>system\\n' }}{% if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{% endif %}
{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for m in messages[::-1] %}{% set i = (messages|length - 1) - loop.index0 %}
{%- if m.role == 'user' %}{% set ns.last_query = i %}{% break %}{% endif %}
{%- endfor %}
{%- for m in messages %}
{%- if m.role == 'system' %}{% continue %}{% endif %}
{%- if m.role == 'assistant' %}
{%- set content = m.content %}
{%- if m.reasoning_content is string and loop.index0 > ns.last_query %}
{{- '<|im_start|>assistant\\n<think>\\n' + m.reasoning_content.strip() + '\\n</think>\\n\\n' + content.lstrip() }}
{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}
{{- '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""

TOOLS = [{"type": "function", "function": {"name": "météo", "description": "Temps qu'il fait — aujourd'hui",
                                           "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("kwargs", [
    {},
    {"enable_thinking": False},
    {"enable_thinking": True},
    {"tools": TOOLS},
])
def test_qwen_like_template_matches_transformers(kwargs):
    msgs = MULTI_TURN[:3] + [{"role": "user", "content": "and?"},
                             {"role": "assistant", "content": " ok", "reasoning_content": " hmm ",
                              "tool_calls": None}]
    ours = ChatTemplate(QWEN_LIKE, bos_token="<s>", eos_token="</s>")
    for add_gen in (True, False):
        assert ours.render(msgs, add_gen, **kwargs) == hf_render(QWEN_LIKE, msgs, add_gen, **kwargs)


def test_reasoning_aliases_and_none_keys_match_transformers():
    tmpl = ("{% for m in messages %}{{ m.role }}|{{ m.thinking }}|{{ m.reasoning_content }}|"
            "{{ 'content' in m }}|{{ m.content }}\n{% endfor %}")
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "reasoning": "r1"},
            {"role": "assistant", "content": "a", "thinking": "r2"}]
    assert ChatTemplate(tmpl).render(msgs) == hf_render(tmpl, msgs, bos_token=None, eos_token=None)


def test_tojson_matches_transformers():
    tmpl = ("{{ messages[0] | tojson }}\n{{ messages[0] | tojson(indent=2) }}\n"
            "{{ messages[0] | tojson(separators=(',', ':'), sort_keys=true) }}\n{{ '<tag>&' | tojson }}")
    msgs = [{"role": "user", "content": "héllo — 日本語 <b>"}]
    ours = ChatTemplate(tmpl).render(msgs)
    assert ours == hf_render(tmpl, msgs)
    assert "日本語" in ours and "<b>" in ours  # no \\u escapes, no HTML escaping
    assert json.loads(ours.splitlines()[0]) == msgs[0]


def test_globals_strftime_generation_dict():
    tmpl = ("{{ strftime_now('%Y') }}|{% generation %}{{ messages[-1].content }}{% endgeneration %}|"
            "{{ dict(a=1)['a'] }}")
    got = ChatTemplate(tmpl).render([{"role": "user", "content": "x"}])
    assert got == hf_render(tmpl, [{"role": "user", "content": "x"}])
    year, body, one = got.split("|")
    assert len(year) == 4 and year.isdigit() and body == "x" and one == "1"


def test_only_set_special_tokens_are_defined():
    tmpl = "{{ 'B' if bos_token is defined else 'nob' }}{{ eos_token if eos_token is defined else 'noe' }}"
    msgs = [{"role": "user", "content": "x"}]
    assert ChatTemplate(tmpl).render(msgs) == "nobnoe"
    assert ChatTemplate(tmpl, eos_token="</s>").render(msgs) == "nob</s>"


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_raise_exception_becomes_template_error():
    tmpl = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}ok"
    t = ChatTemplate(tmpl)
    assert t.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateError, match="Conversations must start with a user turn"):
        t.render([{"role": "assistant", "content": "x"}])


def test_syntax_error_is_template_error():
    with pytest.raises(TemplateError, match="syntax error"):
        ChatTemplate("{% for m in messages %}{{ m.content }}")  # no endfor
    with pytest.raises(TemplateError, match="syntax"):
        ChatTemplate("{{ messages[0] | nosuchfilter }}")


def test_undefined_and_type_errors_are_template_errors():
    with pytest.raises(TemplateError, match="undefined"):
        ChatTemplate("{{ nosuchvar.content }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages[0].content + 1 }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError):
        ChatTemplate("{{ nosuchvar | tojson }}").render([{"role": "user", "content": "x"}])


def test_sandbox_refuses_unsafe_things():
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError):  # immutable sandbox: no in-place list changes
        ChatTemplate("{{ messages.append(1) }}").render([{"role": "user", "content": "x"}])


def test_bad_input():
    t = ChatTemplate("{{ messages | length }}")
    with pytest.raises(InvalidRequestError):
        t.render([])
    with pytest.raises(InvalidRequestError):
        t.render(["hello"])
    with pytest.raises(TemplateError):
        ChatTemplate("   ")


# ---------------------------------------------------------------------------------------------------------
# Finding the template
# ---------------------------------------------------------------------------------------------------------


def test_from_sources_order_and_forms(tmp_path):
    assert ChatTemplate.from_sources(None, None) is None
    assert ChatTemplate.from_sources({}, tmp_path) is None
    msgs = [{"role": "user", "content": "x"}]

    cfg = {"chat_template": "cfg:{{ messages[0].content }}{{ eos_token }}",
           "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = ChatTemplate.from_sources(None, tmp_path)
    assert t.render(msgs) == "cfg:x</s>" and t.bos_token == "<s>"
    assert ChatTemplate.from_sources(None, tmp_path, eos_token="<E>").render(msgs) == "cfg:x<E>"

    cfg["chat_template"] = [{"name": "tool_use", "template": "tool"}, {"name": "default", "template": "dflt"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert ChatTemplate.from_sources(None, tmp_path).render(msgs) == "dflt"
    cfg["chat_template"] = [{"name": "tool_use", "template": "tool"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TemplateError, match="default"):
        ChatTemplate.from_sources(None, tmp_path)

    (tmp_path / "chat_template.jinja").write_text("jinja:{{ messages[0].content }}")
    assert ChatTemplate.from_sources(None, tmp_path).render(msgs) == "jinja:x"
    # GGUF metadata comes first
    meta = {"tokenizer.chat_template": "gguf:{{ messages[0].content }}"}
    assert ChatTemplate.from_sources(meta, tmp_path).render(msgs) == "gguf:x"
    assert ChatTemplate.from_sources({"tokenizer.chat_template": b"b:{{ 1 }}"}, None).render(msgs) == "b:1"
