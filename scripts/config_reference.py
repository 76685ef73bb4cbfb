"""Write docs/config.md, the config reference, from the typed schema's field descriptions.

python scripts/config_reference.py            # rewrite docs/config.md
python scripts/config_reference.py --check    # exit 1 if docs/config.md is out of date (tests do this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from ragtune.pipeline.config import RagtuneConfig

OUT = Path(__file__).parents[1] / "docs" / "config.md"


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`"


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field typed ``Section`` or ``Section | None`` (not containers of sections)."""
    if get_origin(annotation) is dict:
        return None
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def render() -> str:
    """The reference as Markdown: one table per section, nested sections by dotted path."""
    lines = [
        "# Config reference",
        "",
        "Generated from `ragtune/pipeline/config.py` by `python scripts/config_reference.py`; do not edit by hand.",
        "Every key can be overridden on the command line with its dotted path (`embed.epochs=3`).",
        "An unknown or misspelled key is an error that names its dotted path.",
    ]

    def section(model: type[BaseModel], path: str) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            sub = _section_type(field.annotation)
            if sub is not None:
                nested.append((f"{path}.{name}" if path else name, sub))
                continue
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| `{name}` | {_default(field)} | {desc} |")
        if rows:
            lines.extend(["", f"## `{path}`", "", "| key | default | meaning |", "|---|---|---|", *rows])
        for sub_path, sub in nested:
            section(sub, sub_path)

    for name, field in RagtuneConfig.model_fields.items():
        section(_section_type(field.annotation), name)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
