"""Artifacts by name: only the run-directory module writes down where an artifact lives in a run."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ragtune", "scripts")
REGISTRY = ROOT / "ragtune" / "pipeline" / "rundir.py"
# A string that starts with a run directory's top folder, or names its resolved config, is an artifact path.
ARTIFACT_PATH = re.compile(r"^(?:(?:data|embed|rerank|gpl|raft|eval|cache|index)/|config\.resolved\.yaml$)")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that stand alone as statements (docstrings and prose)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def hand_typed_paths(path: Path) -> list[str]:
    """``line: literal`` for each string in code (not docstrings) that spells out an artifact's path."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = _docstrings(tree)
    found = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in prose
        and ARTIFACT_PATH.match(node.value)
    ]
    return [f"{node.lineno}: {node.value!r}" for node in sorted(found, key=lambda n: (n.lineno, n.col_offset))]


MODULES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p != REGISTRY)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_types_an_artifact_path(module: Path) -> None:
    assert hand_typed_paths(module) == [], "use the named paths of ragtune/pipeline/rundir.py"


def test_the_check_finds_a_typed_path(tmp_path: Path) -> None:
    module = tmp_path / "stage.py"
    module.write_text('"""Writes embed/model."""\nrun.path("embed/model")\nf"{x}"\nRERANK = "rerank/model"\n')
    assert hand_typed_paths(module) == ["2: 'embed/model'", "4: 'rerank/model'"]


def test_the_registry_spells_out_every_path() -> None:
    assert hand_typed_paths(REGISTRY), "the registry's own paths are what the check looks for"
