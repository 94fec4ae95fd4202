"""The import graph of kernels/, models/, engine/ and bench/ (read with `ast`, nothing imported): no arrow from a
lower layer to a higher one in the order kernels → models → engine → bench, and no cycle among modules.

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
    assert "engine.llm" in edges["engine"]  # inside a function
    assert "kernels.cuda" in edges["kernels.cuda.graph"]  # `from kernels import cuda`: the package
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
