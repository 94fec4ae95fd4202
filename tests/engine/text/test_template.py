"""engine.text.template.ChatTemplate against transformers' own apply_chat_template (the reference)."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.errors import InvalidRequestError, TemplateError
from engine.text.template import ChatTemplate

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


# ---------------------------------------------------------------------------------------------------------
# Limits: untrusted templates end as a TemplateError naming the limit, promptly
# ---------------------------------------------------------------------------------------------------------

USER = [{"role": "user", "content": "x"}]
DOUBLING = "{% set ns = namespace(v=START) %}{% for i in range(40) %}{% set ns.v = STEP %}{% endfor %}{{ ns.v }}"


@pytest.mark.parametrize("source, limit", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "time limit (2 s)"),
    ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}", "time limit"),
    ("{{ 9**(9**9) }}", "number limit (65536 bits)"),
    ("{{ 2**(2**25) }}", "number limit"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     "number limit"),
    ("{{ 5|round(-100000000) }}", "number limit"),
    ("{{ 'a'*10**10 }}", "size limit (1000000 chars or items per operation"),
    ("{{ ['a']*10**9 }}", "size limit"),
    ("{{ (range(100000)|list)*100 }}", "size limit"),
    ("{{ lipsum(10**6) }}", "size limit"),
    ("{{ 'x'|center(10000000000) }}", "size limit"),
    ("{{ 'x'.center(10**10) }}", "size limit"),
    ("{{ 'x'.ljust(10**10) }}", "size limit"),
    ("{{ '%0900000000d'|format(1) }}", "size limit"),
    ("{{ '%0900000000d' % 1 }}", "size limit"),
    ("{{ '%*d' % (10**9, 1) }}", "size limit"),
    ("{{ '{:>1000000000}'.format(1) }}", "size limit"),
    ("{{ '{:{}}'.format(1, 10**9) }}", "size limit"),
    ("{{ '{x:9999999999}'.format_map({'x': 1}) }}", "size limit"),
    ("{{ messages|tojson(indent=1000000000) }}", "size limit"),
    ("{{ 'x'|indent(10**9) }}", "size limit"),
    ("{{ strftime_now('%Y'*10**8) }}", "size limit"),
    ("{{ strftime_now('%c'*100000) }}", "size limit"),
    ("{% set s = 'x'*1000000 %}{{ ([s]*1000)|join }}", "size limit"),
    ("{% set s = 'x'*1000000 %}{{ ''.join([s]*1000) }}", "size limit"),
    ("{% set s = 'x'*1000000 %}{{ ([s]*1000)|string }}", "size limit"),
    ("{{ ('a'*1000000).replace('a', 'bb') }}", "size limit"),
    ("{{ ('a'*1000000)|replace('a', 'bb') }}", "size limit"),
    ("{{ ('a'*1000000).translate({97: 'b'*1000000}) }}", "size limit"),
    ("{{ ('\t'*1000000).expandtabs(1000000) }}", "size limit"),
    ("{{ (1).to_bytes(10**10, 'big') }}", "size limit"),
    ("{{ 'a'|wordwrap(1, wrapstring='x'*1000000) }}", "size limit"),
    ("{{ [1]|batch(10**9, 'x')|list }}", "size limit"),
    ("{{ [1]|slice(10**9)|list }}", "size limit"),
    ("{{ ([[1]]*1000000)|sum(start=[]) }}", "time limit"),  # quadratic
    ("{{ ([[1]*1000000]*1000000)|sum(start=[]) }}", "size limit"),
    (DOUBLING.replace("START", "'a'").replace("STEP", "ns.v ~ ns.v"), "size limit"),
    (DOUBLING.replace("START", "'a'").replace("STEP", "ns.v + ns.v"), "size limit"),
    (DOUBLING.replace("START", "['a']").replace("STEP", "ns.v + ns.v"), "size limit"),
    (DOUBLING.replace("START", "['a']").replace("STEP", "[ns.v, ns.v]"), "output limit (4000000 chars"),
    (DOUBLING.replace("START", "['a']").replace("STEP", "[ns.v, ns.v]").replace("{{ ns.v }}", "{{ ns.v|tojson }}"),
     "size limit"),
    (DOUBLING.replace("START", "['a']").replace("STEP", "[ns.v, ns.v]").replace("{{ ns.v }}", "{{ ns.v ~ '' }}"),
     "size limit"),
    ("{% for i in range(100000) %}{{ 'x'*100000 }}{% endfor %}", "output limit"),
    ("{% set s = 'x'*1000000 %}{{ [s]*1000 }}", "output limit"),
    ("{% set x %}{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}{% endset %}", "output limit"),
    ("{% macro m() %}{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}{% endmacro %}{% set x = m() %}",
     "output limit"),
])
def test_limits(source, limit):
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match=re.escape(f"chat template went over the {limit}")):
        ChatTemplate(source).render(USER)
    assert time.monotonic() - t0 < 5


def test_time_limit_holds_on_a_worker_thread():
    """The server renders on threads, where no signal arrives: the deadline is checked by the template's loops."""
    t = ChatTemplate("{% for i in range(100000) %}{% for c in 'abc'*1000 %}{% endfor %}{% endfor %}",
                     time_limit_s=0.3)
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(TemplateError, match=re.escape("went over the time limit (0.3 s)")):
            pool.submit(t.render, USER).result(timeout=5)


@pytest.mark.parametrize("source", ["{{ 9**(9**9) }}", "{{ '%0900000000d'|format(1) }}", "{{ 'x'*10**10 }}",
                                    "{{ 'x'|center(10000000000) }}", "{{ 2**(2**25) }}"])
def test_compiling_evaluates_nothing(source):
    """Without constant folding, loading a model never runs its template's expressions: they fail at render."""
    with ThreadPoolExecutor(1) as pool:
        template = pool.submit(ChatTemplate, source).result(timeout=5)
    with pytest.raises(TemplateError, match="went over the"):
        template.render(USER)


def test_limits_are_keywords_and_grow_with_the_input():
    tmpl = "{% for m in messages %}{{ '<|' + m.role + '|>' + m.content + '\\n' }}{% endfor %}"
    huge = [{"role": "user", "content": "é" * 1_500_000}]  # over MAX_ITEMS alone: the input's size is added
    assert len(ChatTemplate(tmpl).render(huge)) == 1_500_000 + 9
    with pytest.raises(TemplateError, match=re.escape("output limit (100 chars")):
        ChatTemplate("{% for i in range(20) %}0123456789{% endfor %}", max_output_chars=100).render(USER)
    with pytest.raises(TemplateError, match=re.escape("size limit (100 chars")):
        ChatTemplate("{{ 'x' * 200 }}", max_items=100).render(USER)
    with pytest.raises(TemplateError, match=re.escape("number limit (64 bits)")):
        ChatTemplate("{{ 3**100 }}", max_int_bits=64).render(USER)
    assert ChatTemplate("{{ 'x' * 100 }}{{ 3**40 }}", max_items=100, max_int_bits=64).render(USER) == "x" * 100 + str(3**40)


@pytest.mark.parametrize("source", [
    "{{ messages.__class__.__mro__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}", "{{ joiner.__init__.__globals__ }}", "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}", "{{ range.__class__ }}", "{{ self._TemplateReference__context }}",
    "{{ (''|attr('__class__')).__mro__ }}", "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{{ raise_exception.__globals__ }}", "{{ strftime_now.__globals__ }}", "{{ dict.__call__.__globals__ }}",
])
def test_sandbox_still_holds(source):
    """Introspection payloads reach nothing: refused, or rendered as nothing."""
    try:
        out = ChatTemplate(source).render(USER)
    except TemplateError:
        return
    assert "module" not in out and "class" not in out and "function" not in out


def test_template_literals_and_loops_render_as_before():
    """What the limits hook into (loops over every kind of iterable, ~, %, format, filters) behaves as in jinja2."""
    tmpl = ("{% for k, v in {'a': 1}.items() %}{{ k ~ v }}{% endfor %}|{% for c in 'ab' %}{{ loop.index }}{{ c }}"
            "{% if loop.last %}L{{ loop.length }}{% endif %}{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}"
            "|{{ '%05.1f|%s' % (3.14159, 'x') }}|{{ '{:>4}{}'.format(1, [2]) }}|{{ [[1], [2]]|sum(start=[]) }}"
            "|{{ [0.1, 0.2, 0.3]|sum }}|{{ 'a\\nb'|indent(2, true) }}|{{ [1, 2]|join(', ') }}|{{ 2**10 }}"
            "|{% for x in undefined_thing %}x{% endfor %}|{{ ('ab' * 2)|center(8) }}|{{ 'x'|format() }}")
    assert ChatTemplate(tmpl).render(USER) == hf_render(tmpl, USER)
