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


def test_score_shift_counts_reordered_lists_and_the_mean_move(sources) -> None:
    before = [[0.0, -1.0, -2.0], [0.0, -1.0, -2.0]]
    assert sources.score_shift(before, before) == (0.0, 0.0)
    changed, shift = sources.score_shift(before, [[0.1, -0.9, -1.9], [-1.5, -1.0, -2.0]])
    assert changed == 0.5  # the first list moved but kept its order; the second one's top two swapped
    assert shift == pytest.approx((0.1 * 3 + 1.5) / 6)


@pytest.fixture
def query_side(sources, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    from ragtune.pipeline.generator import load_generator

    torch.manual_seed(0)
    lm, tokenizer = load_generator(str(tiny_llama_dir), None, "float32")
    lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    model = sources.QuerySideReranker(lm, tokenizer, prefix_cache_mb=64)
    return model.eval()


LISTS = [
    {"query": "when is the billing engine switched over", "passages": ["The billing engine switches over on Friday.",
                                                                        "Payroll runs on the first Monday."]},
    {"query": "who owns payroll", "passages": ["Payroll is owned by the finance team.",
                                               "The standby site is in the north."]},
]  # fmt: skip


def test_query_side_prefixes_are_the_frozen_lms_and_only_the_query_reads_the_adapter(query_side) -> None:
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker

    for name, p in query_side.lm.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    pairs = [(r["query"], p) for r in LISTS for p in r["passages"]]
    moved = query_side.predict(pairs)  # reads (and keeps) every passage's prefix, with the adapter on the model
    prefix = next(iter(query_side.prefixes._entries))
    with query_side.lm.disable_adapter():
        fresh = query_side.causal_lm().get_decoder()(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        base = QueryLikelihoodReranker(query_side.lm, query_side.tokenizer, prefix_cache_mb=0).eval().predict(pairs)
    kept = query_side.prefixes.get(prefix)
    assert torch.allclose(kept[-1][0], fresh.layers[-1].keys[0], atol=1e-5)  # computed with the adapter off
    assert moved != pytest.approx(base, abs=1e-4)  # the query's own tokens do read it
    # the differentiable path gives the scores predict gives
    assert query_side.list_scores(LISTS).tolist() == pytest.approx(moved, abs=1e-4)


def test_query_side_training_moves_the_adapter_and_lowers_the_loss(sources, query_side) -> None:
    from types import SimpleNamespace

    before = {n: p.detach().clone() for n, p in query_side.named_parameters() if p.requires_grad}
    args = SimpleNamespace(steps=30, batch=2, learning_rate=1e-2, teacher_temperature=0.1, eval_every=10)
    losses, curve = sources.train_query_side(query_side, LISTS, args, seed=0, evaluate=lambda m, step: step)
    assert curve == [10, 20]
    assert sum(losses[-5:]) < sum(losses[:5])
    changed = [n for n, p in query_side.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora" in n for n in changed)


def test_the_untrained_table_from_batched_scores_equals_the_training_forward(sources, tiny_llama_dir) -> None:
    from ragtune.pipeline.generator import load_generator
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker
    from ragtune.stages.rerank.likelihood import ListCollator

    model = QueryLikelihoodReranker(*load_generator(str(tiny_llama_dir), None, "float32")).eval()
    with torch.no_grad():
        out = model(**ListCollator(model)(LISTS))
    loss, first = sources.listwise_loss(model, LISTS, teacher_temperature=0.1)
    assert loss == pytest.approx(float(out["loss"]), rel=1e-4)
    expected = [int(row.argmax()) == 0 for row in out["scores"].split([2, 2])]
    assert first == sum(expected) / 2
