"""Scripts that take key=value overrides accept them after their flags, as `ragtune` itself does."""

import re
from pathlib import Path

SCRIPTS = sorted((Path(__file__).parents[2] / "scripts").glob("*.py"))


def test_scripts_with_overrides_parse_them_intermixed_with_flags() -> None:
    # `parse_args` stops at the first positional after a flag: `script.py CONFIG --steps 3 key=value` would fail.
    takes_overrides = [
        p for p in SCRIPTS if re.search(r"add_argument\(\s*\"overrides\",\s*nargs=\"\*\"", p.read_text())
    ]
    assert len(takes_overrides) >= 3
    plain = [p.name for p in takes_overrides if "parse_intermixed_args(" not in p.read_text()]
    assert plain == []
