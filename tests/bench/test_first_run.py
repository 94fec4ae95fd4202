"""A new user's first run (bench/first_run.py): README's first command on a fresh copy of the sources with an empty
HOME says what it compiles before compiling, then streams the answer; the second run compiles nothing. Slow (it
compiles the embedded model's kernels from scratch): marked slow, which CI runs."""
import pytest

from bench.first_run import first_run


@pytest.mark.slow
def test_fresh_copy_announces_the_compile_then_answers(tmp_path):
    cold, warm = first_run(tmp_path, max_tokens=8, warm_runs=1)
    for run in (cold, warm):
        assert run.returncode == 0, run.lines
        assert run.first_token_s is not None and any(name == "out" and text.strip() for _, name, text in run.lines)
    err = [(t, text) for t, name, text in cold.lines if name == "err"]
    compiling = [t for t, text in err if text.startswith("compiling ")]
    loaded = next(t for t, text in err if text.startswith("loaded "))
    assert compiling and compiling[0] < loaded < cold.first_token_s
    # each announcement comes before its compile ends ("compiled ... in N s"), a group at a time
    starts = [text for _, text in err if text.startswith("compiling ")]
    ends = [text for _, text in err if text.startswith("compiled ")]
    assert [s.split(" for this CPU")[0][len("compiling "):] for s in starts] == \
           [e.split(" in ")[0][len("compiled "):] for e in ends]
    assert not any(text.startswith(("compiling ", "compiled ")) for _, name, text in warm.lines if name == "err")
    print(f"first token: cold {cold.first_token_s:.1f} s, warm {warm.first_token_s:.1f} s")
