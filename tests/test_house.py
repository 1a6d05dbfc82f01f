"""The package's house rules, read from the source: one home per name, and imports that run one way.

docs/architecture.md states these rules; this test keeps them true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import perspective_unet

SRC = Path(perspective_unet.__file__).parent
PACKAGE = "perspective_unet"
REPO = SRC.parent.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _defined(tree: ast.Module) -> set[str]:
    """Names a module's top level binds itself (functions, classes, assignments), not those it imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _imports(tree: ast.Module) -> Iterator[tuple[str, str | None, int]]:
    """(module, name or None for ``import module``, line) of every project import, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE) and not node.level:
            for alias in node.names:
                yield node.module, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    yield alias.name, None, node.lineno


TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}
DEFINED = {name: _defined(tree) for name, tree in TREES.items()}


def _sources() -> list[Path]:
    return [*SRC.rglob("*.py"), *(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]


def test_modules_export_only_what_they_define():
    for name, tree in TREES.items():
        if MODULES[name].name == "__init__.py":
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                exported = {e.value for e in node.value.elts}  # type: ignore[attr-defined]
                foreign = sorted(exported - DEFINED[name])
                assert not foreign, f"{MODULES[name]} lists names in __all__ that it does not define: {foreign}"


def test_every_import_names_the_module_that_defines_the_name():
    """A name is imported from its home; a module (other than a package's __init__) is no forwarding address."""
    wrong = []
    for path in _sources():
        for module, name, line in _imports(ast.parse(path.read_text(), str(path))):
            if name is None or module not in MODULES or MODULES[module].name == "__init__.py":
                continue
            if f"{module}.{name}" in MODULES:
                continue  # a submodule
            if name not in DEFINED[module]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name} from {module}, which does not define it")
    assert not wrong, "\n".join(wrong)


# Which rooms a room may never import (docs/architecture.md, "Imports run one way").
_ABOVE_THE_CONTRACTS = ("data", "models", "runtime", "runs", "engine", "export", "viz", "bench", "cli")
NEVER = {
    # config reads its YAML through the guarded reader of outputs, which takes nothing but errors.
    "perspective_unet.config": (*_ABOVE_THE_CONTRACTS, "plan", "intensity", "fingerprint", "metrics"),
    "perspective_unet.outputs": (
        *_ABOVE_THE_CONTRACTS,
        "config",
        "plan",
        "channels",
        "intensity",
        "fingerprint",
        "metrics",
    ),
    **{
        f"perspective_unet.{name}": _ABOVE_THE_CONTRACTS
        for name in (
            "recipe",
            "plan",
            "fingerprint",
            "channels",
            "intensity",
            "metrics",
            "losses",
            "stats",
            "schedule",
            "table",
        )
    },
    "perspective_unet.data": ("models", "runtime", "runs", "engine", "export", "viz", "bench", "cli"),
    "perspective_unet.models": ("data", "runtime", "runs", "engine", "export", "viz", "bench", "cli"),
    # The light runtime: what `predict --onnx` needs, without PyTorch (tests/runtime checks the imports it makes).
    "perspective_unet.runtime": ("runs", "engine", "export", "viz", "bench", "cli"),
    "perspective_unet.viz": ("models", "runs", "engine", "export", "bench", "cli"),
    "perspective_unet.runs": ("data", "engine", "export", "viz", "bench", "cli"),
    "perspective_unet.export": ("engine", "bench", "cli"),
    "perspective_unet.engine": ("bench", "cli"),
}


@pytest.mark.parametrize("room", sorted(NEVER))
def test_imports_run_one_way(room):
    forbidden = tuple(f"{PACKAGE}.{name}" for name in NEVER[room])
    broken = []
    for name, tree in TREES.items():
        if name != room and not name.startswith(room + "."):
            continue
        for module, _, line in _imports(tree):
            if module in forbidden or module.startswith(tuple(f"{f}." for f in forbidden)):
                broken.append(f"{MODULES[name].relative_to(REPO)}:{line} imports {module}")
    assert not broken, f"{room} must not import {', '.join(NEVER[room])}:\n" + "\n".join(broken)


def test_nothing_but_the_command_line_imports_bench():
    broken = [
        f"{MODULES[name].relative_to(REPO)}:{line}"
        for name, tree in TREES.items()
        if not name.startswith((f"{PACKAGE}.bench", f"{PACKAGE}.cli"))
        for module, _, line in _imports(tree)
        if module == f"{PACKAGE}.bench" or module.startswith(f"{PACKAGE}.bench.")
    ]
    assert not broken, "only the command line imports bench: " + ", ".join(broken)
