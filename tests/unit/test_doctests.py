"""Every ``>>>`` example in the source packages runs and prints what its docstring says.

Without ELLIPSIS, so an expected ``'...'`` matches only itself: an example shows a real value. Examples
that need a finished run or a loaded model are written as plain code (no ``>>>``), not skipped.
"""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def source_modules() -> list[str]:
    """Dotted names of every module of the ``ragtune`` package (``__main__`` guards keep imports quiet)."""
    names = []
    for path in sorted((ROOT / "ragtune").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", source_modules())
def test_docstring_examples_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # examples name repository paths (data/demo/docs)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (doctest output above)"
