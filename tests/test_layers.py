"""The layers of /work/shared/DESIGN.md hold: no module imports from a layer above its own.

Every import of every module of src/pacs_engine is read with `ast` (those inside
functions too; those under `if TYPE_CHECKING:` are for annotations and never run),
and its layer compared with the importer's. A package's lazy exports (`_EXPORTS`,
module names as strings, imported on first use) count as imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pacs_engine

PACKAGE = Path(pacs_engine.__file__).parent

#: Layers from the bottom up: a module may import from its own layer and those below.
LAYERS = ["_native", "bottom", "codecs", "index", "archive", "ingest", "read", "serve", "cli"]

#: The layer of each top-level module or subpackage of pacs_engine.
LAYER_OF = {
    "_native": "_native",
    # Helpers every layer may use; they import only each other and _native.
    "errors": "bottom",
    "lazy": "bottom",
    "interrupt": "bottom",  # Ctrl-C while the command starts; imports nothing of the package
    "storage": "bottom",
    "stages": "bottom",  # CPU and wall time per stage of a task, for the ingest report
    "header": "bottom",
    "scanning": "bottom",
    "sources": "bottom",
    "workers": "bottom",
    "executors": "bottom",  # where tasks run; verify (archive/) makes them too
    "forkserver": "bottom",  # the workers' forkserver, started before the CLI imports more
    "inventory": "bottom",  # counts what scans find; for `pacs-engine scan`
    "synth": "bottom",  # makes synthetic DICOM; imports nothing of the package
    "codecs": "codecs",
    "index": "index",
    "archive": "archive",
    "inputs": "ingest",  # the old name of ingest/inputs.py's names, kept for their users
    "ingest": "ingest",
    "read": "read",
    "deid": "read",  # de-identified copies: reads an archive, writes one (archive.copies)
    "serve": "serve",
    "cli": "cli",
    "": "cli",  # the package itself: its lazy exports reach every layer
}


def module_name(path: Path) -> str:
    """The dotted name of a module file of the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer of a pacs_engine module, by the map above."""
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYER_OF, f"{module}: not in the test's layer map; place it in LAYER_OF"
    return LAYER_OF[top]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_lazy_exports(node: ast.AST) -> bool:
    """True for `_EXPORTS = {...}`: the names a package imports on first use (lazy.py)."""
    return (
        isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]
        and isinstance(node.value, ast.Dict)
    )


def imports(tree: ast.AST, module: str, modules: set[str]) -> list[tuple[str, int]]:
    """(imported pacs_engine module, line) of every import that runs, outside TYPE_CHECKING.

    `from package import name` counts as an import of the module `package.name` when
    there is one (`modules`: every module of the package), else of `package`.
    """
    found: list[tuple[str, int]] = []
    package = module if f"{module}.__init__" in modules else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif _is_lazy_exports(node):
            assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
            found.extend(
                (value.value, value.lineno)
                for value in node.value.values
                if isinstance(value, ast.Constant) and isinstance(value.value, str)
            )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importer's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((name if name in modules else base, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [(name, line) for name, line in found if name.split(".")[0] == "pacs_engine"]


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages also as `name.__init__`)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        modules[module_name(path)] = path
        if path.name == "__init__.py":
            modules[module_name(path) + ".__init__"] = path
    return modules


def all_imports() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every pacs_engine import in the package's modules."""
    modules = package_modules()
    edges = []
    for module, path in modules.items():
        if module.endswith(".__init__"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges.extend((module, name, line) for name, line in imports(tree, module, set(modules)))
    return edges


def upward(edges: list[tuple[str, str, int]]) -> dict[tuple[str, str], int]:
    """The imports from a higher layer among `edges`: (importer, imported) -> first line."""
    found: dict[tuple[str, str], int] = {}
    for importer, imported, line in edges:
        if LAYERS.index(layer(imported)) > LAYERS.index(layer(importer)):
            found.setdefault((importer, imported), line)
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    found = upward(all_imports())
    assert not found, "imports from a higher layer:\n" + "\n".join(
        f"{a} (line {line}, layer {layer(a)}) imports {b} (layer {layer(b)})"
        for (a, b), line in sorted(found.items())
    )


def test_the_walk_finds_imports_in_functions_and_skips_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import pacs_engine.errors\n"
        "if TYPE_CHECKING:\n"
        "    from pacs_engine.cli import main\n"
        "else:\n"
        "    from pacs_engine import storage, Archive\n"
        "def f():\n"
        "    from pacs_engine.read import Series\n"
        "class C:\n"
        "    def g(self):\n"
        "        from . import volume\n"
        "        from ..ingest import run\n"
        "_EXPORTS = {'Series': 'pacs_engine.read.series', 'x': 'pacs_engine.ingest.run'}\n"
    )
    modules = {"pacs_engine.storage", "pacs_engine.read.volume", "pacs_engine.ingest.run"}
    found = imports(ast.parse(source), "pacs_engine.read.x", modules)
    assert found == [
        ("pacs_engine.errors", 2),
        ("pacs_engine.storage", 6),
        ("pacs_engine", 6),
        ("pacs_engine.read", 8),
        ("pacs_engine.read.volume", 11),
        ("pacs_engine.ingest.run", 12),
        ("pacs_engine.read.series", 13),
        ("pacs_engine.ingest.run", 13),
    ]


def test_an_upward_import_is_caught_and_a_downward_one_is_not() -> None:
    edges = [
        ("pacs_engine.index.core", "pacs_engine.archive.format", 3),
        ("pacs_engine.archive.verify", "pacs_engine.workers", 4),
        ("pacs_engine.ingest.inputs", "pacs_engine.archive.format", 5),
        ("pacs_engine.codecs.deflate", "pacs_engine.codecs.native", 6),
        ("pacs_engine.scanning", "pacs_engine.ingest", 7),
    ]
    assert upward(edges) == {
        ("pacs_engine.index.core", "pacs_engine.archive.format"): 3,
        ("pacs_engine.scanning", "pacs_engine.ingest"): 7,
    }


def test_every_module_has_a_layer() -> None:
    modules = [m for m in package_modules() if not m.endswith(".__init__")]
    assert len(modules) > 40  # the walk sees the package, not an empty folder
    for module in modules:
        assert layer(module) in LAYERS
