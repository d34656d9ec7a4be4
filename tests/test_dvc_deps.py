"""dvc.yaml re-runs a stage when its code changes only if the stage lists every gothic/ module its
script imports, directly or through other modules (lazy imports inside functions included); a
module it does not import must not be listed, or an unrelated edit re-runs (say) a 10-hour training."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT


def gothic_imports(path: Path) -> set[Path]:
    """The gothic/ module files a source file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gothic":
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "gothic" else []
            found |= {Path(*name.split(".")).with_suffix(".py") for name in [node.module, *names]}
        elif isinstance(node, ast.Import):
            found |= {Path(*a.name.split(".")).with_suffix(".py") for a in node.names if a.name.startswith("gothic.")}
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
