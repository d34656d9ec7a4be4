"""dvc.yaml re-runs a stage when its code changes only if the stage lists every gothic/ module its
script imports, directly or through other modules (lazy imports inside functions included); a
module it does not import must not be listed, or an unrelated edit re-runs (say) a 10-hour training."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT


def module_files(name: str) -> set[Path]:
    """Files that importing module `name` (a.b.c) may run: every package __init__.py on the way, and
    a/b/c.py or a/b/c/__init__.py."""
    parts = name.split(".")
    return {path for i in range(1, len(parts) + 1)
            for path in (Path(*parts[:i]).with_suffix(".py"), Path(*parts[:i], "__init__.py"))}


def gothic_imports(path: Path) -> set[Path]:
    """The gothic/ module files a source file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gothic":
            # `from gothic.chat import view` imports a module; `from gothic.chat import run_chat` names none
            for name in [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]:
                found |= module_files(name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gothic."):
                    found |= module_files(alias.name)
    return {p for p in found if (ROOT / p).is_file()}  # `from gothic import __version__` names no module


def import_closure(script: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in gothic_imports(ROOT / todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return {str(p) for p in seen} - {"gothic/__init__.py"}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_are_exactly_its_scripts_gothic_imports(name):
    deps = STAGES[name]["deps"]
    script = next(d for d in deps if d.startswith("stages/"))
    listed = {d for d in deps if d.startswith("gothic/")}
    wanted = import_closure(Path(script))
    assert listed == wanted, f"{name}: missing {sorted(wanted - listed)}, not imported {sorted(listed - wanted)}"


def test_stages_are_listed_in_pipeline_order():
    assert list(STAGES) == ["prepare", "tokenize", "binarize", "train", "evaluate", "sample", "export"]


def test_gothic_modules_import_one_way():
    """No import cycles among gothic's modules, counting lazy imports inside functions and
    TYPE_CHECKING ones: every module can be read (and tested) with only what it imports below it."""
    # a module's own packages' __init__.py run before it; importing them is no arrow back
    graph = {path: {m for m in gothic_imports(ROOT / path) - {path}
                    if not (m.name == "__init__.py" and path.is_relative_to(m.parent))}
             for path in (p.relative_to(ROOT) for p in (ROOT / "gothic").rglob("*.py"))}
    cycles = []

    def visit(node: Path, trail: list[Path]) -> None:
        if node in trail:
            cycles.append(" -> ".join(str(p) for p in trail[trail.index(node):] + [node]))
            return
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, trail + [node])
        done.add(node)

    done: set[Path] = set()
    for start in sorted(graph):
        visit(start, [])
    assert not cycles, cycles
