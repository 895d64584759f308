"""The stores' public surface: what they accept as an encoder, copies, hashing of their results, ``load``'s
options, the hybrid candidates' repr and what ``help()`` says about scores."""

from __future__ import annotations

import copy
import doctest
import inspect
import pickle
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kl_retrievers.store.faiss as faiss_module
from conftest import random_gaussians
from kl_retrievers import DeleteReport, Gaussians, KLStore, SearchResult, StoredDocument
from kl_retrievers.store import GaussianStore, MilvusKLStore

IDS = [f"d{i}" for i in range(6)]
TEXTS = ["the cat sat", "a dog ran", "green tea", "black rocks", "the sea", "a cat and a dog"]


def _hybrid_class() -> Any:
    pytest.importorskip("bm25s")
    from kl_retrievers.hybrid import KLHybridStore

    return KLHybridStore


def _filled_store() -> KLStore:
    store = KLStore()
    store.add(gaussians=random_gaussians(len(IDS), 4), ids=IDS)
    return store


class _QueriesOnly:
    """An encoder of queries only: enough for a store whose documents come as Gaussians."""

    name_or_path = "queries-only"

    def encode_queries(self, texts: list[str], **_: Any) -> Gaussians:
        return Gaussians(np.zeros((len(texts), 4)), np.ones((len(texts), 4)))


# ------------------------------------------------------------------ encoders
@pytest.mark.parametrize("kind", ["KLStore", "KLHybridStore", "MilvusKLStore"])
def test_a_dimension_passed_as_the_encoder_is_refused_at_construction_pointing_at_dim(kind: str) -> None:
    cls = {"KLStore": KLStore, "MilvusKLStore": MilvusKLStore}.get(kind) or _hybrid_class()
    with pytest.raises(
        TypeError, match=rf"encoder must be a Gaussian encoder .* or None; got int 384: .*{kind}\(dim=384\)"
    ):
        cls(384)


@pytest.mark.parametrize("bad", [3.5, [1, 2], object(), np.int64(7)])
def test_non_encoders_are_refused_wherever_an_encoder_is_taken(bad: Any, tmp_path: Path) -> None:
    folder = _filled_store().save(tmp_path / "s")
    store = KLStore()
    calls: list[Callable[[], Any]] = [
        lambda: KLStore(bad),
        lambda: KLStore(encoder=bad),
        lambda: KLStore.load(folder, bad),
        lambda: setattr(store, "encoder", bad),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=rf"encoder must be a Gaussian encoder .*got {type(bad).__name__} "):
            call()
    assert store.encoder is None


def test_the_hybrid_store_refuses_a_non_encoder_in_its_constructor_and_load(tmp_path: Path) -> None:
    hybrid = _hybrid_class()
    store = hybrid(fusion="rrf")
    store.add(TEXTS, gaussians=random_gaussians(len(TEXTS), 4), ids=IDS)
    folder = store.save(tmp_path / "h")
    for call in (lambda: hybrid(3.5), lambda: hybrid.load(folder, 3.5)):
        with pytest.raises(TypeError, match="encoder must be a Gaussian encoder .*got float 3.5"):
            call()


def test_a_langchain_embeddings_is_pointed_at_its_wrapper() -> None:
    class Embeddings:  # what LangChain's Embeddings has, and no encode_* method
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[0.0] for _ in texts]

    with pytest.raises(TypeError, match="EmbeddingsGaussianEncoder"):
        KLStore(Embeddings())  # type: ignore[arg-type]  # refused at run time


def test_encoders_and_none_are_still_taken(tiny_encoder: Any) -> None:
    assert KLStore().encoder is None
    assert KLStore(tiny_encoder).encoder is tiny_encoder
    queries_only = _QueriesOnly()  # an encoder of queries alone serves documents added as Gaussians
    store = KLStore(queries_only)
    store.add(gaussians=random_gaussians(len(IDS), 4), ids=IDS)
    assert len(store.search("a query", k=2)) == 2

    class Named:  # no method, but the name a save records: a stand-in some callers use for an encoder
        name_or_path = "some-model"

    assert KLStore(Named()).encoder.name_or_path == "some-model"


@pytest.mark.parametrize("part", ["backbone", "tokenizer"])
def test_a_hugging_face_model_or_tokenizer_is_refused_pointing_at_the_gaussian_encoder(
    tiny_encoder: Any, part: str
) -> None:
    bad = getattr(tiny_encoder, part)  # a BertModel / BertTokenizer: it has a name_or_path, and no encode method
    assert hasattr(bad, "name_or_path")
    for call in (lambda: KLStore(bad), lambda: KLStore(encoder=bad), lambda: MilvusKLStore(bad)):
        with pytest.raises(
            TypeError, match=rf"got {type(bad).__name__} .*Hugging Face.*load_model.*GaussianEncoder\.from_backbone"
        ):
            call()


def test_a_named_stand_in_is_taken_unless_it_looks_like_a_transformers_object() -> None:
    class Named:  # the name a save records, and nothing else
        name_or_path = "some-model"

    class Saver(Named):  # a transformers-like object: it saves or loads weights, it encodes no text
        def save_pretrained(self, folder: str) -> None:  # pragma: no cover - never called
            raise AssertionError

    class Loader(Named):
        @classmethod
        def from_pretrained(cls, name: str) -> Loader:  # pragma: no cover - never called
            raise AssertionError

    class SavingEncoder(Saver, _QueriesOnly):  # a Gaussian encoder that also saves: taken
        pass

    assert KLStore(Named()).encoder.name_or_path == "some-model"
    assert isinstance(KLStore(SavingEncoder()).encoder, SavingEncoder)
    for bad in (Saver(), Loader()):
        with pytest.raises(TypeError, match=rf"got {type(bad).__name__} .*Hugging Face"):
            KLStore(bad)


def test_a_llama_index_kl_embedding_is_pointed_at_its_encoder(tiny_encoder: Any) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers.llama_index import KLEmbedding

    embedding = KLEmbedding(tiny_encoder)
    with pytest.raises(TypeError, match=r"got KLEmbedding .*pass kl_embedding\.encoder"):
        KLStore(embedding)  # type: ignore[arg-type]  # refused at run time
    assert KLStore(embedding.encoder).encoder is tiny_encoder


# ------------------------------------------------------------------ copies
@pytest.mark.parametrize(
    ("how", "words"),
    [
        (copy.copy, "cannot be copied with copy.copy"),
        (copy.deepcopy, r"cannot be deep-copied \(copy.deepcopy\)"),
        (pickle.dumps, "cannot be pickled"),
    ],
)
def test_a_store_refuses_copies_and_pickles_pointing_at_save_and_load(how: Callable[[Any], Any], words: str) -> None:
    store = _filled_store()
    with pytest.raises(TypeError, match=rf"a KLStore {words}.*KLStore\.load\(store\.save\(path\)\)"):
        how(store)
    assert store.ids == IDS  # the original is untouched


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps])
def test_a_hybrid_store_refuses_copies_and_pickles(how: Callable[[Any], Any]) -> None:
    store = _hybrid_class()(fusion="rrf")
    store.add(TEXTS, gaussians=random_gaussians(len(TEXTS), 4), ids=IDS)
    with pytest.raises(TypeError, match=r"a KLHybridStore cannot be .*KLHybridStore\.load\(store\.save\(path\)\)"):
        how(store)


def test_every_store_backend_refuses_copies_and_a_backend_without_save_says_where_its_documents_are() -> None:
    assert MilvusKLStore.__copy__ is GaussianStore.__copy__
    assert MilvusKLStore.__reduce_ex__ is GaussianStore.__reduce_ex__
    store = object.__new__(MilvusKLStore)  # no connection: only the message is checked
    refusal = store._copy_refusal("copy.copy")
    assert "MilvusKLStore" in str(refusal)


def test_the_saved_and_loaded_copy_is_independent(tmp_path: Path) -> None:
    store = _filled_store()
    twin = KLStore.load(store.save(tmp_path / "s"))
    twin.add(gaussians=random_gaussians(1, 4, seed=1), ids=["new"])
    assert "new" not in store and len(store) == len(IDS)


# ------------------------------------------------------------------ result types
def _results() -> list[Any]:
    results: list[Any] = [
        SearchResult("d1", -1.0, "t", {"a": 1}),
        StoredDocument("d1", "t", {}),
        DeleteReport(["a"], []),
    ]
    try:
        from kl_retrievers.hybrid import HybridResult
    except ImportError:  # pragma: no cover - the hybrid module imports without its extra
        return results
    return [*results, HybridResult("d1", 0.8, "text", {}, -3.5, 2.0, 1, 4, 0.6, -1.2, "adaptive")]


@pytest.mark.parametrize("result", _results(), ids=lambda r: type(r).__name__)
def test_results_are_honestly_unhashable_and_still_equal_by_value(result: Any) -> None:
    hashes = True
    try:
        hash(result)
    except TypeError:
        hashes = False
    assert isinstance(result, Hashable) is hashes
    assert not hashes
    assert result == copy.deepcopy(result)


# ------------------------------------------------------------------ load's options
def test_load_options_are_keyword_only_as_in_the_hybrid_store() -> None:
    params = inspect.signature(KLStore.load).parameters
    assert params["mmap"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["verify_checksums"].kind is inspect.Parameter.KEYWORD_ONLY
    hybrid = inspect.signature(_hybrid_class().load).parameters
    assert hybrid["mmap"].kind is inspect.Parameter.KEYWORD_ONLY


def test_positional_load_options_still_work_with_a_deprecation_warning_naming_the_keyword(tmp_path: Path) -> None:
    folder = _filled_store().save(tmp_path / "s")
    with pytest.warns(DeprecationWarning, match=r"passing mmap by position is deprecated.*mmap=True") as caught:
        mapped = KLStore.load(folder, None, True)
    assert caught[0].filename == __file__  # the warning points at the caller
    assert isinstance(mapped._table.mean, np.memmap) and mapped.ids == IDS
    with pytest.warns(DeprecationWarning, match=r"mmap and verify_checksums.*mmap=False, verify_checksums=False"):
        assert KLStore.load(folder, None, False, False).ids == IDS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not isinstance(KLStore.load(folder, mmap=False, verify_checksums=False)._table.mean, np.memmap)


def test_an_option_given_twice_or_too_many_positional_arguments_are_refused(tmp_path: Path) -> None:
    folder = _filled_store().save(tmp_path / "s")
    with pytest.raises(TypeError, match="multiple values for argument 'mmap'"):
        KLStore.load(folder, None, False, mmap=True)
    with pytest.raises(TypeError, match="at most 4 positional arguments"):
        KLStore.load(folder, None, False, True, True)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("positional", "keywords", "option"),
    [
        ((True,), {"mmap": False}, "mmap"),  # the keyword repeating the default still clashes
        ((False,), {"mmap": False}, "mmap"),
        ((False, False), {"verify_checksums": True}, "verify_checksums"),
        ((True, True), {"mmap": True, "verify_checksums": True}, "mmap"),
    ],
)
def test_an_option_given_by_position_and_by_keyword_is_refused_whatever_the_keyword_says(
    tmp_path: Path, positional: tuple[bool, ...], keywords: dict[str, bool], option: str
) -> None:
    folder = _filled_store().save(tmp_path / "s")
    with pytest.raises(TypeError, match=f"multiple values for argument {option!r}"):
        KLStore.load(folder, None, *positional, **keywords)


def test_load_shows_its_plain_defaults_and_takes_them_when_nothing_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = inspect.signature(KLStore.load).parameters
    assert repr(params["mmap"].default) == "False" and repr(params["verify_checksums"].default) == "True"
    assert "mmap: 'bool' = False" in str(inspect.signature(KLStore.load))
    folder = _filled_store().save(tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not isinstance(KLStore.load(folder)._table.mean, np.memmap)
        assert isinstance(KLStore.load(folder, None, mmap=True)._table.mean, np.memmap)
    seen: list[Any] = []
    real = faiss_module._format.check_files

    def recording(folder: Path, files: dict[str, Any], verify_checksums: Any, *rest: Any) -> None:
        seen.append(verify_checksums)
        real(folder, files, verify_checksums, *rest)

    monkeypatch.setattr(faiss_module._format, "check_files", recording)
    KLStore.load(folder)
    KLStore.load(folder, verify_checksums=False)
    assert seen == [True, False]  # not given: the default itself, not its stand-in


# ------------------------------------------------------------------ repr and help
def test_candidates_repr_is_short_at_a_realistic_depth() -> None:
    hybrid = _hybrid_class()
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "sun", "sea", "moon", "tea", "rock", "tree", "bird", "fish"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(300)]
    store = hybrid(fusion="rrf", candidates=100)
    store.add(texts, gaussians=random_gaussians(300, 8), ids=[f"d{i}" for i in range(300)])
    found = store.candidates(["cat dog"], query_gaussians=random_gaussians(1, 8, seed=1))[0]
    text = repr(found)
    assert len(found.ids) >= 100 and len(text) < 200
    assert text.startswith(f"Candidates({len(found.ids)} ids ['{found.ids[0]}'")
    assert "in dense list: 100" in text


def test_help_of_search_says_what_the_score_is_and_which_way_is_better() -> None:
    doc = inspect.getdoc(KLStore.search) or ""
    assert "higher is better" in doc.lower() and "neg_kl" in doc and "Returns:" in doc
    batch = inspect.getdoc(KLStore.search_batch) or ""
    assert "Returns:" in batch and "higher is better" in batch
    hybrid = _hybrid_class()
    for method in (hybrid.search, hybrid.search_batch):
        text = inspect.getdoc(method) or ""
        assert "Returns:" in text and "higher is better" in text.lower(), method.__name__
    assert "Args:" in (inspect.getdoc(hybrid.search) or "")
    modes = inspect.getdoc(hybrid.search_batch) or ""
    assert all(f'``"{mode}"``' in modes for mode in ("rrf", "convex", "adaptive"))


@pytest.mark.parametrize("where", ["KLStore.search", "KLHybridStore.search"])
def test_the_search_examples_run_when_pasted(where: str) -> None:
    method = KLStore.search if where == "KLStore.search" else _hybrid_class().search
    test = doctest.DocTestParser().get_doctest(inspect.getdoc(method) or "", {}, where, None, 0)
    assert test.examples
    out: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=out.append, clear_globs=True)  # empty globals: only what the example imports
    assert result.failed == 0, "".join(out)
