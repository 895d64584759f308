"""What the docs say about saved store versions, tombstones, the IVF build, threads, query encoding and the
Makefile, checked against the code where that is cheap (a docs read-through found each of these wrong).

* docs/upgrading.md: a replacing add (or a delete) below ``compact_threshold`` saves ``format_version`` 3,
  even for a store that was version 1; tombstones are kept up to the threshold's share of the rows.
* docs/faq.md: the IVF lists are trained at 8 x nlist documents, once; a single query is re-scored on one
  thread; a store loaded without an encoder gets the model's default token budgets; what copies an mmap index.
* docs/ann.md: an approximate store whose index is not built drops a deleted row at once; the probe figures
  say what they were measured on.
* docs/onnx.md, README.md, benchmarks/results_readme.py, docs/getting-started.md: claims with no command
  behind them, the paths that encode queries one at a time, what the test collections' models saw, the
  Makefile's targets and which scripts take ``--out``.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore
from kl_retrievers.store import _engines

REPO = Path(__file__).resolve().parents[1]


def _flat(path: str) -> str:
    """A page with its whitespace normalised (line breaks fall anywhere in a paragraph)."""
    return " ".join((REPO / path).read_text(encoding="utf-8").split())


def _gaussians(n: int, dim: int = 8, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, dim)).astype(np.float32)
    return Gaussians(mean, rng.uniform(0.5, 2.0, size=(n, dim)).astype(np.float32))


def _version(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["format_version"])


def test_a_replacing_add_saves_a_version_1_store_as_version_3(tmp_path: Path) -> None:
    """upgrading.md said "documents added and saved back keep version 1": a replacing add makes it 3."""
    store = KLStore(index_type="hnsw")  # 200 documents: no index built yet, no centre, so version 1
    store.add(gaussians=_gaussians(200), ids=[f"d{i}" for i in range(200)])
    store.save(tmp_path / "a")
    assert _version(tmp_path / "a") == 1
    loaded = KLStore.load(tmp_path / "a")
    loaded.add(gaussians=_gaussians(1, seed=1), ids=["d7"])  # replaces d7: a tombstone below the threshold
    loaded.save(tmp_path / "b")
    assert _version(tmp_path / "b") == 3
    page = _flat("docs/upgrading.md")
    assert "documents added (none replacing an existing id) and saved back keep version 1" in page
    assert "a delete or replacement not compacted yet makes it version 3 (`compact()` first)" in page
    assert "This version reads all three versions" in page and "reads both versions" not in page
    assert page.count(", or 3 with tombstones") == 2


def test_tombstones_up_to_the_threshold_share_are_saved(tmp_path: Path) -> None:
    """Exactly ``compact_threshold`` of the rows dead is kept (compaction needs more), as upgrading.md says."""
    store = KLStore(compact_threshold=0.25)
    store.add(gaussians=_gaussians(4), ids=["a", "b", "c", "d"])
    store.delete(["a"])  # 1 of 4 rows: the threshold's share, not more
    store.save(tmp_path / "s")
    assert _version(tmp_path / "s") == 3
    page = _flat("docs/upgrading.md")
    assert "no more than its `compact_threshold` share of the rows" in page
    assert "fewer than its `compact_threshold`" not in page


def test_ivf_lists_are_trained_once_at_8_x_nlist() -> None:
    """faq.md: trained on the documents present when the store first reached 8 x nlist, not retrained later."""
    store = KLStore(index_type="ivf", nlist=4)
    store.add(gaussians=_gaussians(31), ids=[f"d{i}" for i in range(31)])
    assert not store.is_built
    store.add(gaussians=_gaussians(1, seed=1), ids=["d31"])
    assert store.is_built
    built = store.rebuild_count
    for copy in range(5):  # more documents, none with a norm above the index's bound M (that would rebuild it)
        store.add(gaussians=_gaussians(32), ids=[f"e{copy}-{i}" for i in range(32)])
    assert len(store) == 192 and store.rebuild_count == built
    page = _flat("docs/faq.md")
    assert "trained once, on the documents present when the store first reached 8 x nlist" in page
    assert "again only if a new document's norm exceeds the index's bound `M`" in page
    assert "call `store.rebuild()` once the store has grown well past that" in page


def test_a_single_query_is_rescored_on_one_thread() -> None:
    """faq.md said a search re-scores on up to 4 threads: a single query's block runs on the caller's thread."""
    seen: list[int] = []
    _engines._query_blocks(1, 1 << 24, lambda s, e: seen.append(threading.get_ident()))
    assert seen == [threading.get_ident()]
    page = _flat("docs/faq.md")
    assert "A large batch of queries is re-scored on up to 4 threads (a single query uses one)" in page
    assert "A search re-scores its candidates on up to 4 threads" not in page


def test_faq_says_what_copies_a_memory_mapped_index_and_how_to_keep_token_budgets() -> None:
    """The first write that changes the index copies it (not a tombstone delete or a save); a store loaded
    without an encoder uses the model's default budgets (the encoder with its budgets must be passed)."""
    page = _flat("docs/faq.md")
    assert "the first write that changes the index (an add, a compaction, a rebuild) copies it into memory" in page
    assert "a tombstone delete or a save leaves it mapped" in page
    assert "loads the model with the model's default budgets, not the ones it was built with" in page
    assert "`KLStore.load(path, encoder=encoder)`" in page
    assert "with its own budgets: set them again" not in page


def test_an_unbuilt_approximate_store_drops_a_deleted_row_at_once(tmp_path: Path) -> None:
    """ann.md said a delete only marks a tombstone: an IVF store without its index yet drops the row."""
    store = KLStore(index_type="ivf", nlist=64)
    store.add(gaussians=_gaussians(100), ids=[str(i) for i in range(100)])
    assert not store.is_built
    store.delete(["3"])
    store.save(tmp_path / "s")
    assert _version(tmp_path / "s") == 1
    assert np.load(tmp_path / "s" / "mean.npy").shape[0] == 99
    assert "(an approximate store whose index is not built yet drops the row at once)" in _flat("docs/ann.md")


def test_ann_probe_figures_say_what_they_were_measured_on() -> None:
    page = _flat("docs/ann.md")
    assert page.count("unlogged, probe of 2026-12-06: 100,000") == 3
    assert "recall@10 0.75, against 0.82 after one `rebuild()` (unlogged, probe of 2026-12-06" in page


def test_onnx_page_names_every_path_that_encodes_queries_singly_and_no_unbacked_scores() -> None:
    page = _flat("docs/onnx.md")
    assert not re.search(r"-0\.2288|-0\.2159|-0\.2142", page)
    for path in (
        "LangChain's `KLEmbeddings.encode_queries`",
        "`kl-retrievers encode ... --kind query`",
        "the bge-small int8 baseline (`kl-retrievers evaluate ... --baseline bge-small`)",
    ):
        assert path in page, path


def test_readme_and_results_notes_say_what_the_models_saw() -> None:
    readme = _flat("README.md")
    assert "which no model saw in training" not in readme
    assert "queries and judgements no model was trained on" in readme
    assert "MS MARCO, the source of TREC DL21's passages" in readme
    assert "it was chosen on SciFact's training split" in readme
    notes = " ".join((REPO / "benchmarks" / "results_readme.py").read_text(encoding="utf-8").split())
    assert "saw MS MARCO, which TREC DL21's passages come from" in notes.replace('" "', "")


def test_getting_started_lists_every_make_target_and_the_scripts_that_take_out() -> None:
    page = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    targets = re.findall(r"^([a-zA-Z_-]+):.*## ", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    missing = [t for t in targets if t != "help" and not re.search(rf"^\| `make {re.escape(t)}` \|", page, re.M)]
    assert not missing, f"the targets table misses {missing}"
    clean = next(line for line in page.splitlines() if line.startswith("| `make clean` |"))
    assert "site/" in clean  # it says `make clean` leaves the built site
    flat = " ".join(page.split())
    assert "each answers `--help` and takes `--out`" not in flat
    named = re.search(r"regenerate committed files \(([^)]*)\) each answer `--help`", flat)
    assert named, "the sentence naming the scripts that take --out"
    scripts = re.findall(r"`([\w.]+\.py)`", named.group(1))
    with_out = sorted(  # _common.py is the model builds' shared parser (parse_out), not a script
        p.name
        for p in (REPO / "scripts").glob("*.py")
        if not p.name.startswith("_") and any(s in p.read_text(encoding="utf-8") for s in ('"--out"', "parse_out("))
    )
    assert sorted(scripts) == with_out
