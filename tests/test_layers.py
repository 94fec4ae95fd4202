"""The import graph of kernels/, models/, engine/ and bench/ (read with `ast`, nothing imported): no arrow from a
lower layer to a higher one in the order kernels → models → engine → bench, none inside engine/ from a lower
sub-package to a higher one (formats, text and errors → runtime → chat → server → cli), and no cycle among
modules. Also: no function longer than MAX_FUNCTION_LINES.

Every import counts, at module level or inside a function, relative ones resolved, except those under
`if __name__ == "__main__":`: that code runs only when the file is the program, a module of its own (the thin
`python -m engine.chat` entry points call into engine/cli/ from there). An import names one module: `from a import b`
is a.b when that is a module, else a; importing a submodule is not counted as importing its package's __init__.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kernels", "models", "engine", "bench")


def module_files() -> dict[str, Path]:
    """Module name → file, for every .py under the layer packages."""
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def _import_nodes(node: ast.AST, in_main: bool = False):
    """(import node, whether it sits under the __main__ guard) for every import below node."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_main
        yield from _import_nodes(child, in_main or _is_main_guard(child))


def imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module of the layer packages, whether under the __main__ guard) for each import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, in_main in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute path: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, in_main))
    return found


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """The import edges outside __main__ guards (module → modules), and every (importer, imported) pair."""
    modules = module_files()
    edges, pairs = {name: set() for name in modules}, []
    for name, path in modules.items():
        for target, in_main in imports(name, path, modules):
            pairs.append((name, target))
            if not in_main:
                edges[name].add(target)
    return edges, pairs


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that starts and ends at the same module, or None."""
    state, stack = {}, []  # state: 1 while on the current path, 2 once fully explored

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read():
    """The reader sees what it must: absolute, relative, function-level and package imports."""
    edges, _ = graph()
    assert "kernels.quants" in edges["kernels.qtensor"]
    assert "kernels.cpu.quant_kernels" in edges["kernels.cpu.int8_kernels"]
    assert "engine.runtime.llm" in edges["engine"]  # inside a function
    assert "kernels.cuda" in edges["models.llama"]  # `from kernels import cuda`: the package
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_goes_up_a_layer():
    _, pairs = graph()
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = sorted({f"{a} imports {b} ({b.split('.')[0]} is above {a.split('.')[0]})" for a, b in pairs
                     if rank[b.split(".")[0]] > rank[a.split(".")[0]]})
    assert not upward, "imports up the layers kernels → models → engine → bench:\n" + "\n".join(upward)


def test_only_entry_points_import_the_command_lines():
    """Library modules reach engine/cli only from their `__main__` block (python -m engine.chat and the like)."""
    edges, _ = graph()
    into_cli = sorted(f"{a} imports {b}" for a, targets in edges.items() for b in targets
                      if (b == "engine.cli" or b.startswith("engine.cli.")) and not a.startswith("engine.cli")
                      and a != "engine.__main__")
    assert not into_cli, "library modules importing the command lines (engine/cli):\n" + "\n".join(into_cli)


def test_no_import_cycle():
    cycle = find_cycle(graph()[0])
    assert cycle is None, "import cycle: " + " → ".join(cycle)


# --- inside engine/: sub-packages by concern, each importing only its own floor or lower ones ----------------------

ENGINE_FLOORS = {"errors": 0, "formats": 0, "text": 0, "runtime": 1, "chat": 2, "server": 3, "cli": 4}
# engine/__init__ (lazy load/LLM), __main__ and the `python -m engine.X` entry modules sit above every floor: they may
# import anything. As an import target, the package `engine` is what it re-exports (the runtime's load and LLM).
ENGINE_ENTRY_POINTS = {"engine": 1, "engine.__main__": 5, "engine.generate": 5, "engine.serve": 5,
                       "engine.quantize": 5}
# (importer, imported sub-package) pairs allowed to point up, inside a function only, and why.
ENGINE_UPWARD_ALLOWED = {("engine.runtime.llm", "engine.chat"): "LLM.chat(), the README's llm.chat(), builds a Chat"}


def engine_floor(module: str) -> int:
    """The floor of an engine module (ENGINE_FLOORS by its sub-package), or of an entry module as a target."""
    if module in ENGINE_ENTRY_POINTS:
        return ENGINE_ENTRY_POINTS[module]
    sub = module.split(".")[1]
    assert sub in ENGINE_FLOORS, f"{module} is in no engine sub-package of ENGINE_FLOORS: place it in one"
    return ENGINE_FLOORS[sub]


def _module_level_import_names(path: Path) -> set[str]:
    """Modules named by the file's imports outside functions (at module level, in classes or if-blocks)."""
    names, todo = set(), [ast.parse(path.read_text(), str(path))]
    while todo:
        for child in ast.iter_child_nodes(todo.pop()):
            if isinstance(child, ast.Import):
                names |= {alias.name for alias in child.names}
            elif isinstance(child, ast.ImportFrom) and child.module:
                names.add(child.module)
            elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.append(child)
    return names


def upward_engine_imports(edges: dict[str, set[str]], modules: dict[str, Path]) -> list[str]:
    """"a imports b" for each import from an engine module to a module on a higher floor, except
    ENGINE_UPWARD_ALLOWED pairs imported inside a function only."""
    upward = []
    for a, targets in edges.items():
        if not a.startswith("engine") or a in ENGINE_ENTRY_POINTS:
            continue
        for b in targets:
            if b.split(".")[0] != "engine" or engine_floor(b) <= engine_floor(a):
                continue
            sub = ".".join(b.split(".")[:2])
            if (a, sub) in ENGINE_UPWARD_ALLOWED and not any(
                    n == sub or n.startswith(sub + ".") for n in _module_level_import_names(modules[a])):
                continue
            upward.append(f"{a} imports {b}")
    return sorted(upward)


def test_engine_sub_packages_import_only_their_floor_or_lower():
    edges, _ = graph()
    upward = upward_engine_imports(edges, module_files())
    assert not upward, ("imports up engine's floors (formats, text, errors → runtime → chat → server → cli):\n"
                        + "\n".join(upward))


def test_the_engine_floors_are_read():
    edges, _ = graph()
    modules = module_files()
    assert "engine.chat.conversation" in edges["engine.chat.store"]
    assert engine_floor("engine.formats.gguf") < engine_floor("engine.runtime.llm") < engine_floor("engine.chat")
    assert engine_floor("engine.chat.store") < engine_floor("engine.server.app") < engine_floor("engine.cli.chat")
    assert "engine.chat" in edges["engine.runtime.llm"]  # the one allowed, inside LLM.chat()
    assert upward_engine_imports({"engine.formats.gguf": {"engine.runtime.kvcache", "engine.errors"}}, modules) == [
        "engine.formats.gguf imports engine.runtime.kvcache"]
    assert upward_engine_imports({"engine.runtime.kvcache": {"engine.chat"}}, modules) == [
        "engine.runtime.kvcache imports engine.chat"]


# --- function length ---------------------------------------------------------------------------------------------

MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = ("engine/text/tokenizer.py",)  # the tokenizer's special cases, as llama.cpp spells them


def test_no_function_is_longer_than_80_lines():
    """Every function and method in kernels/, models/, engine/ and bench/ fits in MAX_FUNCTION_LINES lines
    (from its def to its last line), except in LONG_FUNCTIONS_ALLOWED."""
    long = []
    for path in module_files().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel in LONG_FUNCTIONS_ALLOWED:
            continue
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{fn.lineno} {fn.name} is {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(sorted(long))
