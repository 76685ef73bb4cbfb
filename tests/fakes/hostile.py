"""Hostile inputs for ingest and the data stage: a docs folder holding every kind of bad entry, and a
non-recursive delete for it (its 1,000-level folder is deeper than recursive deletes can go)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEPTH = 1000
DEEP_DOC = "/".join(["d"] * DEPTH) + "/bottom.md"
# report source -> reason each bad entry must be listed with (prefix)
SKIPPED = {
    "noperm.md": "unreadable (Permission denied)",
    "locked/": "unreadable folder (Permission denied)",
    "escape.md": "symlink to a place outside data.docs",
    "self": "symlink loop",
    "loop/": "symlink loop (folder already read)",
    "dangling.md": "broken symlink",
    "hostile.pdf": "unreadable PDF",
    "n\ufffdme.md": "file name is not valid UTF-8",
    "caf\ufffd": "file name is not valid UTF-8",
    "records.jsonl:2": "no string field 'text'",
    "records.jsonl:3": "invalid JSON",
    "records.jsonl:4": "no string field 'text'",
    "binary.txt": "binary content",
    "empty.txt": "empty",
    "latin1.md": "not UTF-8 text",
    "bad.json": "invalid JSON",
}
# documents that must be read: the bottom of the deep folder, the 20 MB single line, plain files
KEPT = [DEEP_DOC, "one-line.txt", "good.md", "records.jsonl#0", "records.jsonl#3"]
OUTSIDE_TEXT = "a file outside data.docs that must never be read"


def build_hostile_docs(tmp_path: Path) -> Path:
    """Write the hostile docs folder under ``tmp_path/.config/docs`` (a dot-folder in its path) and return it."""
    (tmp_path / "secret.txt").write_text(OUTSIDE_TEXT)
    root = tmp_path / ".config" / "docs"
    root.mkdir(parents=True)
    (root / "good.md").write_text("Heron routes orders to the berth. The berth drains at night.")
    deep = root
    for _ in range(DEPTH):  # one level at a time: mkdir(parents=True) recurses once per level
        deep = deep / "d"
        deep.mkdir()
    (deep / "bottom.md").write_text("The deepest document is still read.")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "self")
    (root / "escape.md").symlink_to(tmp_path / "secret.txt")
    (root / "inside.md").symlink_to(root / "good.md")
    (root / "dangling.md").symlink_to(root / "missing.md")
    os.mkdir(os.path.join(os.fsencode(root), b"caf\xe9"))
    Path(os.fsdecode(os.path.join(os.fsencode(root), b"n\xe4me.md"))).write_bytes(b"latin-1 name")
    (root / "locked").mkdir()
    (root / "locked" / "x.md").write_text("never listed")
    (root / "noperm.md").write_text("cannot be opened")
    (root / "hostile.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 1 0 R >> endobj\ntrailer << /Root 1 0 R >>"
    )
    (root / "records.jsonl").write_text('{"text": "kept one"}\n{"body": "no text"}\n{nope\n7\n{"text": "kept two"}\n')
    (root / "one-line.txt").write_text("Word after word. " * 1_250_000)  # 21 MB on a single line
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "empty.txt").write_text("  \n")
    (root / "latin1.md").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / "bad.json").write_text("{not json")
    return root


@contextmanager
def permission_denied(monkeypatch: Any, folder_name: str = "locked", file_name: str = "noperm.md") -> Iterator[None]:
    """Make one folder unlistable and one file unreadable (the tests run as root, where chmod 000 does not)."""
    real_scandir: Callable = os.scandir
    real_read_bytes: Callable = Path.read_bytes

    def scandir(path: Any) -> Any:
        if Path(os.fsdecode(path)).name == folder_name:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    def read_bytes(self: Path) -> bytes:
        if self.name == file_name:
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    with monkeypatch.context() as patch:  # undone on exit, before the folder is removed
        patch.setattr(os, "scandir", scandir)
        patch.setattr(Path, "read_bytes", read_bytes)
        yield


def remove_tree(path: Path) -> None:
    """Delete a folder tree bottom-up without recursion and without following symlinks."""
    order, stack = [], [os.fsencode(path)]
    while stack:
        folder = stack.pop()
        order.append(folder)
        with os.scandir(folder) as entries:
            stack += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    for folder in reversed(order):
        with os.scandir(folder) as entries:
            for e in entries:
                if not e.is_dir(follow_symlinks=False):
                    os.unlink(e.path)
        os.rmdir(folder)
