"""The house has no loops: every import of every module, read from its syntax tree (ast), keeps the layers.

Bottom to top (docs/architecture.md):

- the core (``ragtune/pipeline/``) imports nothing from ``ragtune.stages``, ``ragtune.eval`` or ``ragtune.app``;
- ``ragtune.eval`` imports the core and itself: never a stage, never the app;
- a stage imports the core and its own subpackage: never another stage, never eval, never the app;
- the app (``ragtune/app/``: CLI, LlamaIndex assembly, server, LangChain, export, vector stores) imports the core
  and itself; it names the stages and eval only as strings in the CLI's stage table (loaded with importlib).
  Nothing but the app and ``scripts/`` imports the app.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
LAYERS = ("pipeline", "stages", "eval", "app")


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
    """True when the module at ``path`` (under ``ragtune/``) may not import ``module``."""
    parts = path.relative_to(ROOT / "ragtune").parts
    layer, target = parts[0], module.split(".")
    if target[0] != "ragtune" or len(target) < 2:
        return False  # a library, or the package's own docstring-only root
    into = target[1]
    if layer == "app":
        return into in ("stages", "eval")
    if into == "app":
        return True
    if layer == "pipeline":
        return into in ("stages", "eval")
    if layer == "eval":
        return into == "stages"
    if layer == "stages" and into == "eval":
        return True
    if layer == "stages" and into == "stages" and len(target) > 2:
        return target[2] != parts[1]
    return False


def violations() -> list[tuple[str, str]]:
    """(file, module) of every import that crosses a layer the wrong way."""
    found = []
    for layer in LAYERS:
        for path in sorted((ROOT / "ragtune" / layer).rglob("*.py")):
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
        ("ragtune/app/assemble.py", "ragtune.eval.harness", True),
        ("ragtune/app/cli.py", "ragtune.stages.data.prepare", True),
        ("ragtune/app/assemble.py", "ragtune.pipeline.generator", False),
        ("ragtune/app/serve.py", "ragtune.app.vector_store", False),
        ("ragtune/pipeline/hybrid.py", "ragtune.app.vector_store", True),
        ("ragtune/eval/harness.py", "ragtune.app.assemble", True),
        ("ragtune/stages/raft/build.py", "ragtune.app.assemble", True),
        ("ragtune/eval/metrics.py", "ragtune.stages.raft.prompts", True),
        ("ragtune/eval/harness.py", "ragtune.eval.metrics", False),
        ("ragtune/stages/rerank/mine.py", "ragtune.stages.embed.pairs", True),
        ("ragtune/stages/rerank/mine.py", "ragtune.stages.rerank.negatives", False),
        ("ragtune/stages/raft/build.py", "ragtune.pipeline.raft_format", False),
        ("ragtune/stages/data/prepare.py", "ragtune.eval.metrics", True),
        ("ragtune/stages/data/prepare.py", "llama_index.core", False),
    ],
)
def test_the_rule_tells_crossings_from_allowed_imports(path: str, module: str, bad: bool) -> None:
    assert forbidden(ROOT / path, module) is bad


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\ndef f():\n    from ragtune.eval.harness import main\n    import ragtune.stages.raft.train\n"
    )
    assert imported_modules(module) == ["os", "ragtune.eval.harness", "ragtune.stages.raft.train"]


def test_only_the_app_and_scripts_import_the_app() -> None:
    importers = {
        str(path.relative_to(ROOT)).split("/")[0]
        for path in ROOT.rglob("*.py")
        if ".venv" not in path.parts and any(m.startswith("ragtune.app") for m in imported_modules(path))
    }
    assert importers <= {"ragtune", "scripts", "tests"}
    inside = {
        path.relative_to(ROOT / "ragtune").parts[0]
        for path in (ROOT / "ragtune").rglob("*.py")
        if any(m.startswith("ragtune.app") for m in imported_modules(path))
    }
    assert inside <= {"app"}, inside
