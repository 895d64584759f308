"""A saved hybrid store's BM25 ``token_pattern`` runs only when docs/hybrid.md gives it or the caller names it.

``hybrid.json``'s ``bm25.token_pattern`` (no checksum covers it) is run on every document and query: a folder
naming ``(?:\\w+\\s?)+!`` loaded with a warning, and a 24-character query then took 9 s holding the GIL.
``KLHybridStore.load`` now refuses a saved pattern that is not one the documentation gives unless it is passed as
``token_pattern=`` (which must then equal it); documented patterns load as before.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bm25s")

from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import BM25_TOKEN_PATTERN, HybridFormatError, KLHybridStore

REDOS = r"(?:\w+\s?)+!"
TEXTS = ["tea leaves", "black coffee"]


def _g(n: int, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(rng.normal(size=(n, 4)), rng.uniform(0.5, 1.5, size=(n, 4)))


def _saved(tmp_path: Path, name: str = "s", **kw: Any) -> Path:
    store = KLHybridStore(fusion="rrf", stemmer=None, **kw)
    store.add(TEXTS, gaussians=_g(2), ids=["a", "b"])
    return store.save(tmp_path / name)


def _set_pattern(folder: Path, pattern: str) -> None:
    path = folder / "hybrid.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["bm25"]["token_pattern"] = pattern
    path.write_text(json.dumps(config), encoding="utf-8")


def test_a_saved_pattern_the_docs_do_not_give_is_refused_before_any_search(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    _set_pattern(folder, REDOS)  # an edited hybrid.json: the files' checksums still match
    started = time.monotonic()
    with pytest.raises(HybridFormatError, match=r"'bm25\.token_pattern' is .*not one docs/hybrid\.md gives") as info:
        KLHybridStore.load(folder)
    assert repr(REDOS) in str(info.value) and "KLHybridStore.load(path, token_pattern=...)" in str(info.value)
    assert time.monotonic() - started < 5


def test_a_pattern_of_your_own_loads_when_passed_to_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    own = r"[a-z]+"
    folder = _saved(tmp_path, token_pattern=own)
    with pytest.raises(HybridFormatError, match=r"\[a-z\]\+"):
        KLHybridStore.load(folder)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        store = KLHybridStore.load(folder, token_pattern=own)
    assert not caplog.records
    hit = store.search("coffee", k=1, query_gaussians=_g(1, seed=3))[0]
    assert hit.id == "b" and hit.bm25 > 0
    again = store.save(tmp_path / "again")  # the pattern is kept, and the copy needs it too
    assert json.loads((again / "hybrid.json").read_text(encoding="utf-8"))["bm25"]["token_pattern"] == own
    KLHybridStore.load(again, token_pattern=own)


def test_a_pattern_passed_to_load_must_be_the_saved_one(tmp_path: Path) -> None:
    folder = _saved(tmp_path, token_pattern=r"[a-z]+")
    with pytest.raises(HybridFormatError, match=r"is '\[a-z\]\+', not the token_pattern= given to load \('\\\\w\+'\)"):
        KLHybridStore.load(folder, token_pattern=r"\w+")
    default = _saved(tmp_path, "d")
    with pytest.raises(HybridFormatError, match="not the token_pattern= given to load"):
        KLHybridStore.load(default, token_pattern=r"[a-z]+")
    assert len(KLHybridStore.load(default, token_pattern=BM25_TOKEN_PATTERN)) == 2


def test_documented_patterns_load_without_token_pattern(tmp_path: Path) -> None:
    marks = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me"))
    cjk = r"[\u3040-\u30ff\u3400-\u9fff\u0e00-\u0e7f]"
    documented = [BM25_TOKEN_PATTERN, r"(?u)\b\w\w+\b", rf"{cjk}|\w+", rf"\w[\w{marks}]*", rf"{cjk}|\w[\w{marks}]*"]
    for i, pattern in enumerate(documented):
        store = KLHybridStore.load(_saved(tmp_path, f"p{i}", token_pattern=pattern))
        assert store.search("coffee", k=1, query_gaussians=_g(1, seed=3))[0].id == "b"


def test_a_saved_pattern_matching_the_empty_string_loads_when_passed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _saved(tmp_path)
    _set_pattern(folder, r"\w*")  # accepted by earlier releases' constructor
    with pytest.raises(HybridFormatError, match="not one docs/hybrid.md gives"):
        KLHybridStore.load(folder)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.hybrid"):
        store = KLHybridStore.load(folder, token_pattern=r"\w*")
    assert any("matches the empty string" in r.getMessage() for r in caplog.records)
    assert store.search("coffee", k=1, query_gaussians=_g(1, seed=3))[0].bm25 > 0


@pytest.mark.parametrize("given", [5, b"\\w+", ["\\w+"]])
def test_token_pattern_given_to_load_must_be_a_str(tmp_path: Path, given: Any) -> None:
    with pytest.raises(TypeError, match=rf"token pattern as a str, or None; got {type(given).__name__}$"):
        KLHybridStore.load(tmp_path / "nowhere", token_pattern=given)
