"""Run CUDA kernels on the CPU: g++ builds a .cu file (with cudasim.h force-included) into a shared library, and
`Module.launch` runs a kernel over a grid with every buffer argument wrapped in guard bytes.

Test tooling only. The .cu text is compiled as it is, with one rewrite that g++ needs: `extern __shared__ T name[];`
becomes a pointer to the block's dynamic shared memory. A launcher per kernel is generated from its signature.
"""
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
GUARD = 256  # bytes before and after every buffer, filled with 0xFF (NaN as float: out-of-bounds reads show)
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
CACHE = Path(os.environ.get("CUDASIM_CACHE", Path(tempfile.gettempdir()) / "cudasim-cache"))
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wno-unused-function"]

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w+)\s+(\w+)\s*\[\s*\]\s*;")
_SCALARS = {"int": ctypes.c_int, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
            "long long": ctypes.c_longlong, "float": ctypes.c_float, "double": ctypes.c_double}
_POINTEES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned": np.uint32,
             "unsigned int": np.uint32, "unsigned short": np.uint16, "u8": np.uint8, "unsigned char": np.uint8, "__half": np.float16,
             "__nv_bfloat16": np.uint16, "long long": np.int64}


class Config(ctypes.Structure):
    """cudasim::Config."""
    _fields_ = [("grid", ctypes.c_int * 3), ("block", ctypes.c_int * 3), ("shared_bytes", ctypes.c_int64),
                ("order", ctypes.c_int), ("seed", ctypes.c_uint64)]


class Param:
    """One kernel parameter parsed from its declaration, e.g. `const float* __restrict__ x`."""

    def __init__(self, decl: str):
        self.decl = decl.strip()
        words = decl.replace("*", " * ").split()
        self.name = words[-1]
        self.pointer = "*" in words
        self.const = self.pointer and "const" in words[:words.index("*")]
        base = " ".join(w for w in words[:-1] if w not in ("const", "*", "__restrict__"))
        table = _POINTEES if self.pointer else _SCALARS
        if base not in table:
            raise TypeError(f"cudasim: unsupported kernel parameter type in {decl!r}")
        self.dtype = np.dtype(table[base]) if self.pointer else None
        self.ctype = ctypes.c_void_p if self.pointer else table[base]


def _parse(src: str) -> dict[str, list[Param]]:
    return {m.group(1): [Param(p) for p in m.group(2).split(",") if p.strip()] for m in _KERNEL.finditer(src)}


def _wrapper(cu: Path, src: str, kernels: dict[str, list[Param]]) -> str:
    """The .cu text (dynamic shared rewritten) followed by one launcher per kernel, with the kernel's own parameters."""
    body = _DYNAMIC_SHARED.sub(r"CUDASIM_DYNAMIC_SHARED(\1, \2);", src)
    out = [f'#line 1 "{cu}"', body, '#line 1 "cudasim-launchers"']
    for name, params in kernels.items():
        decls = "".join(f", {p.decl}" for p in params)
        names = ", ".join(p.name for p in params)
        out.append(f'extern "C" int cudasim_launch_{name}(const cudasim::Config* c{decls}) '
                   f"{{ return cudasim::launch(*c, [=]() {{ {name}({names}); }}); }}")
    return "\n".join(out) + "\n"


class KernelError(RuntimeError):
    """The simulated launch failed: barrier misuse, bad warp operation, out-of-bounds write, bad launch."""


class Module:
    """The kernels of one .cu file, built for the CPU. `launch(name, grid, block, args, ...)` runs one."""

    def __init__(self, cu: str | Path):
        cu = Path(cu).resolve()
        src = cu.read_text()
        self.kernels = _parse(src)
        if not self.kernels:
            raise ValueError(f"{cu}: no extern \"C\" __global__ kernels found")
        wrapper = _wrapper(cu, src, self.kernels)
        headers = sorted(cu.parent.glob("*.cuh")) + [HERE / "cudasim.h"]
        key = hashlib.sha256("\0".join([wrapper, " ".join(FLAGS)] + [h.read_text() for h in headers]).encode())
        so = CACHE / f"{cu.stem}-{key.hexdigest()[:16]}.so"
        if not so.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            cpp = so.with_suffix(".cpp")
            cpp.write_text(wrapper)
            tmp = so.with_suffix(f".{os.getpid()}.tmp")
            cmd = ["g++", *FLAGS, "-I", str(HERE / "include"), "-I", str(cu.parent), "-include",
                   str(HERE / "cudasim.h"), str(cpp), "-o", str(tmp)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"cudasim: g++ failed on {cu}:\n{r.stderr[-4000:]}")
            os.replace(tmp, so)
        self.lib = ctypes.CDLL(str(so))
        self.lib.cudasim_error.restype = ctypes.c_char_p

    def launch(self, name: str, grid, block, args, shared: int = 0, order: str = "forward", seed: int = 0) -> None:
        """Run kernel `name` over grid × block (ints or up to 3-tuples) with `shared` bytes of dynamic shared memory.

        args: one per parameter; NumPy arrays (C-contiguous, of the parameter's element type) or None for pointers,
        Python numbers for scalars. Arrays are copied into guarded buffers and written back after the launch.
        Raises KernelError on any misuse the simulator detects, including writes outside a buffer or into a const one.
        """
        params = self.kernels[name]
        if len(args) != len(params):
            raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
        c_args, buffers = [], []
        for p, a in zip(params, args):
            if not p.pointer:
                c_args.append(p.ctype(a))
            elif a is None:
                c_args.append(ctypes.c_void_p(None))
            else:
                if not isinstance(a, np.ndarray) or a.dtype != p.dtype or not a.flags.c_contiguous:
                    raise TypeError(f"{name}: argument {p.name} must be a C-contiguous {p.dtype} array")
                buf = np.full(a.nbytes + 2 * GUARD, 0xFF, dtype=np.uint8)
                buf[GUARD:GUARD + a.nbytes] = a.view(np.uint8).reshape(-1)
                buffers.append((p, a, buf))
                c_args.append(ctypes.c_void_p(buf.ctypes.data + GUARD))
        cfg = Config(_dim3(grid), _dim3(block), shared, ORDERS[order], seed)
        if getattr(self.lib, f"cudasim_launch_{name}")(ctypes.byref(cfg), *c_args):
            raise KernelError(f"{name}: {self.lib.cudasim_error().decode()}")
        for p, a, buf in buffers:
            inside = buf[GUARD:GUARD + a.nbytes]
            if (buf[:GUARD] != 0xFF).any() or (buf[GUARD + a.nbytes:] != 0xFF).any():
                raise KernelError(f"{name}: write outside argument {p.name} ({a.nbytes} bytes)")
            if p.const:
                if (inside != a.view(np.uint8).reshape(-1)).any():
                    raise KernelError(f"{name}: write into const argument {p.name}")
            else:
                a.view(np.uint8).reshape(-1)[:] = inside


def _dim3(d) -> ctypes.Array:
    d = (d,) if isinstance(d, int) else tuple(d)
    return (ctypes.c_int * 3)(*(d + (1,) * (3 - len(d))))


_modules: dict[Path, Module] = {}


def load(cu: str | Path) -> Module:
    """The built Module of a .cu file (built once per process, and cached on disk by content)."""
    cu = Path(cu).resolve()
    if cu not in _modules:
        _modules[cu] = Module(cu)
    return _modules[cu]
