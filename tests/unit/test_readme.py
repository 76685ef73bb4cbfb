"""What a new user reads first: the README's first screen."""

from pathlib import Path

ROOT = Path(__file__).parents[2]
FIRST_SCREEN_LINES = 35


def test_the_first_screen_says_time_memory_disk_where_results_land_and_what_to_run_next() -> None:
    first = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN_LINES])
    for needle in ("make demo", "minutes", "GB of RAM", "GB of disk", "runs/demo/", "eval/report.md"):
        assert needle in first, needle
    assert 'ragtune query runs/demo "' in first
    assert "configs/templates/cpu.yaml" in first and "ragtune run configs/my-docs.yaml" in first
