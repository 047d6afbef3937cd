"""The shape of the product packages: no import circles, no scaffolding imported, none shipped.

Read from the source with `ast` (nothing is imported); every import is an edge, the lazy ones
inside functions too: a circle hidden behind a function-level import is still a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import setuptools
import tomllib

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("common", "installer", "updater", "agent", "mirror", "pkgbuild", "server")
SCAFFOLDING = ("devkit", "tests", "demo", "bench")


def module_name(path: Path) -> str:
    """Dotted module name of a file under the repository root."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_files() -> Iterator[Path]:
    for package in PRODUCT:
        yield from sorted((REPO / package).rglob("*.py"))


def imported_names(
    tree: ast.Module, name: str, is_package: bool, modules: set[str]
) -> Iterator[str]:
    """Every module a file imports, at any depth, resolved to absolute dotted names."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            # `from package import module` loads the module; the package only for a name in it
            yield from names
            if not all(n in modules for n in names):
                yield base


def import_edges() -> dict[str, set[str]]:
    """Every product module's imports of other product modules."""
    files = {module_name(p): p for p in product_files()}
    modules = set(files)
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = imported_names(tree, name, path.name == "__init__.py", modules)
        edges[name] = {t for t in found if t in modules} - {name}
    return edges


def import_graph() -> dict[str, set[str]]:
    """Import edges between product modules, lazy imports included.

    A package importing its own submodules is how a package assembles itself (a registry of
    actions or formats) and is left out; every other edge counts.
    """
    return {
        name: {t for t in targets if not t.startswith(name + ".")}
        for name, targets in import_edges().items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_in_the_product_packages() -> None:
    assert circles(import_graph()) == []


def test_the_circle_finder_sees_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Which product packages each may import (its own aside). The agent, installer and updater run
# on the VM; the agent and installer reuse the updater's swap and recovery. Nothing imports the
# agent, the server or the tools: an installer importing agent.cli (for the activation code)
# was the slip this rule caught.
MAY_IMPORT = {
    "common": set(),
    "updater": {"common"},
    "agent": {"common", "updater"},
    "installer": {"common", "updater"},
    "mirror": {"common"},
    "pkgbuild": {"common"},
    "server": {"common"},
}


def test_each_product_package_imports_only_the_floors_below_it() -> None:
    offenders = []
    for module, targets in import_edges().items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != package and other not in MAY_IMPORT[package]:
                offenders.append(f"{module} imports {target}")
    assert offenders == []


def test_no_product_module_imports_scaffolding() -> None:
    offenders = []
    for path in product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        name = module_name(path)
        for target in imported_names(tree, name, path.name == "__init__.py", set()):
            if target.split(".")[0] in SCAFFOLDING:
                offenders.append(f"{path.relative_to(REPO)} imports {target}")
    assert offenders == []


def test_scaffolding_is_not_a_packaged_package() -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    find = find["find"]
    packaged = setuptools.find_packages(
        str(REPO), include=find.get("include", ["*"]), exclude=find.get("exclude", [])
    )
    assert "devkit" in setuptools.find_packages(str(REPO))  # the finder does see it
    assert {p.split(".")[0] for p in packaged} == set(PRODUCT)


def entry_modules(modules: set[str]) -> set[str]:
    """Where the product starts: the console scripts and every `python -m` entry."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    starts = {target.split(":")[0] for target in scripts.values()}
    return starts | {m for m in modules if m.endswith("__main__")}


def test_every_product_module_is_reachable_from_an_entry_point() -> None:
    """A product module nothing of the product imports is dead code or scaffolding."""
    edges = import_edges()
    modules = set(edges)
    seen: set[str] = set()
    todo = sorted(entry_modules(modules))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        todo.extend((edges[name] | parents) & modules - seen)
    assert sorted(modules - seen) == []


MAX_MODULE_LINES = 650


def test_no_product_module_is_over_650_lines() -> None:
    """A module past this size is split by concern (agent/daemon.py: timers.py, updates.py)."""
    sizes = {
        str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
        for path in product_files()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
