"""The fuzz campaigns (tests/fuzz/run.py): a fixed-seed sample of each in the default suite, the full campaigns
under the `fuzz` marker (`python -m pytest -m fuzz`). Every case must end as "ok" or a typed engine error."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).parent / "run.py"
# target: (cases in the default suite, cases at scale)
SIZES = {"gguf": (120, 3000), "hf": (60, 1000), "template": (60, 400)}


def _campaign(target: str, n: int) -> dict:
    proc = subprocess.run([sys.executable, str(RUN), target, "--cases", str(n), "--seed", "0", "--json"],
                          capture_output=True, text=True, timeout=3600)
    assert proc.stdout.strip(), f"the fuzz runner printed nothing:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    return report


def _check(report: dict, n: int) -> None:
    assert report["cases"] == n
    bad = {k: v for k, v in report["outcomes"].items() if k not in ("ok", "engine_error")}
    assert not bad, f"defects {bad}: {json.dumps(report['defects'], indent=1)[:6000]}"


@pytest.mark.parametrize("target", list(SIZES))
def test_fuzz_sample(target):
    n = SIZES[target][0]
    _check(_campaign(target, n), n)


@pytest.mark.fuzz
@pytest.mark.parametrize("target", list(SIZES))
def test_fuzz_at_scale(target):
    n = SIZES[target][1]
    _check(_campaign(target, n), n)
