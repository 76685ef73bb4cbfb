"""Reranker recipes: the mean-pool head, the warm start, random negatives, listwise losses and the learning curve.

Every recipe trains the tiny cross-encoder for real: parameters must move and the loss must fall.
"""

import random
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer

from ragtune.pipeline.config import CrossEncoderConfig, RerankConfig
from ragtune.pipeline.pseudo_queries import inverse_cloze_queries, pick_sentence
from ragtune.stages.rerank.curve import BestPoint, DevCandidates, DevCurveCallback, curve_point, curve_steps
from ragtune.stages.rerank.model import build_cross_encoder
from ragtune.stages.rerank.negatives import draw_random_negatives
from ragtune.stages.rerank.train import build_loss, build_training_args, build_training_columns
from ragtune.stages.rerank.warm_start import distillation_columns

pytestmark = pytest.mark.slow

TEXTS = {
    "p1": "heron failover drains the primary queue",
    "p2": "kestrel badge readers sync at midnight",
    "n1": "the cafeteria opens at eight",
    "n2": "parking permits renew each spring",
    "n3": "the wiki theme is dark blue",
}
CORPUS = {cid: {"id": cid, "doc_id": cid, "start": 0, "end": 9, "text": t} for cid, t in TEXTS.items()}
ROWS = [
    {"query": "how does heron fail over", "positives": ["p1"], "relevance": {"p1": 2}, "negatives": ["n1", "n2"]},
    {"query": "when do badge readers sync", "positives": ["p2"], "relevance": {"p2": 2}, "negatives": ["n3", "n1"]},
]


def _train(model: CrossEncoder, columns: dict, loss_name: str, tmp_path, steps: int = 12) -> list[float]:
    # fp32: the losses' mechanics are checked the same way on machines with and without native bf16 math
    cfg = RerankConfig(
        batch_size=2,
        learning_rate=5e-3,
        max_steps=steps,
        cross_encoder={"head_learning_rate": 2e-2},
        trainer={"bf16": False},
    )
    args = build_training_args(cfg, str(tmp_path / "ckpt"), seed=0)
    args.warmup_steps = 0
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(columns), loss=build_loss(model, loss_name, columns)
    )
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _snapshot(model: CrossEncoder) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_mean_pool_head_starts_at_zero_and_saves_as_a_plain_cross_encoder(tiny_bert_dir, tmp_path) -> None:
    cfg = CrossEncoderConfig(start_from="base_model", head="mean_pool", base_model=str(tiny_bert_dir), max_length=64)
    model = build_cross_encoder(cfg, tmp_path)
    assert model.num_labels == 1 and model.max_seq_length == 64
    pairs = [("how does heron fail over", TEXTS["p1"]), ("how does heron fail over", TEXTS["n1"])]
    assert model.predict(pairs, activation_fn=torch.nn.Identity()).tolist() == [0.0, 0.0]  # cannot reorder yet
    with torch.no_grad():
        model[2].linear.weight.fill_(0.1)
    model.save_pretrained(str(tmp_path / "saved"))
    reloaded = CrossEncoder(str(tmp_path / "saved"))
    assert torch.allclose(torch.as_tensor(reloaded.predict(pairs)), torch.as_tensor(model.predict(pairs)))


def test_start_from_the_tuned_embedder_loads_its_encoder(tiny_bert_dir, tmp_path) -> None:
    cfg = CrossEncoderConfig(start_from="tuned_embedder", head="classifier", base_model="not/used")
    model = build_cross_encoder(cfg, tiny_bert_dir)
    base = CrossEncoder(str(tiny_bert_dir), num_labels=1)
    name = "0.model.bert.embeddings.word_embeddings.weight"
    assert torch.equal(dict(model.named_parameters())[name], dict(base.named_parameters())[name])


@pytest.mark.parametrize(
    ("loss_name", "head"),
    [("bce", "mean_pool"), ("lambda", "mean_pool"), ("listnet", "classifier"), ("margin_mse", "mean_pool")],
)
def test_each_recipe_trains_parameters_move_and_loss_falls(tiny_bert_dir, tmp_path, loss_name, head) -> None:
    torch.manual_seed(0)
    model = build_cross_encoder(
        CrossEncoderConfig(start_from="base_model", head=head, base_model=str(tiny_bert_dir), max_length=64), tmp_path
    )
    if loss_name == "margin_mse":  # the warm start: the teacher's scores over each query's candidates
        ids = [["p1", "n1", "n2"], ["p2", "n3", "n1"]]
        columns = distillation_columns([r["query"] for r in ROWS], ids, [[0.9, 0.2, 0.1]] * 2, CORPUS, "margin_mse")
    else:
        columns = build_training_columns(ROWS, CORPUS, loss_name, 2)
    before = _snapshot(model)
    losses = _train(model, columns, loss_name, tmp_path)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "encoder" in n or "bert" in n)  # the encoder
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_mse_warm_start_fits_the_teacher_scores(tiny_bert_dir, tmp_path) -> None:
    torch.manual_seed(0)
    cfg = CrossEncoderConfig(start_from="base_model", head="mean_pool", base_model=str(tiny_bert_dir), max_length=64)
    model = build_cross_encoder(cfg, tmp_path)
    columns = distillation_columns(["how does heron fail over"], [["p1", "n1"]], [[0.9, 0.1]], CORPUS, "mse")
    assert columns["label"] == pytest.approx([18.0, 2.0])
    losses = _train(model, columns, "mse", tmp_path, steps=15)
    assert losses[-1] < losses[0]
    scores = model.predict([("how does heron fail over", TEXTS["p1"]), ("how does heron fail over", TEXTS["n1"])])
    assert scores[0] > scores[1]


def test_random_negatives_are_never_labelled_or_neighbours_and_are_trained_on() -> None:
    corpus = [
        {"id": "pos", "doc_id": "d", "start": 0, "end": 100},
        {"id": "neighbour", "doc_id": "d", "start": 90, "end": 190},
        {"id": "graded", "doc_id": "e", "start": 0, "end": 50},
        *({"id": f"x{i}", "doc_id": f"f{i}", "start": 0, "end": 50} for i in range(6)),
    ]
    drawn = draw_random_negatives(corpus, {"pos": 2, "graded": 1}, [corpus[0]], ["x0"], 4, random.Random(1))
    ids = [c["id"] for c in drawn]
    assert len(ids) == 4 == len(set(ids)) and not {"pos", "neighbour", "graded", "x0"} & set(ids)
    # Fewer eligible chunks than asked: all of them, no repeats, and the draw ends.
    assert len(draw_random_negatives(corpus, {"pos": 2}, [corpus[0]], [], 50, random.Random(1))) == 7
    rows = [{**ROWS[0], "random_negatives": ["n3"]}]
    assert build_training_columns(rows, CORPUS, "bce", 2)["label"] == [1.0, 0.0, 0.0, 0.0]


class FakeCrossEncoder:
    def __init__(self, preferred: list[str]) -> None:
        self.preferred, self.training = preferred, True

    def predict(self, pairs, batch_size, show_progress_bar):
        return [-self.preferred.index(passage) for _, passage in pairs]

    def train(self) -> None:
        self.training = True


def test_the_learning_curve_measures_at_evenly_spaced_steps_on_the_main_process() -> None:
    chunks = [[{"text": "x"}, {"text": "rel"}]] * 2
    dev = DevCandidates(["q1", "q2"], [["x", "rel"]] * 2, [[0.9, 0.8]] * 2, chunks, [{"rel": 1}] * 2)
    point = curve_point(FakeCrossEncoder(["rel", "x"]), dev, 0)
    assert point["retriever"] == pytest.approx(1 / 1.5849625, rel=1e-6) and point["reranker"] == 1.0
    assert point["fused"] == point["reranker"] and point["weight"] > 0
    points: list[dict] = []
    callback = DevCurveCallback(FakeCrossEncoder(["x", "rel"]), dev, 2, "hard negatives", points)
    callback.on_train_begin(None, SimpleNamespace(max_steps=6), None)
    for step in range(1, 7):
        callback.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
    assert [p["step"] for p in points] == curve_steps(6, 2) == [3, 6]
    assert all(p["phase"] == "hard negatives" and p["weight"] == 0.0 for p in points)
    callback.on_step_end(None, SimpleNamespace(global_step=6, is_world_process_zero=False), None)
    assert len(points) == 2


def test_inverse_cloze_queries_skip_held_out_documents_and_are_seeded() -> None:
    long = "Heron drains the primary queue before it fails over. The standby router then takes the traffic."
    corpus = [{"id": f"c{i}", "doc_id": f"d{i % 3}", "text": long} for i in range(9)]
    corpus.append({"id": "short", "doc_id": "d0", "text": "Too short to ask."})
    rows = inverse_cloze_queries(corpus, {"d2"}, count=10, seed=3)
    assert {r["positives"][0] for r in rows} == {"c0", "c1", "c3", "c4", "c6", "c7"}  # d2 held out, "short" has none
    assert all(r["text"] in long and r["relevance"] == {r["positives"][0]: 2} for r in rows)
    assert rows == inverse_cloze_queries(corpus, {"d2"}, count=10, seed=3)
    assert len(inverse_cloze_queries(corpus, set(), count=4, seed=3)) == 4
    assert pick_sentence("Short one. Another short.", random.Random(0)) is None


class SignCrossEncoder(torch.nn.Module):
    """Prefers the relevant passage while its one weight is positive, the other one when it is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def predict(self, pairs, batch_size, show_progress_bar):
        return [float(self.w) * (1.0 if passage == "rel" else -1.0) for _, passage in pairs]


def test_the_best_curve_point_is_kept_when_training_overshoots() -> None:
    chunks = [[{"text": "x"}, {"text": "rel"}]] * 2
    dev = DevCandidates(["q1", "q2"], [["x", "rel"]] * 2, [[0.9, 0.8]] * 2, chunks, [{"rel": 1}] * 2)
    model, points, best = SignCrossEncoder(), [], BestPoint()
    callback = DevCurveCallback(model, dev, 2, "hard negatives", points, best)
    callback.on_train_begin(None, SimpleNamespace(max_steps=6), None)
    for step in range(1, 7):
        if step == 4:  # the run overshoots after the first point: now it ranks the wrong passage first
            model.w.data.fill_(-1.0)
        callback.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
    assert [p["fused"] > points[1]["fused"] for p in points] == [True, False]
    assert best.restore(model) == 3 and float(model.w) == 1.0
