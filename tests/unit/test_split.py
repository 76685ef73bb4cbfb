from ragtune.stages.data.split import assign_split, choose_eval_documents, document_groups, leaking_documents


def _queries() -> list[dict]:
    qs = [{"qid": f"h{i}", "doc_ids": [f"d{i}"], "origin": "human"} for i in range(20)]
    qs.append({"qid": "multi", "doc_ids": ["d3", "d7"], "origin": "human"})
    qs += [{"qid": f"s{i}", "doc_ids": [f"d{i % 30}"], "origin": "synthetic"} for i in range(60)]
    return qs


def test_groups_join_documents_sharing_a_query() -> None:
    groups = document_groups([f"d{i}" for i in range(10)], [{"doc_ids": ["d3", "d7"]}, {"doc_ids": ["d7", "d9"]}])
    assert ["d3", "d7", "d9"] in groups and len(groups) == 8


def test_no_document_gives_positives_to_both_splits() -> None:
    docs = [f"d{i}" for i in range(30)]
    human = [q for q in _queries() if q["origin"] == "human"]
    eval_docs = choose_eval_documents(docs, human, 0.5, seed=1, from_labelled=True)
    assert eval_docs <= {f"d{i}" for i in range(20)}  # drawn among documents the human questions cite
    assert {"d3", "d7"} <= eval_docs or not ({"d3", "d7"} & eval_docs)  # linked documents move together
    queries = assign_split(_queries(), eval_docs)
    assert not leaking_documents(queries)
    assert {q["split"] for q in queries} == {"train", "eval"}
    assert 8 <= len(eval_docs) <= 12


def test_leak_detector_fails_on_a_shared_document() -> None:
    leaky = [{"doc_ids": ["d1"], "split": "train"}, {"doc_ids": ["d1", "d2"], "split": "eval"}]
    assert leaking_documents(leaky) == {"d1"}


def test_straddling_query_is_dropped_not_leaked() -> None:
    queries = assign_split([{"qid": "x", "doc_ids": ["a", "b"]}, {"qid": "y", "doc_ids": ["a"]}], {"a"})
    assert [(q["qid"], q["split"]) for q in queries] == [("y", "eval")]


def test_split_is_reproducible_and_seed_dependent() -> None:
    docs = [f"d{i}" for i in range(30)]
    a = choose_eval_documents(docs, _queries(), 0.3, seed=5, from_labelled=False)
    assert a == choose_eval_documents(docs, _queries(), 0.3, seed=5, from_labelled=False)
    assert a != choose_eval_documents(docs, _queries(), 0.3, seed=6, from_labelled=False)
