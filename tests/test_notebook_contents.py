"""What the committed notebooks say and show, read from the stored files (nothing is executed here).

nbmake (`pytest notebooks`) checks that they run and tests/test_docs.py that the outputs of 01 to 03 are
current, numbers masked; these tests check the claims, numbers, labels and settings a reader relies on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kl_retrievers.evaluation import load_per_query

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: The post-retrieval predictors that notebook 05 compares (its ``POST``).
POST = ["max_score", "nqc", "gap12", "wig"]
COLLECTIONS = ["scifact", "nfcorpus-preprocessed", "cranfield", "trec-dl21-passage-pooled"]


def read(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((REPO / "notebooks" / name).read_text())
    return result


def source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def stdout(cell: dict[str, Any]) -> str:
    return "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for o in cell.get("outputs", [])
        if o["output_type"] == "stream" and o["name"] == "stdout"
    )


def code_cell_printing(nb: dict[str, Any], needle: str) -> int:
    """The index of the one code cell whose stored stdout contains ``needle``."""
    found = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and needle in stdout(c)]
    assert len(found) == 1, f"{len(found)} cells print {needle!r}"
    return found[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_have_no_stderr(path: Path) -> None:
    """A warning or a log line in a saved output is noise on the docs site (or a stale output)."""
    for number, cell in enumerate(json.loads(path.read_text())["cells"]):
        for output in cell.get("outputs", []):
            assert not (output["output_type"] == "stream" and output["name"] == "stderr"), (
                f"{path.name}, cell {number} shows stderr: {output['text']!r}"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_leave_no_temporary_folders(path: Path) -> None:
    """tempfile.mkdtemp() folders outlive the kernel; TemporaryDirectory() removes them."""
    code = "\n".join(source(c) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert "mkdtemp(" not in code
    kept = len(re.findall(r"= tempfile\.TemporaryDirectory\(", code))  # not in a with block
    assert code.count(".cleanup()") >= kept


#: What each notebook needs beyond the core install, as its opening cell's `pip install ...` names it.
NEEDS = {
    "02_langchain_rag.ipynb": ["langchain-community"],
    "03_llama_index.ipynb": ["kl-retrievers[llama-index]"],
    "04_train_your_own.ipynb": ["kl-retrievers[train,eval]"],
    "05_uncertainty.ipynb": ["matplotlib"],
}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebooks_name_what_they_need_to_install(name: str) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.optional-dependencies\]\n(.*?)^\[", pyproject, re.M | re.S)
    assert section
    extras = set(re.findall(r"^([\w-]+) *=", section.group(1), re.M))
    required = set(re.findall(r'"([A-Za-z0-9][\w.-]*)(?:\[[\w,-]*\])?(?:[<>=!~;][^"]*)?"', section.group(1)))
    opening = source(read(name)["cells"][0])
    named = [t.strip('"') for line in re.findall(r"`pip install ([^`]+)`", opening) for t in line.split()]
    assert named == NEEDS[name], f"{name}: its opening cell names {named}"
    for package in named:
        match = re.fullmatch(r"kl-retrievers\[([\w,-]+)\]", package)
        if match:
            assert set(match.group(1).split(",")) <= extras, f"{name}: {package}: no such extra"
        else:
            assert package in required, f"{name}: {package} is not required by pyproject.toml"


def test_quick_start_query_scores_the_same_in_the_matrix_and_the_store() -> None:
    """Queries are encoded one at a time, so the bees query's -KL in the matrix (a batch of two queries) is
    what the store's search (one query) returns; the text after it says so."""
    nb = read("01_quick_start.ipynb")
    matrix = stdout(nb["cells"][code_cell_printing(nb, "max |rewrite - exact|")])
    in_matrix = float(re.match(r"\[\[\s*(-?[\d.]+)", matrix).group(1))  # type: ignore[union-attr]
    search = stdout(nb["cells"][code_cell_printing(nb, "  bees  ")])
    in_store = float(re.search(r"^\s*(-?[\d.]+)\s+bees\s", search, re.M).group(1))  # type: ignore[union-attr]
    assert abs(in_matrix - in_store) < 1.5e-4, (in_matrix, in_store)
    text = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "encoded one at a time" in text


def test_train_notebook_gives_its_cells_more_than_nbmakes_default_time() -> None:
    """Its training cell took 255 s of nbmake's default 300 s on a loaded machine; nbmake reads this."""
    assert read("04_train_your_own.ipynb")["metadata"]["execution"]["timeout"] >= 900


def newest_test_records() -> dict[tuple[str, str], dict[str, Any]]:
    lines = (REPO / "runs" / "qpp" / "qpp.jsonl").read_text().splitlines()
    return {(r["model"], r["collection"]): r for r in map(json.loads, filter(str.strip, lines)) if r["split"] == "test"}


def test_uncertainty_quintiles_compare_scifacts_own_best_baseline() -> None:
    """The SciFact chart's baseline is SciFact's best post-retrieval predictor, not the best by the mean over
    four collections (max_score by mean; gap12 on SciFact)."""
    predictors = newest_test_records()[("minilm-gauss-soup", "scifact")]["qpp"]["predictors"]
    best = max(POST, key=lambda n: predictors[n]["tau"])
    nb = read("05_uncertainty.ipynb")
    header = stdout(nb["cells"][code_cell_printing(nb, "quintile (1 = predicted worst)")]).splitlines()[0]
    assert [n for n in POST if n in header] == [best], header
    assert "(best baseline)" not in header


def test_uncertainty_notebook_shows_pearson_r_from_the_logs() -> None:
    """The paper reports a Pearson r (about 0.27); the notebook shows the default's, per collection and mean."""
    records = newest_test_records()
    rs = []
    for collection in COLLECTIONS:
        per_query = load_per_query(REPO / records[("minilm-gauss-soup", collection)]["per_query_file"])[0]
        qids = sorted(per_query)
        u = np.array([per_query[q]["uncertainty"] for q in qids])
        y = np.array([per_query[q]["ndcg@10"] for q in qids])
        rs.append(float(np.corrcoef(-u, y)[0, 1]))
    nb = read("05_uncertainty.ipynb")
    shown = stdout(nb["cells"][code_cell_printing(nb, "Pearson r")])
    mean = re.search(r"^mean\s+Pearson r ([+-][\d.]+)", shown, re.M)
    assert mean and float(mean.group(1)) == pytest.approx(np.mean(rs), abs=5e-4), shown


def test_uncertainty_notebook_explains_the_off_topic_confidence() -> None:
    """An off-topic query above DEFAULT_MIN_CONFIDENCE on a 12-document store needs a word and a pointer."""
    nb = read("05_uncertainty.ipynb")
    at = code_cell_printing(nb, "'something about the sea'")
    after = nb["cells"][at + 1]
    assert after["cell_type"] == "markdown"
    text = source(after)
    assert "min_confidence" in text and "hybrid.md#abstention" in text and "tiny stores" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_links_into_the_repository_name_real_files_and_headings(path: Path) -> None:
    """The docs site and GitHub both render the notebooks: links into the repository are absolute."""
    prefix = "https://github.com/kl-retrievers/kl-retrievers/blob/main/"
    text = "\n".join(source(c) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        assert link.startswith(("https://", "http://")), f"{path.name}: relative link {link!r}"
        if not link.startswith(prefix):
            continue
        file, _, heading = link[len(prefix) :].partition("#")
        assert (REPO / file).is_file(), f"{path.name}: {link} names no file"
        if heading:
            slugs = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", (REPO / file).read_text(), re.M)
            }
            assert heading in slugs, f"{path.name}: {link}: no heading #{heading} in {file}"


def test_uncertainty_notebook_says_it_needs_a_checkout() -> None:
    """05 reads the logs committed under runs/qpp/, which an installed package does not ship."""
    opening = source(read("05_uncertainty.ipynb")["cells"][0])
    assert "checkout of the repository" in opening and "`notebooks/`" in opening, opening


def test_uncertainty_notebook_says_which_per_query_file_it_reads() -> None:
    """Older qpp.jsonl lines of a model, collection and split name one shared file (each such run rewrote it); the
    comment on ``per_query_of`` must not claim that each run has its own."""
    records = [json.loads(line) for line in (REPO / "runs" / "qpp" / "qpp.jsonl").read_text().splitlines() if line]
    files = [(r["model"], r["collection"], r["per_query_file"]) for r in records if r["split"] == "test"]
    shared = len(files) > len(set(files))  # the same model and collection naming one file twice
    code = "\n".join(source(c) for c in read("05_uncertainty.ipynb")["cells"] if c["cell_type"] == "code")
    assert "def per_query_of" in code
    if shared:
        assert "each run has its own" not in code
        assert "one shared file" in code


def test_langchain_notebook_names_every_key_the_kl_retriever_adds() -> None:
    """KLRetriever adds -KL, the query's uncertainty and its calibrated confidence (README.md and 03 say so)."""
    from kl_retrievers._confidence import CONFIDENCE_KEY

    nb = read("02_langchain_rag.ipynb")
    at = next(i for i, c in enumerate(nb["cells"]) if source(c).startswith("## What the KL retriever adds"))
    text, code = source(nb["cells"][at]), source(nb["cells"][at + 1])
    for key in ("neg_kl", "query_uncertainty", CONFIDENCE_KEY):
        assert f"`{key}`" in text, f"02: the text does not name {key}"
        assert f"['{key}']" in code, f"02: the cell does not print {key}"


def test_train_notebook_says_similarity_is_an_argument_of_evaluate_model() -> None:
    """`kl-retrievers evaluate` has no --similarity flag: 04 says where ``similarity='neg_kl'`` is given."""
    from kl_retrievers.cli import build_parser

    with pytest.raises(SystemExit):  # argparse: unrecognized arguments
        build_parser().parse_args(["evaluate", "data", "--similarity", "neg_kl"])
    text = "\n".join(source(c) for c in read("04_train_your_own.ipynb")["cells"] if c["cell_type"] == "markdown")
    assert "evaluate_model(twin, dataset, similarity='neg_kl')" in text
    assert "no `--similarity` flag" in text
