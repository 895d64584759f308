# kl-retrievers: set-up, demo, checks and tests. Everything installs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS := dev,eval,torch,train,onnx,langchain,llama-index,hybrid,milvus,ray,bge

.PHONY: help install demo test test-fast check lint typecheck docs bench-encode clean fuzz reliability torch-free-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a CPU build lies on disk here; an unpinned torch pulls a CUDA build. The core
	# install needs no torch; the [torch] extra (in EXTRAS, for training and the tests) brings it.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

## Lists every target whose rule line ends in a "## " note (keep each note to one line).
help: ## List the targets with one line each.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv (torch pinned first) with every extra, editable; again when pyproject.toml changes.

## The main job: index the bundled corpus with the default model and answer queries.
demo: install ## Index the bundled corpus with the default model and answer queries.
	$(BIN)/kl-retrievers demo

lint: install ## ruff check and ruff format --check of the package, tests, benchmarks and scripts.
	$(BIN)/ruff check kl_retrievers tests benchmarks scripts conftest.py
	$(BIN)/ruff format --check kl_retrievers tests benchmarks scripts conftest.py

typecheck: install ## mypy over kl_retrievers and tests (configured in pyproject.toml).
	$(BIN)/mypy

check: lint typecheck ## lint and typecheck.

## The documentation site (mkdocs-material + mkdocstrings), warnings are errors.
docs: install ## Build the documentation site into site/ (mkdocs --strict).
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: check docs torch-free-check ## check, docs, torch-free-check, then the whole test suite with the notebooks.
	$(BIN)/python -m pytest

## The newcomer's path from a built wheel, in a fresh torch-free venv: core + [langchain] (no torch, size
## <= 400 MB) runs docs/examples/langchain_quickstart.py and the README's LangChain block, then + [llama-index]
## runs the README's LlamaIndex block (a query engine over a folder of text files); offline, shipped ONNX graph.
torch-free-check: ## A built wheel in a fresh torch-free venv (needs a package index for its dependencies).
	PYTHON=$(PYTHON) .ci/torch_free_check.sh

## Every core, [langchain], [llama-index] and [hybrid] dependency pinned to the floor pyproject.toml declares
## (read from it), in a throwaway torch-free venv, then a smoke test of the installed package (load_model,
## KLStore, KLHybridStore, both adapters). Needs a package index with those releases; not part of `make test`.
## PYTHON names the venv's interpreter only (PYTHON=python3.10 needs no tomli there): the script runs on
## .venv's Python, or python3 before `make install`.
.PHONY: lowest-deps-check
lowest-deps-check: ## Every dependency at its declared floor in a throwaway venv, then a smoke test.
	$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) scripts/lowest_deps_check.py --python $(PYTHON)

## The suite without the integration tests (real MiniLM, data slices) and without the notebooks: the paths
## replace pyproject's testpaths, which include notebooks/ (--ignore does not drop a testpaths entry).
test-fast: install ## The tests without the integration tests and the notebooks (tests/ and the doctests).
	$(BIN)/python -m pytest -m "not integration" tests kl_retrievers

bench-encode: install ## Encoding throughput, quick run (benchmarks/encode.py --quick).
	$(BIN)/python benchmarks/encode.py --quick

## Stateful fuzz of KLStore against a dict model, every index type (slow hypothesis profile;
## the normal suite runs the same machines with the fast "ci" profile).
fuzz: install ## Stateful fuzz of KLStore, slow hypothesis profile.
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz_store.py -q -p no:cacheprovider

## The hostile-user probe behind docs/reliability.md (a few minutes; --quick in under two).
reliability: install ## The hostile-user probe behind docs/reliability.md.
	$(BIN)/python benchmarks/reliability.py

clean: ## Remove .venv, build outputs and tool caches.
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

## langchain-tests standard suites (VectorStore, Retrievers, Embeddings) for kl_retrievers.langchain.
.PHONY: test-standard
test-standard: install ## langchain-tests standard suites.
	$(BIN)/python -m pytest tests/standard -q
