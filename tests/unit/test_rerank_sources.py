"""scripts/rerank_sources.py: the loss of the distillation-from-the-fused-order variant."""

import math

import pytest
import torch


@pytest.fixture(scope="module")
def sources(load_script):
    return load_script("rerank_sources")


def test_distillation_loss_is_zero_when_the_student_matches_the_teacher(sources) -> None:
    teacher = torch.tensor([1.0, 0.5, 0.0])
    # the student's scores over its temperature give the same softmax as the teacher's over its own
    loss = sources.distillation_loss(teacher * 0.2, teacher, [3], temperature=0.2, teacher_temperature=1.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_is_the_kl_divergence_per_list_averaged(sources) -> None:
    scores = torch.tensor([0.0, 0.0, 2.0, 0.0])  # two lists of two
    teacher = torch.tensor([1.0, 0.0, 0.0, 0.0])
    loss = sources.distillation_loss(scores, teacher, [2, 2], temperature=1.0, teacher_temperature=1.0)
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    first = float(torch.sum(p * (p.log() - math.log(0.5))))  # the student is uniform on the first list
    q = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    second = float(torch.sum(0.5 * (math.log(0.5) - q.log())))  # the teacher is uniform on the second
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-5)


def test_a_student_that_inverts_the_teacher_costs_more_than_one_that_ties(sources) -> None:
    teacher = torch.tensor([1.0, 0.0])
    inverted = sources.distillation_loss(torch.tensor([0.0, 1.0]), teacher, [2], 0.1, 0.1)
    tied = sources.distillation_loss(torch.tensor([0.5, 0.5]), teacher, [2], 0.1, 0.1)
    assert float(inverted) > float(tied) > 0.0
