"""Run a fuzz campaign and print its outcome counts:

    python tests/fuzz/run.py gguf --cases 3000 --seed 0 [--jobs 2] [--timeout 10] [--mem-gb 4] [--json]

Targets are the modules `tests/fuzz/<name>_cases.py` (see harness.py). A defect prints its case, which the same
seed reproduces. Exit status 1 when any case ended as a defect. The cases run on the NumPy kernels
(ENGINE_KERNELS=numpy): they test what the loaders accept, and a forked child cannot use a compiled kernel pool.
"""
import argparse
import importlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = sorted(p.name[:-len("_cases.py")] for p in HERE.glob("*_cases.py"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=TARGETS)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument("--mem-gb", type=float, default=4.0, help="address-space limit per case")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = ap.parse_args(argv)
    os.environ.setdefault("ENGINE_KERNELS", "numpy")
    for p in (str(HERE.parent.parent), str(HERE.parent), str(HERE)):  # repo root, tests/, tests/fuzz/
        if p not in sys.path:
            sys.path.insert(0, p)
    from harness import campaign

    target = importlib.import_module(f"{args.target}_cases")
    report = campaign(target, args.target, args.cases, args.seed, args.jobs, args.timeout,
                      int(args.mem_gb * (1 << 30)))
    print(json.dumps(report.as_dict()) if args.json else report.text())
    return 1 if report.n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
