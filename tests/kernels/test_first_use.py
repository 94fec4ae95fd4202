"""kernels/cpu/first_use: a group of kernels is announced before its first compile, and never once recorded; and a
model's kernels are compiled for its own weight types only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import cpu

pytestmark = pytest.mark.skipif(not cpu.available, reason="numba kernels unavailable (ENGINE_KERNELS=numpy)")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def record(tmp_path, monkeypatch):
    """first_use's record in a fresh directory."""
    path = tmp_path / cpu.first_use.RECORD
    monkeypatch.setattr(cpu.first_use, "_record_path", lambda: path)
    return path


def test_a_group_is_announced_before_its_first_run_only(record):
    said, ran = [], []
    cpu.first_use.run_group("the test kernels", 7, lambda: ran.append(len(said)), said.append)
    assert ran == [1]  # the note came before the compile started
    assert said[0] == "compiling the test kernels for this CPU (first run only, about 7 s) ..."
    assert said[1].startswith("compiled the test kernels in ")
    assert json.loads(record.read_text()) == {"the test kernels": cpu.first_use.fingerprint()}
    said.clear()
    cpu.first_use.run_group("the test kernels", 7, lambda: ran.append(len(said)), said.append)
    assert said == [] and ran == [1, 0]


def test_a_record_of_other_sources_or_cpu_is_not_trusted(record):
    record.write_text(json.dumps({"the test kernels": "0123456789abcdef"}))
    said = []
    cpu.first_use.run_group("the test kernels", 7, lambda: None, said.append)
    assert len(said) == 2


@pytest.mark.parametrize("content", ["not json", "[1, 2]", ""])
def test_a_damaged_record_means_not_compiled(record, content):
    record.write_text(content)
    assert not cpu.first_use.compiled("the test kernels")
    said = []
    cpu.first_use.run_group("the test kernels", 7, lambda: None, said.append)
    assert len(said) == 2 and cpu.first_use.compiled("the test kernels")


def test_an_unwritable_cache_directory_still_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu.first_use, "_record_path", lambda: tmp_path / "missing" / cpu.first_use.RECORD)
    ran = []
    cpu.first_use.run_group("the test kernels", 7, lambda: ran.append(1), lambda line: None)
    assert ran == [1]


def test_prepare_compiles_only_the_weight_types_asked_for(tmp_path):
    """In a fresh process with an empty numba cache, preparing Q8_0 compiles Q8_0's row code and no other type's,
    says so once, and a second process finds it cached and says nothing."""
    script = ("import sys; from kernels import cpu; from kernels.cpu import quant_kernels as q; "
              "cpu.prepare({8}, {8}, False, lambda line: print('SAY', line)); "
              "print('ROWS', sorted(n for n in dir(q) if n.startswith('_row_') and getattr(q, n).signatures))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    says = [line for line in first.stdout.splitlines() if line.startswith("SAY")]
    assert says[0] == f"SAY compiling the Q8_0 kernels for this CPU (first run only, about {cpu.COMPILE_S} s) ..."
    assert len(says) == 2
    assert "ROWS ['_row_q8_0']" in first.stdout
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert not [line for line in second.stdout.splitlines() if line.startswith("SAY")]
