"""The house rules of the package, checked on its source with ``ast``.

- No import cycles between ``medzoo`` modules, counting imports inside functions too (a deferred
  import is still a dependency; deferring it only hides the cycle from Python, not from a reader).
- No module imports another module's ``_private`` name.

``find_problems`` is run on the real package, and on small planted packages to prove it can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "medzoo"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the package modules it imports; and every cross-module private import."""
    top = root.name
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    private: list[str] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in files:  # `from medzoo.export import onnx`: the submodule itself
                        targets.append((sub, None))
                    else:
                        targets.append((base, alias.name))
            else:
                continue
            for target, imported in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                while target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target == name:
                    continue
                if imported and imported.startswith("_") and not imported.startswith("__"):
                    private.append(f"{name} imports {target}.{imported}")
                # a package's __init__ re-exporting its children is not a dependency of them
                if not (is_package and target.startswith(name + ".")):
                    graph[name].add(target)
    return graph, private


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def find_problems(root: Path) -> list[str]:
    graph, private = import_graph(root)
    return [f"import cycle: {' <-> '.join(c)}" for c in find_cycles(graph)] + private


def test_medzoo_has_no_import_cycles_and_no_cross_module_private_imports() -> None:
    assert find_problems(PACKAGE_DIR) == []


MAX_FUNCTION_LINES = 60


def long_functions_without_reason(root: Path) -> list[str]:
    """Functions over ``MAX_FUNCTION_LINES`` lines with no ``# long: why`` comment right above."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2].strip() if first >= 2 else ""
            if length > MAX_FUNCTION_LINES and not above.startswith("# long:"):
                out.append(
                    f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)"
                )
    return out


def test_long_functions_say_why() -> None:
    assert long_functions_without_reason(PACKAGE_DIR) == []


def test_the_length_check_fails_on_a_long_function_without_a_reason(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": f"def short():\n    return 1\n\n\ndef long():\n{body}",
            "pkg/b.py": f"# long: a table of constants\ndef fine():\n{body}",
        },
    )
    assert long_functions_without_reason(root) == [
        f"pkg/a.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (  # a deferred import still closes the circle
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from pkg.b import g\n",
                "pkg/b.py": "def g():\n    from pkg import a\n",
            },
            "import cycle: pkg.a <-> pkg.b",
        ),
        (  # relative imports, three modules
            {
                "pkg/__init__.py": "",
                "pkg/sub/__init__.py": "",
                "pkg/sub/x.py": "from . import y\n",
                "pkg/sub/y.py": "from ..z import f\n",
                "pkg/z.py": "import pkg.sub.x\n",
            },
            "import cycle: pkg.sub.x <-> pkg.sub.y <-> pkg.z",
        ),
        (
            {"pkg/__init__.py": "", "pkg/a.py": "_h = 1\n", "pkg/b.py": "from pkg.a import _h\n"},
            "pkg.b imports pkg.a._h",
        ),
    ],
)
def test_the_check_fails_on_planted_problems(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    assert find_problems(_write(tmp_path, files)) == [expected]


def test_the_check_passes_a_clean_layered_package(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "from pkg.b import g\n\ndef f():\n    return g()\n",
            "pkg/b.py": "def g():\n    return 1\n",
        },
    )
    assert find_problems(root) == []
