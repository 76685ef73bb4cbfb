"""ragtune: adapt a whole RAG stack (embedder, reranker, generator) to one domain's documents.

Layers, bottom to top (docs/architecture.md; ``tests/unit/test_layering.py`` keeps them):

- :mod:`ragtune.pipeline` — the core library: config, run directory, models, retrieval, ranking, the RAFT
  format, the promotion gate, the LLM backends. Imports no other layer.
- :mod:`ragtune.stages` — one package per training stage (data, embed, rerank, gpl, raft); each imports the
  core and itself only.
- :mod:`ragtune.eval` — the evaluation harness; imports the core only.
- :mod:`ragtune.app` — what users run and wire in: the ``ragtune`` CLI, the LlamaIndex query engine, the
  OpenAI-compatible server, LangChain, export, vector stores. Nothing below imports it.
"""
