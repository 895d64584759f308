# kl-retrievers: set-up, demo, checks and tests. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS := dev,eval,torch,train,onnx,langchain,llama-index,hybrid,milvus,ray,bge

.PHONY: install demo test test-fast check lint typecheck docs bench-encode clean fuzz reliability torch-free-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a CPU build lies on disk here; an unpinned torch pulls a CUDA build. The core
	# install needs no torch; the [torch] extra (in EXTRAS, for training and the tests) brings it.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

## The main job: index the bundled corpus with the default model and answer queries.
demo: install
	$(BIN)/kl-retrievers demo

lint: install
	$(BIN)/ruff check kl_retrievers tests benchmarks scripts conftest.py
	$(BIN)/ruff format --check kl_retrievers tests benchmarks scripts conftest.py

typecheck: install
	$(BIN)/mypy

check: lint typecheck

## The documentation site (mkdocs-material + mkdocstrings), warnings are errors.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: check docs torch-free-check
	$(BIN)/python -m pytest

## The newcomer's path from a built wheel, in a fresh torch-free venv: core + [langchain] (no torch, size
## <= 400 MB) runs docs/examples/langchain_quickstart.py and the README's LangChain block, then + [llama-index]
## runs the README's LlamaIndex block (a query engine over a folder of text files); offline, shipped ONNX graph.
torch-free-check:
	PYTHON=$(PYTHON) .ci/torch_free_check.sh

## Unit tests only (tiny random encoders, no real model).
test-fast: install
	$(BIN)/python -m pytest -m "not integration"

bench-encode: install
	$(BIN)/python benchmarks/encode.py --quick

## Stateful fuzz of KLStore against a dict model, every index type (slow hypothesis profile;
## the normal suite runs the same machines with the fast "ci" profile).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz_store.py -q -p no:cacheprovider

## The hostile-user probe behind docs/reliability.md (a few minutes; --quick in under two).
reliability: install
	$(BIN)/python benchmarks/reliability.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

## langchain-tests standard suites (VectorStore, Retrievers, Embeddings) for kl_retrievers.langchain.
.PHONY: test-standard
test-standard: install
	$(BIN)/python -m pytest tests/standard -q
