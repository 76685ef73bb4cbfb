"""Stage entry points leave an ``accelerate launch`` cleanly: every rank waits, then the process group is torn down."""

from pathlib import Path

import pytest
import torch.distributed as dist

from ragtune.pipeline.entry import leave_process_group, run_stage


@pytest.fixture
def one_rank_group(tmp_path: Path):
    """A real gloo process group of one rank, as `accelerate launch` sets up (there, one per rank)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_leave_process_group_tears_the_group_down(one_rank_group: None) -> None:
    assert dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()


def test_leave_process_group_does_nothing_when_not_distributed() -> None:
    assert not dist.is_initialized()
    leave_process_group()  # no group to wait on: no error
    assert not dist.is_initialized()


def test_a_stage_run_as_a_module_ends_with_the_group_torn_down(one_rank_group: None, tiny_config: Path) -> None:
    seen: list[bool] = []

    def stage_main(cfg, run, force):  # what a stage's main sees: the launcher's group, still up
        seen.append(dist.is_initialized())
        return {}

    run_stage("data", stage_main, "test stage", ["--config", str(tiny_config)])
    assert seen == [True]
    assert not dist.is_initialized()
