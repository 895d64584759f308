"""Everyday wrong-type inputs to the stores, refused with a message instead of a silent wrong result.

1. ``save(overwrite="no")`` (a truthy string) no longer deletes a folder that is not a store; ``load(mmap="no")``,
   ``verify_checksums="no"`` and ``show_progress_bar="no"`` are refused alike.
2. ``KLStore.search_batch`` refuses a dict (its keys, not a BEIR ``{qid: text}``'s texts), a table, a set and
   non-str items (naming the position), also on an empty store.
3. ``KLHybridStore.search_batch`` / ``search_run`` read a generator once; ``search_run`` refuses int query ids.
4. A misspelt ``KLStore`` setting (``efSearch``) raises ``AttributeError``; a setting the store's kind does not
   read (``nprobe`` on HNSW) warns.
5. ``sharded.encode_corpus`` refuses a model name as ``encoder`` and a list of texts as ``input``.
6. ``evaluation.retrieve_exact`` refuses non-str ids.
7. ``KLHybridStore.load`` and LangChain's ``load_local`` refuse non-bool ``mmap`` / ``verify_checksums`` as
   ``KLStore.load`` does; ``MilvusKLStore`` refuses a non-bool ``show_progress_bar``.
8. A set of query ids is refused where ids pair with queries by position (ids only looked up may be a set); a
   subclass may add attributes close to a setting's name, not respell one; the warning of a setting for another
   index kind says an empty store may still change kind; arrays given as queries hint at ``Gaussians``.
9. ``retrieve_vectors`` refuses non-str ids as ``retrieve_exact`` does; both refuse a set of ids by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers._io import save_gaussians
from kl_retrievers.evaluation import retrieve_exact, retrieve_vectors
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.hybrid import KLHybridStore
from kl_retrievers.sharded import encode_corpus
from kl_retrievers.store import KLStore


def _gaussians(n: int, k: int = 3, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    return Gaussians(rng.normal(size=(n, k)), rng.uniform(0.5, 2.0, size=(n, k)))


def _klstore() -> KLStore:
    store = KLStore()
    store.add(gaussians=_gaussians(2), ids=["a", "b"])
    return store


def _hybrid() -> KLHybridStore:
    store = KLHybridStore(fusion="rrf")
    store.add(["the cat", "a dog"], gaussians=_gaussians(2), ids=["a", "b"])
    return store


# ---------------------------------------------------------------------------------------------- 1. flags


@pytest.mark.parametrize("make", [_klstore, _hybrid], ids=["KLStore", "KLHybridStore"])
@pytest.mark.parametrize("flag", ["no", "false", 0, 1, None])
def test_save_overwrite_must_be_a_bool_and_keeps_the_folder(
    tmp_path: Path, make: Callable[[], Any], flag: object
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "important.txt").write_text("precious")
    store = make()
    with pytest.raises(TypeError, match=rf"overwrite must be a bool; got {flag!r}"):
        store.save(folder, overwrite=flag)
    assert sorted(p.name for p in folder.iterdir()) == ["important.txt"]
    assert (folder / "important.txt").read_text() == "precious"
    store.save(folder, overwrite=np.True_)  # numpy's bool is a bool
    assert not (folder / "important.txt").exists()


def test_save_gaussians_overwrite_must_be_a_bool(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    with pytest.raises(TypeError, match="overwrite must be a bool; got 'no'"):
        save_gaussians(weights, _gaussians(2), overwrite="no")  # type: ignore[arg-type]
    assert weights.read_bytes() == b"weights"


@pytest.mark.parametrize("option", ["mmap", "verify_checksums"])
def test_klstore_load_options_must_be_bools(tmp_path: Path, option: str) -> None:
    folder = _klstore().save(tmp_path / "s")
    with pytest.raises(TypeError, match=rf"{option} must be a bool; got 'no'"):
        KLStore.load(folder, **{option: "no"})  # type: ignore[arg-type]
    assert len(KLStore.load(folder, **{option: np.False_})) == 2  # type: ignore[arg-type]


def test_show_progress_bar_must_be_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match="show_progress_bar must be a bool or None; got 'no'"):
        KLStore(show_progress_bar="no")  # type: ignore[arg-type]
    store = KLStore(show_progress_bar=None)
    with pytest.raises(TypeError, match="show_progress_bar must be a bool or None; got 'yes'"):
        store.show_progress_bar = "yes"  # type: ignore[assignment]
    assert store.show_progress_bar is None
    store.show_progress_bar = True
    assert store.show_progress_bar is True


# ---------------------------------------------------------------------------- 2. KLStore.search_batch


def _bad_query_containers() -> list[tuple[object, str]]:
    pd = pytest.importorskip("pandas")
    return [
        ({"q1": "the cat", "q2": "a dog"}, "is a dict, whose iteration gives its keys"),
        ({"q1": "the cat"}.keys(), "whose iteration gives a dict's keys"),
        (pd.DataFrame({"q": ["the cat", "a dog"]}), "is a DataFrame \\(a table\\)"),
        ({"the cat", "a dog"}, "is a set, whose iteration order is arbitrary"),
        (b"the cat", "is bytes, not str"),
        (["the cat", None], r"queries\[1\] is NoneType"),
        ([1, 2], r"queries\[0\] is int"),
        (None, "queries must be query texts or a Gaussians batch; got NoneType"),
        (5, "queries must be query texts or a Gaussians batch; got int"),
    ]


@pytest.mark.parametrize("empty", [False, True], ids=["filled", "empty"])
def test_klstore_search_batch_refuses_containers_and_bad_items(empty: bool) -> None:
    store = KLStore() if empty else _klstore()
    for queries, message in _bad_query_containers():
        with pytest.raises(TypeError, match=message):
            store.search_batch(queries)  # type: ignore[arg-type]


def test_klstore_search_batch_reads_a_generator_once() -> None:
    encoder = make_tiny_encoder()
    store = KLStore(encoder=encoder)
    store.add(["the cat sat on the mat", "a dog in the sun", "green tea"], ids=["a", "b", "c"])
    queries = ["the cat sat on the mat", "green tea"]
    listed = [[hit.id for hit in hits] for hits in store.search_batch(queries, k=3)]
    generated = [[hit.id for hit in hits] for hits in store.search_batch((q for q in queries), k=3)]  # type: ignore[arg-type]
    assert generated == listed and len(generated) == 2
    assert KLStore(encoder=encoder).search_batch(q for q in queries) == [[], []]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- 3. KLHybridStore


@pytest.fixture(scope="module")
def hybrid_with_encoder() -> KLHybridStore:
    store = KLHybridStore(encoder=make_tiny_encoder())
    store.add(["the cat sat", "a dog in the sun"], ids=["a", "b"])
    return store


def test_hybrid_search_batch_and_search_run_read_generators_once(hybrid_with_encoder: KLHybridStore) -> None:
    store = hybrid_with_encoder
    queries = ["the cat", "dog"]
    listed = [[hit.id for hit in hits] for hits in store.search_batch(queries, k=2)]
    generated = [[hit.id for hit in hits] for hits in store.search_batch((q for q in queries), k=2)]  # type: ignore[arg-type]
    assert generated == listed and len(generated) == 2
    run = store.search_run((i for i in ["q1", "q2"]), (q for q in queries), k=2)  # type: ignore[arg-type]
    assert run == store.search_run(["q1", "q2"], queries, k=2) and list(run) == ["q1", "q2"]


@pytest.mark.parametrize("bad", [1, np.int64(1), None])
def test_hybrid_search_run_refuses_non_str_query_ids(hybrid_with_encoder: KLHybridStore, bad: object) -> None:
    with pytest.raises(TypeError, match=rf"query_ids\[1\] must be a str; got {type(bad).__name__}"):
        hybrid_with_encoder.search_run(["q0", bad], ["the cat", "dog"], k=2)  # type: ignore[list-item]


# -------------------------------------------------------------------------------- 4. KLStore settings


@pytest.mark.parametrize(("typo", "meant"), [("efSearch", "ef_search"), ("n_probe", "nprobe"), ("nProbe", "nprobe")])
def test_a_misspelt_setting_is_refused_naming_the_setting(typo: str, meant: str) -> None:
    store = KLStore(index_type="hnsw")
    with pytest.raises(AttributeError, match=rf"no setting or attribute {typo!r}; did you mean {meant!r}"):
        setattr(store, typo, 512)
    assert typo not in vars(store)


def test_an_unknown_public_attribute_is_refused_but_known_and_private_ones_are_set() -> None:
    store = KLStore(index_type="hnsw")
    with pytest.raises(AttributeError, match="KLStore has no setting or attribute 'colour'"):
        store.colour = "blue"  # type: ignore[attr-defined]
    store.saved_encoder = "some-model"
    store.encoder = None
    setattr(store, "_private_note", 1)  # noqa: B010 (an attribute the class does not declare)
    store.ef_search = 64
    assert (store.saved_encoder, store.ef_search, vars(store)["_private_note"]) == ("some-model", 64, 1)


def test_a_subclass_may_add_attributes_but_not_misspell_a_setting() -> None:
    class Tagged(KLStore):
        def __init__(self) -> None:
            super().__init__()
            self.tag = "first"

    store = Tagged()
    store.tag = "second"
    setattr(store, "owner", "me")  # noqa: B010 (a subclass's own attribute, set after construction)
    assert (store.tag, vars(store)["owner"]) == ("second", "me")
    with pytest.raises(AttributeError, match="did you mean 'ef_search'"):
        store.efsearch = 1


@pytest.mark.parametrize(
    ("config", "name", "value", "applies"),
    [
        ({"index_type": "hnsw"}, "nprobe", 64, "index_type='ivf'"),
        ({"index_type": "ivf", "nlist": 4}, "ef_search", 64, "index_type='hnsw'"),
        ({"index_type": "flat"}, "ef_search", 64, "index_type='hnsw'"),
        ({"index_type": "hnsw"}, "pq_m", 8, "compression='pq'"),
    ],
)
def test_a_setting_the_store_does_not_read_warns(config: dict[str, Any], name: str, value: int, applies: str) -> None:
    store = KLStore(**config)
    with pytest.warns(UserWarning, match=rf"{name}={value} has no effect on this store: it applies to {applies}"):
        setattr(store, name, value)
    assert getattr(store, name) == value  # taken: an empty store may still change its kind


def test_a_setting_the_store_reads_does_not_warn() -> None:
    store = KLStore(index_type="ivf", nlist=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.nprobe = 2
        store.ef_search = store.ef_search  # unchanged: nothing to say
        hnsw = KLStore(index_type="hnsw")
        hnsw.ef_search = 64
    assert (store.nprobe, hnsw.ef_search) == (2, 64)


# ------------------------------------------------------------------------------- 5. sharded.encode_corpus


def test_encode_corpus_refuses_a_model_name_as_encoder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat\na dog\n")
    with pytest.raises(TypeError, match="got the model name or folder 'minilm-gauss-soup': pass model="):
        encode_corpus(corpus, tmp_path / "out", encoder="minilm-gauss-soup")
    with pytest.raises(TypeError, match="encoder must be a Gaussian encoder with encode_queries"):
        encode_corpus(corpus, tmp_path / "out", encoder=object(), kind="query")
    assert not (tmp_path / "out").exists()


def test_encode_corpus_refuses_texts_as_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="input must be a path .*got list .*encode_documents"):
        encode_corpus(["the cat", "a dog"], tmp_path / "out")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="out must be a path"):
        encode_corpus(tmp_path / "corpus.txt", None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- 6. retrieve_exact ids


@pytest.mark.parametrize("bad", [1, np.int64(1)])
def test_retrieve_exact_refuses_non_str_ids(bad: object) -> None:
    queries, docs = _gaussians(2, seed=1), _gaussians(3, seed=2)
    with pytest.raises(TypeError, match=rf"query_ids\[1\] must be a str; got {type(bad).__name__}"):
        retrieve_exact(queries, docs, ["q0", bad], ["a", "b", "c"], k=2)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"doc_ids\[0\] must be a str"):
        retrieve_exact(queries, docs, ["q0", "q1"], [bad, "b", "c"], k=2)  # type: ignore[list-item]
    run = retrieve_exact(queries, docs, ["q0", "q1"], np.array(["a", "b", "c"]), k=2)  # type: ignore[arg-type]
    assert list(run) == ["q0", "q1"] and all(isinstance(doc, str) for hits in run.values() for doc in hits)


# --------------------------------------------------------------- 7. every loader checks its flags; Milvus too


@pytest.mark.parametrize(("option", "value"), [("mmap", "no"), ("verify_checksums", 0), ("mmap", 1)])
def test_hybrid_load_refuses_non_bool_flags(tmp_path: Path, option: str, value: object) -> None:
    """``KLHybridStore.load`` called ``KLStore._load_once`` directly: ``verify_checksums=0`` skipped the checks."""
    folder = _hybrid().save(tmp_path / "h")
    with pytest.raises(TypeError, match=rf"{option} must be a bool; got {value!r}"):
        KLHybridStore.load(folder, **{option: value})  # type: ignore[arg-type]
    assert len(KLHybridStore.load(folder, **{option: np.False_})) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize(("option", "value"), [("mmap", "no"), ("verify_checksums", 0)])
def test_langchain_load_local_refuses_non_bool_flags(tmp_path: Path, option: str, value: object) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    embeddings = KLEmbeddings(make_tiny_encoder())
    store = KLVectorStore(embeddings)
    store.add_texts(["the cat", "a dog"], ids=["a", "b"])
    folder = store.save_local(tmp_path / "kl")
    with pytest.raises(TypeError, match=rf"{option} must be a bool; got {value!r}"):
        KLVectorStore.load_local(folder, embeddings, **{option: value})  # type: ignore[arg-type]
    assert len(KLVectorStore.load_local(folder, embeddings, **{option: False}).store) == 2  # type: ignore[arg-type]


def test_milvus_store_refuses_a_non_bool_show_progress_bar(tmp_path: Path) -> None:
    """``MilvusKLStore`` took ``bool(show_progress_bar)``: ``"no"`` showed bars."""
    milvus = pytest.importorskip("kl_retrievers.store.milvus")
    uri = tmp_path / "kl.db"
    with pytest.raises(TypeError, match="show_progress_bar must be a bool; got 'no'"):
        milvus.MilvusKLStore(uri=str(uri), dim=4, show_progress_bar="no")
    assert not uri.exists()  # refused before connecting


# -------------------------------------------------------------- 8. sets of ids, subclass attributes, hints


def test_hybrid_search_run_refuses_a_set_of_query_ids(hybrid_with_encoder: KLHybridStore) -> None:
    """A set of query ids was paired with the queries in its (arbitrary) iteration order."""
    with pytest.raises(TypeError, match="query_ids is a set, whose iteration order is arbitrary.*pass a list"):
        hybrid_with_encoder.search_run({"q1", "q2"}, ["the cat", "dog"], k=1)  # type: ignore[arg-type]
    ordered = {"q1": "the cat", "q2": "dog"}
    run = hybrid_with_encoder.search_run(ordered.keys(), list(ordered.values()), k=1)  # type: ignore[arg-type]
    assert list(run) == ["q1", "q2"]  # a dict's keys keep its order


def test_unpaired_ids_may_still_be_a_set() -> None:
    store = KLStore()
    store.add(gaussians=_gaussians(3), ids=["a", "b", "c"])
    assert sorted(d.id for d in store.get_by_ids({"a", "b"})) == ["a", "b"]  # type: ignore[arg-type]
    assert len(store.get_gaussians(frozenset({"c"}))) == 1  # type: ignore[arg-type]
    assert sorted(store.delete({"a", "zz"}).deleted) == ["a"] and store.ids == ["b", "c"]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["compressed", "refined", "seeded", "batch_sizes", "nlists", "batchsize_hint"])
def test_a_subclass_may_add_attributes_close_to_a_setting(name: str) -> None:
    """A subclass's own ``nlists`` was refused as a misspelt ``nlist`` (difflib cutoff 0.75)."""

    class Mine(KLStore):
        pass

    store = Mine()
    setattr(store, name, 1)
    assert vars(store)[name] == 1
    with pytest.raises(AttributeError, match=r"did you mean '(compression|refine|seed|batch_size|nlist)'"):
        setattr(KLStore(), name, 1)  # the plain store still refuses them


@pytest.mark.parametrize("name", ["efSearch", "efsearch", "EF_SEARCH", "n_list"])
def test_a_subclass_may_not_respell_a_setting(name: str) -> None:
    class Mine(KLStore):
        pass

    with pytest.raises(AttributeError, match=r"Mine has no setting or attribute .*; did you mean '(ef_search|nlist)'"):
        setattr(Mine(), name, 1)


def test_a_setting_for_another_kind_warns_that_an_empty_store_may_still_change_kind() -> None:
    """On an empty flat store, ``ef_search = 128`` then ``index_type = "hnsw"`` ends with ef_search in effect."""
    store = KLStore()
    with pytest.warns(UserWarning, match="unless index_type is changed to 'hnsw' before the first add"):
        store.ef_search = 128
    store.index_type = "hnsw"
    assert (store.index_type, store.ef_search) == ("hnsw", 128)
    filled = _klstore()
    with pytest.warns(UserWarning, match="has no effect on this store") as caught:
        filled.ef_search = 128
    assert "unless" not in str(caught[0].message)  # its kind can no longer change


@pytest.mark.parametrize("shape", ["means", "pair", "tensor"])
def test_search_batch_of_arrays_hints_at_gaussians(shape: str) -> None:
    mean, var = np.zeros((2, 3)), np.ones((2, 3))
    queries: object = {"means": mean, "pair": (mean, var), "tensor": None}[shape]
    if shape == "tensor":
        torch = pytest.importorskip("torch")
        queries = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"every text must be a str: pass query Gaussians as Gaussians\(mean, var\)"):
        _klstore().search_batch(queries, k=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"queries\[1\] is NoneType; every text must be a str$"):
        _klstore().search_batch(["the cat", None], k=1)  # type: ignore[list-item]


# ------------------------------------------------------------ 9. retrieve_vectors ids, a set of retrieve ids


@pytest.mark.parametrize("bad", [0, np.int64(0)])
def test_retrieve_vectors_refuses_non_str_ids(bad: object) -> None:
    """``retrieve_vectors`` keyed its run by int ids, which match no qrels entry."""
    queries, docs = np.eye(2), np.eye(2)
    with pytest.raises(TypeError, match=rf"query_ids\[0\] must be a str; got {type(bad).__name__}"):
        retrieve_vectors(queries, docs, [bad, "q1"], ["a", "b"], k=1)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"doc_ids\[1\] must be a str"):
        retrieve_vectors(queries, docs, ["q0", "q1"], ["a", bad], k=1)  # type: ignore[list-item]
    assert retrieve_vectors(queries, docs, ["q0", "q1"], np.array(["a", "b"]), k=1) == {  # type: ignore[arg-type]
        "q0": {"a": 1.0},
        "q1": {"b": 1.0},
    }


@pytest.mark.parametrize("which", ["query_ids", "doc_ids"])
def test_retrieve_refuses_a_set_of_ids_naming_the_argument(which: str) -> None:
    """``retrieve_exact(doc_ids={...})`` failed inside runs.py: "'set' object is not subscriptable"."""
    queries, docs = _gaussians(2, seed=1), _gaussians(3, seed=2)
    ids = {"query_ids": ["q0", "q1"], "doc_ids": ["a", "b", "c"]}
    ids[which] = set(ids[which])  # type: ignore[assignment]
    message = rf"{which} must be a sequence of str ids \(a list, in row order\); got a set, whose iteration order"
    with pytest.raises(TypeError, match=message):
        retrieve_exact(queries, docs, ids["query_ids"], ids["doc_ids"], k=1)
    with pytest.raises(TypeError, match=message):
        retrieve_vectors(queries.mean, docs.mean, ids["query_ids"], ids["doc_ids"], k=1)
