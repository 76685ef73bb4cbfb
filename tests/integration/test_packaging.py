"""One import name: the built wheel installs ``ragtune`` and nothing else at the top level, and a user's own
``pipeline.py``, ``eval.py`` or ``stages.py`` beside their work no longer shadows any part of it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_wheel_installs_ragtune_alone(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "ragtune", source / "ragtune", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("ragtune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"ragtune"}
    for package in ("pipeline", "stages", "eval", "app"):
        assert f"ragtune/{package}/__init__.py" in names
    assert "ragtune/eval/general_knowledge.jsonl" in names  # the forgetting check's bundled questions
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ragtune = ragtune.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_users_own_pipeline_py_does_not_break_ragtune(tmp_path: Path) -> None:
    for name in ("pipeline", "eval", "stages"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    # `python -m` puts the working directory first on sys.path, where the old top-level names were shadowed.
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.app.cli", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serve" in proc.stdout and "was imported" not in proc.stderr
