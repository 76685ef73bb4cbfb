"""The house has no loops: every import of every module, read from its syntax tree (ast), keeps the layers.

- the core (``pipeline/``) imports nothing from ``stages`` or ``eval`` (the CLI names stages only as
  strings in its stage table, loaded with importlib);
- ``eval`` imports the core and itself, never a stage;
- a stage imports the core and its own subpackage, never another stage and never ``eval``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def imported_modules(path: Path) -> list[str]:
    """Absolute module names ``path`` imports, at any depth (inside functions too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def forbidden(path: Path, module: str) -> bool:
    """True when the module at ``path`` may not import ``module`` (relative imports are not used here)."""
    layer, target = path.relative_to(ROOT).parts[0], module.split(".")
    if layer == "pipeline":
        return target[0] in ("stages", "eval")
    if layer == "eval":
        return target[0] == "stages"
    if layer == "stages" and target[0] == "eval":
        return True
    if layer == "stages" and target[0] == "stages" and len(target) > 1:
        return target[1] != path.relative_to(ROOT).parts[1]
    return False


def violations() -> list[tuple[str, str]]:
    """(file, module) of every import that crosses a layer the wrong way."""
    found = []
    for package in ("pipeline", "eval", "stages"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(path):
                if forbidden(path, module):
                    found.append((str(path.relative_to(ROOT)), module))
    return found


def test_no_module_imports_across_the_layers() -> None:
    found = violations()
    assert found == [], "imports across the layers: " + ", ".join(f"{f} imports {m}" for f, m in found)


@pytest.mark.parametrize(
    ("path", "module", "bad"),
    [
        ("pipeline/assemble.py", "eval.harness", True),
        ("pipeline/cli.py", "stages.data.prepare", True),
        ("pipeline/assemble.py", "pipeline.generator", False),
        ("eval/metrics.py", "stages.raft.prompts", True),
        ("eval/harness.py", "eval.metrics", False),
        ("stages/rerank/mine.py", "stages.embed.pairs", True),
        ("stages/rerank/mine.py", "stages.rerank.negatives", False),
        ("stages/raft/build.py", "pipeline.raft_format", False),
        ("stages/data/prepare.py", "eval.metrics", True),
        ("stages/data/prepare.py", "llama_index.core", False),
    ],
)
def test_the_rule_tells_crossings_from_allowed_imports(path: str, module: str, bad: bool) -> None:
    assert forbidden(ROOT / path, module) is bad


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from eval.harness import main\n    import stages.raft.train\n")
    assert imported_modules(module) == ["os", "eval.harness", "stages.raft.train"]
