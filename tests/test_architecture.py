"""The house's rules, checked: folders in the order a run passes through them, imports pointing one way,
small modules and functions (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "adaptbench"

#: The folders of adaptbench/, in the order a run passes through them.  A module may import from its own
#: folder and from folders before it, never from one after it (as import-linter's "layers" contract).
LAYERS = ["_util", "config", "data", "prompts", "models", "scoring", "training", "measure", "methods", "store",
          "sweep", "report", "cli"]
TOP = {"errors": -1, "__init__": len(LAYERS), "__main__": len(LAYERS)}  # errors: below everything

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    first = module.split(".")[0]
    return TOP[first] if first in TOP else LAYERS.index(first)


def _imports(module: str, path: Path):
    """(imported adaptbench module, line, at module level?) for every import of the module."""
    tree = ast.parse(path.read_text())
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")[:-1]
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("adaptbench"):
                target = node.module.removeprefix("adaptbench").lstrip(".")
            else:
                continue
            for alias in node.names:
                yield (f"{target}.{alias.name}" if target else alias.name), node.lineno, id(node) in top_level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("adaptbench."):
                    yield alias.name.removeprefix("adaptbench."), node.lineno, id(node) in top_level


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name lives in (``a.b.c`` -> ``a.b`` when c is a name in module a.b)."""
    while name:
        if name in modules or f"{name}.__init__" in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def test_imports_point_one_way():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        source = module.removesuffix(".__init__")
        for name, line, _ in _imports(module, path):
            target = _resolve(name, modules)
            if target is None:
                continue
            if _layer(target) > _layer(source):
                wrong.append(f"adaptbench/{path.relative_to(PACKAGE)}:{line} imports {target} (a later folder)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m.removesuffix(".__init__"): set() for m in modules}
    for module, path in modules.items():
        for name, _, _ in _imports(module, path):
            target = _resolve(name, modules)
            if target is not None:
                target = target.removesuffix(".__init__")
                if target != module.removesuffix(".__init__") and not module.removesuffix(".__init__").startswith(
                        target + "."):  # a package's __init__ re-exporting its own modules is no cycle
                    graph[module.removesuffix(".__init__")].add(target)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_top_level_holds_few_files():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py", "errors.py"]
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


def test_modules_and_functions_are_small():
    too_long = []
    for module, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


def test_methods_never_branch_on_the_kind_of_model():
    """Causal, encoder-decoder and API models are one interface: a method asks for capabilities, not kinds."""
    found = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted((PACKAGE / "methods").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if "is_api" in line or "is_encoder_decoder" in line]
    assert found == []
