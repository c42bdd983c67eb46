"""Python 3.10 compatibility of the package, checked *by* a Python 3.10 interpreter (JetPack 6 and ROS 2
Humble ship 3.10). Standard library only, so it runs in a bare 3.10 without the project's dependencies.

For every ``.py`` file under the given paths:

1. it compiles with 3.10's parser (no ``except*``, PEP 695 ``type`` statements or generics, 3.12
   f-string nesting, ...);
2. every standard-library name it imports (``from X import a``, ``import X.y``) and every attribute it
   reads off an imported standard-library module (``X.attr``) exists in 3.10's standard library
   (``typing.Self``, ``tomllib``, ``enum.StrEnum``, ``datetime.UTC``, ``asyncio.TaskGroup`` ... do not);
3. it uses no builtin that 3.10 lacks (``ExceptionGroup``, ``BaseExceptionGroup``).

Third-party imports are not resolved (the dependencies are not installed for 3.10 here); ruff's
``target-version = "py310"`` covers syntax-level upgrades.

    python3.10 .ci/py310_check.py dinov3_ros training benchmarks tests launch setup.py
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}
#: standard-library modules added after 3.10 (3.10's ``sys.stdlib_module_names`` does not know them)
NEW_MODULES = {"tomllib"}


def _stdlib(name: str) -> bool:
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top in NEW_MODULES


def _has(module: str, attr: str) -> bool:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return False
    if hasattr(mod, attr):
        return True
    try:  # a submodule (``from os import path``, ``from concurrent import futures``)
        importlib.import_module(f"{module}.{attr}")
    except ImportError:
        return False
    return True


class _Checker(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> stdlib module
        self.problems: list[str] = []

    def _bad(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.path}:{getattr(node, 'lineno', 0)}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if not _stdlib(a.name):
                continue
            try:
                importlib.import_module(a.name)
            except ImportError:
                self._bad(node, f"`import {a.name}`: no such module in Python 3.10")
                continue
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                self.aliases[a.name.split(".")[0]] = a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        if node.level or not _stdlib(mod):
            return
        for a in node.names:
            if a.name != "*" and not _has(mod, a.name):
                self._bad(node, f"`from {mod} import {a.name}`: not in Python 3.10")
            elif a.name != "*" and _stdlib(f"{mod}.{a.name}") and f"{mod}.{a.name}" in sys.modules:
                self.aliases[a.asname or a.name] = f"{mod}.{a.name}"

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            mod = self.aliases[node.value.id]
            if not _has(mod, node.attr):
                self._bad(node, f"`{node.value.id}.{node.attr}`: {mod} has no {node.attr!r} in Python 3.10")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in NEW_BUILTINS and isinstance(node.ctx, ast.Load):
            self._bad(node, f"builtin `{node.id}` is Python 3.11+")


def check_file(path: Path) -> list[str]:
    src = path.read_text(encoding="utf-8")
    try:
        tree = compile(src, str(path), "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        compile(tree, str(path), "exec", dont_inherit=True)
    except SyntaxError as e:
        return [f"{path}:{e.lineno}: does not compile with Python 3.10: {e.msg}"]
    checker = _Checker(path)
    checker.visit(tree)
    return checker.problems


def main(argv: list[str]) -> int:
    if sys.version_info[:2] != (3, 10):
        print(f"run this with Python 3.10 (this is {sys.version.split()[0]})", file=sys.stderr)
        return 2
    roots = [Path(a) for a in argv] or [Path("dinov3_ros")]
    files = sorted({f for r in roots for f in ([r] if r.is_file() else r.rglob("*.py"))})
    problems = [p for f in files for p in check_file(f)]
    for p in problems:
        print(p)
    print(
        f"py310: checked {len(files)} files with Python {sys.version.split()[0]}: {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
