"""Inverse-cloze pairs for stage 1: the sentence leaves its passage, held-out documents are never drawn."""

from ragtune.pipeline.pseudo_queries import inverse_cloze_pairs, without_sentence
from ragtune.stages.embed.pairs import attach_negatives, pair_keys

CORPUS = [
    {"id": f"c{i}", "doc_id": f"d{i % 3}", "text": f"Note {i} opens. Heron berth {i} routes the night orders. End."}
    for i in range(9)
]


def test_pairs_take_the_sentence_out_and_skip_held_out_documents() -> None:
    pairs = inverse_cloze_pairs(CORPUS, {"d0"}, 100, seed=3)
    assert len(pairs) == 6  # the three chunks of d0 are held out
    text_of = {c["id"]: c["text"] for c in CORPUS}
    for p in pairs:
        assert p["positive_id"] not in {"c0", "c3", "c6"}
        assert p["anchor"] in text_of[p["positive_id"]] and p["anchor"] not in p["positive"]
        assert p["positive"] == without_sentence(text_of[p["positive_id"]], p["anchor"])
        assert pair_keys(p)  # batches can keep its positive out of other pairs' way
    assert inverse_cloze_pairs(CORPUS, set(), 2, seed=3) == inverse_cloze_pairs(CORPUS, set(), 100, seed=3)[:2]


def test_triplet_negatives_for_pairs_without_a_query_row() -> None:
    chunks = {c["id"]: c for c in CORPUS}
    pairs = inverse_cloze_pairs(CORPUS, set(), 4, seed=0)
    rows, drawn = attach_negatives(pairs, [], chunks, seed=0)
    assert drawn == 4 and all(r["negative_id"] != r["positive_id"] for r in rows)


def test_a_cap_above_the_chunk_count_takes_more_sentences_round_by_round() -> None:
    text = "Heron berth {i} routes the night orders. Ledgerfish {i} renews all the leases."
    two = [{"id": f"c{i}", "doc_id": "d", "text": text.format(i=i)} for i in range(3)]
    pairs = inverse_cloze_pairs(two, set(), 5, seed=1)
    assert len(pairs) == 5 and len({p["qid"] for p in pairs}) == 5
    assert {p["positive_id"] for p in pairs[:3]} == {"c0", "c1", "c2"}  # every chunk once before any twice
    assert len(inverse_cloze_pairs(two, set(), 100, seed=1)) == 6  # one pair per sentence
