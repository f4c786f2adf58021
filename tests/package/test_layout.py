"""The package's layout holds (issue 20): sizes, import cycles, side doors, import cost.

These read poolx's source (the ``ast`` of every module) and import it once in a
fresh interpreter; they run no tasks.  A failure names the module, the class or
the import chain to look at.  The limits are the issue's, after CPython's and
loky's manager threads (300 to 425 lines); change them on purpose, not to get
a change through.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import poolx

ROOT = Path(poolx.__file__).resolve().parent
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 450
# What `import poolx` may load of its own modules (the package face, the
# executor and what it needs); the other front ends load on first use.
MAX_MODULES_ON_IMPORT = 8
# A front end that must read another module's private name says why on the
# line, with this marker; there may be only a handful.
SIDE_DOOR = "# side door:"
MAX_SIDE_DOORS = 5
# Front ends and tools: they reach the executor and the actors through
# declared interfaces only.  The backends (and the engine inside them) are the
# other side of those interfaces and are not counted.
FRONT_ENDS = ("poolx._executor", "poolx._map", "poolx._pool", "poolx._api", "poolx.joblib",
              "poolx.iter", "poolx.collective", "poolx.actors", "poolx.harness", "poolx.cli")


@cache
def modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(), str(path)))
    return found


def _runtime_nodes(node: ast.AST):
    """Every node below ``node``, skipping ``if TYPE_CHECKING:`` blocks (never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The poolx modules an import statement of ``module`` loads."""
    mods = modules()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")
            if mods[module][0].name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in mods else prefix
                 for alias in node.names]
    out = []
    for name in names:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in mods and name != module:
            out.append(name)
    return out


def imports(inner_only: bool = False) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported poolx module, line)], imports inside functions included."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for name, (_, tree) in modules().items():
        edges = graph.setdefault(name, [])
        for node in _runtime_nodes(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and (node.col_offset > 0 or not inner_only):
                edges.extend((target, node.lineno) for target in _targets(name, node))
    return graph


def test_no_module_or_class_is_too_long() -> None:
    long_modules, long_classes = [], []
    for name, (path, tree) in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {lines} lines")
        long_classes += [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
                         for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                         and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert not long_modules, f"over {MAX_MODULE_LINES} lines: split by job: {long_modules}"
    assert not long_classes, f"over {MAX_CLASS_LINES} lines: split by job: {long_classes}"


def test_no_import_cycle() -> None:
    """Counting imports inside functions: a cycle hidden in a function is still a cycle."""
    graph = {m: sorted({t for t, _ in edges}) for m, edges in imports().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                return [*stack[stack.index(t):], t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_imports_inside_functions_are_for_lazy_loading_only() -> None:
    """Inside a function, a poolx module is imported only to load a front end or tool late
    (the harness, the joblib backend, a cluster backend, the Ray-style API): never to
    get around a cycle."""
    lazy = ("poolx.harness", "poolx.joblib", "poolx.backends.dask", "poolx.backends.ray",
            "poolx.backends._cluster", "poolx._api", "poolx._pool", "poolx.actors.pool",
            "poolx.iter", "poolx.collective", "poolx.backends.processes", "poolx.backends.threads",
            "poolx.backends.serial", "poolx._telemetry")
    bad = [f"{m}:{line} imports {t}" for m, edges in imports(inner_only=True).items()
           for t, line in edges if not t.startswith(lazy)]
    assert not bad, "poolx imports inside functions that are not lazy loading: " + "; ".join(bad)


def _private_names() -> dict[str, set[str]]:
    """For each poolx module, the private names it defines (functions, classes, attributes)."""
    names: dict[str, set[str]] = {}
    for module, (_, tree) in modules().items():
        defined = names.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        names[module] = {n for n in defined if n.startswith("_") and not n.startswith("__")}
    return names


def test_front_ends_use_declared_interfaces() -> None:
    """No front end or tool reads a private name that another poolx module defines."""
    defined = _private_names()
    reads, doors = [], []
    for module, (path, tree) in modules().items():
        if not module.startswith(FRONT_ENDS):
            continue
        elsewhere = set().union(*(v for k, v in defined.items() if k != module)) - defined[module]
        lines = path.read_text().splitlines()
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr in elsewhere):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            where = f"{module}:{node.lineno} {ast.unparse(node)}"
            (doors if SIDE_DOOR in lines[node.lineno - 1] else reads).append(where)
    assert not reads, f"private reads across modules (declare an interface): {reads}"
    assert len(doors) <= MAX_SIDE_DOORS, f"more than {MAX_SIDE_DOORS} commented side doors: {doors}"


def test_import_poolx_loads_only_the_front_door() -> None:
    code = ("import sys, poolx; "
            "print(sorted(m for m in sys.modules if m == 'poolx' or m.startswith('poolx.'))); "
            "print('multiprocessing.pool' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True, cwd=ROOT.parent).stdout.splitlines()
    loaded = ast.literal_eval(out[0])
    assert len(loaded) <= MAX_MODULES_ON_IMPORT, f"`import poolx` loads {len(loaded)}: {loaded}"
    assert out[1] == "False", "`import poolx` loads multiprocessing.pool (Pool must load on first use)"
