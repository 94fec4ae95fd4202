"""Fuzz target (see harness.py): chat template bombs and sandbox-escape payloads.

A case is (kind, source). "limit": a template that builds too much or runs too long; it must end as a TemplateError
naming the limit it went over. "escape": an introspection payload; whatever it ends as, its output must show
nothing of Python's internals (a class, a module, the builtins, or the "ESCAPED" of a command it managed to run),
else run_case raises and the harness counts a crash. "any": a random mix of the bombs' pieces, which may render
or be refused, but only as a typed error. Each case compiles the source and renders a short conversation with tools.
"""
from __future__ import annotations

import random

from engine.errors import TemplateError
from engine.text.template import ChatTemplate

OS = "os.popen('echo ESCAPED').read()"
ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''['__class__']['__mro__'] }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.%s }}" % OS,
    "{{ joiner.__init__.__globals__.%s }}" % OS,
    "{{ namespace.__init__.__globals__.%s }}" % OS,
    "{{ namespace(a=1).__class__.__init__.__globals__ }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.%s }}" % OS,
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ range.__class__ }}{{ range.__globals__.%s }}" % OS,
    "{{ lipsum.__globals__['os'].popen('echo ESCAPED').read() }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('echo ESCAPED').read() }}",
    "{{ ''|attr('__class__')|attr('__mro__') }}",
    "{{ (messages|attr('__class__')|attr('__base__')|attr('__subclasses__'))() }}",
    "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{x.__class__}'.format_map({'x': messages}) }}",
    "{{ '%s' % cycler.__init__ }}{{ '%s'|format(joiner.__init__) }}",
    "{{ raise_exception.__globals__ }}{{ strftime_now.__globals__ }}",
    "{{ dict.__class__.__mro__ }}{{ dict.fromkeys.__globals__ }}",
    "{{ messages.pop.__self__.__class__ }}{{ ''.join.__self__.__class__ }}",
    "{{ messages|map(attribute='__class__')|list }}{{ messages|selectattr('__class__')|list }}",
    "{% for x in [1] %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "{% macro m() %}{{ caller.__globals__ }}{% endmacro %}{% call m() %}x{% endcall %}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}{{ ns.__class__ }}",
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if 'warning' in c.__name__ %}"
    "{{ c()._module.__builtins__['__import__']('os').popen('echo ESCAPED').read() }}{% endif %}{% endfor %}",
    "{{ cycler.__init__.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "{{ messages.append(1) }}{{ messages.__setitem__(0, 1) }}{{ messages[0].update(role='x') }}",
]
MARKERS = ("ESCAPED", "<class", "<module", "__builtins__", "root:x:")

S = "{% set s = 'x'*1000000 %}"
DOUBLING = "{% set ns = namespace(v=START) %}{% for i in range(40) %}{% set ns.v = STEP %}{% endfor %}{{ ns.v }}"
LIMITS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for c in 'abc'*100000 %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{{ ([[1]]*1000000)|sum(start=[]) }}",
    "{{ 9**(9**9) }}", "{{ 2**(2**25) }}", "{{ 5|round(-100000000) }}",
    "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "{{ 'a'*10**10 }}", "{{ ['a']*10**9 }}", "{{ ('ab',)*10**9 }}", "{{ (range(100000)|list)*100 }}",
    "{{ lipsum(10**6) }}", "{{ lipsum(1, max=10**9) }}",
    "{{ 'x'|center(10**10) }}", "{{ 'x'|center(10000000000) }}", "{{ 'x'.center(10**10) }}",
    "{{ 'x'.rjust(10**10) }}", "{{ 'x'.zfill(10**10) }}",
    "{{ '%0900000000d'|format(1) }}", "{{ '%0900000000d' % 1 }}", "{{ '%.900000000f' % 1.0 }}",
    "{{ '%*d' % (10**9, 1) }}", "{{ '%(a)0900000000d' % {'a': 1} }}",
    "{{ '{:>1000000000}'.format(1) }}", "{{ '{:{}}'.format(1, 10**9) }}", "{{ '{:.900000000f}'.format(1.0) }}",
    "{{ '{x:9999999999}'.format_map({'x': 1}) }}",
    "{{ messages|tojson(indent=10**9) }}", "{{ messages|tojson(indent=1000000000) }}",
    "{{ messages|tojson(separators=('x'*1000000, ':')) }}",
    "{{ 'x'|indent(10**9) }}", "{{ ('a\\n'*500000)|indent(100) }}",
    "{{ strftime_now('%Y'*10**8) }}", "{{ strftime_now('%c'*100000) }}",
    S + "{{ ([s]*1000)|join }}", S + "{{ ''.join([s]*1000) }}", S + "{{ (['x']*1000)|join(s) }}",
    S + "{{ ([s]*1000)|string }}", S + "{{ ([s]*1000)|pprint }}", S + "{{ ([s]*1000)|upper }}",
    S + "{{ [s]*1000 }}", S + "{{ ([s]*1000) ~ '' }}", S + "{{ '%s' % ([s]*1000,) }}",
    S + "{{ '{}'.format([s]*1000) }}", S + "{{ s + s }}", S + "{{ s ~ s }}",
    "{{ ('a'*1000000).replace('a', 'bb') }}", "{{ ('a'*1000000)|replace('a', 'bb') }}",
    "{{ ('a'*1000000).translate({97: 'b'*1000000}) }}", "{{ ('\\t'*1000000).expandtabs(1000000) }}",
    "{{ (1).to_bytes(10**10, 'big') }}", "{{ 'x'.encode().center(10**10) }}",
    "{{ 'a'|wordwrap(1, wrapstring='x'*1000000) }}",
    "{{ [1]|batch(10**9, 'x')|list }}", "{{ [1]|slice(10**9)|list }}",
    DOUBLING.replace("START", "'a'").replace("STEP", "ns.v ~ ns.v"),
    DOUBLING.replace("START", "'a'").replace("STEP", "ns.v + ns.v"),
    DOUBLING.replace("START", "['a']").replace("STEP", "ns.v + ns.v"),
    DOUBLING.replace("START", "['a']").replace("STEP", "[ns.v, ns.v]"),
    DOUBLING.replace("START", "['a']").replace("STEP", "[ns.v, ns.v]").replace("{{ ns.v }}", "{{ ns.v|tojson }}"),
    DOUBLING.replace("START", "{'a': 1}").replace("STEP", "{'a': ns.v, 'b': ns.v}"),
    "{% for i in range(100000) %}{{ 'x'*100000 }}{% endfor %}",
    "{% set x %}{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}{% endset %}",
    "{% macro m() %}{% for i in range(100000) %}" + "y" * 1000 + "{% endfor %}{% endmacro %}{% set x = m() %}",
]

# pieces for random mixes: an expression with N in it, and ways to repeat or nest it
SIZES = ["9", "99", "10**3", "10**5", "10**6", "10**7", "10**9", "9**9", "2**40"]
EXPRS = ["'a'*N", "['a']*N", "'x'|center(N)", "'%0Nd'|format(1)", "'{:N}'.format(1)", "lipsum(N)",
         "range(N)|list|length", "'x'|indent(N)", "messages|tojson(indent=N)", "2**N", "(N)**(N)",
         "('ab'*N)|replace('a', 'xyz')", "['x']*N|join(',')", "strftime_now('%Y'*N)", "[1]|batch(N, 0)|list"]
WRAPS = ["{{ E }}", "{% for i in range(N) %}{{ E }}{% endfor %}", "{% set v = E %}{{ v ~ v }}",
         "{% for i in range(N) %}{% for j in range(N) %}{% set v = E %}{% endfor %}{% endfor %}",
         "{% macro m(k) %}{{ E }}{% if k %}{{ m(k-1) }}{{ m(k-1) }}{% endif %}{% endmacro %}{{ m(30) }}"]


def _mix(rng: random.Random) -> str:
    expr = rng.choice(EXPRS).replace("N", rng.choice(SIZES))
    return rng.choice(WRAPS).replace("E", expr).replace("range(N)", f"range({rng.choice(SIZES[:5])})")


def cases(n: int, seed: int) -> list[tuple]:
    """Every escape payload and limit bomb (a seeded sample of them when n is smaller), then random mixes."""
    rng = random.Random(seed)
    fixed = [("escape", s) for s in ESCAPES] + [("limit", s) for s in LIMITS]
    if n <= len(fixed):
        return rng.sample(fixed, n)
    return fixed + [("any", _mix(rng)) for _ in range(n - len(fixed))]


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "reasoning_content": "greet"}, {"role": "user", "content": "?"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


def run_case(kind: str, source: str) -> str:
    try:
        out = ChatTemplate(source).render(MESSAGES, tools=TOOLS)
    except TemplateError as e:
        if kind == "limit" and "went over the" not in str(e):
            raise AssertionError(f"a bomb ended as another error: {e}") from None
        raise
    if kind == "limit":
        raise AssertionError(f"a bomb rendered ({len(out)} chars)")
    leaked = [m for m in MARKERS if m in out]
    if leaked:
        raise AssertionError(f"sandbox escape: the output shows {leaked}: {out[:300]!r}")
    return "ok"
