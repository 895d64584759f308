"""KLVectorStore gains what langchain-community's FAISS has and it lacked (kl_retrievers/langchain.py).

1. ``serialize_to_bytes`` / ``deserialize_from_bytes`` (FAISS's names and argument order): a zip of
   ``save_local``'s folder, never a pickle; unsafe archive entries, foreign bytes and FAISS's own
   pickle are refused with messages that say why.
2. ``merge_from``: the target's documents with their ids, metadata and stored Gaussians; id
   collisions (FAISS's message) and another Gaussian dimension are refused, and nothing changes.
3. FAISS's positional ``ids`` (``add_texts``, ``from_texts``) and ``index_name`` (``load_local``), and
   its ``asimilarity_search_with_score_by_vector`` and ``[a]max_marginal_relevance_search_with_score_by_vector``.

All on a tiny random encoder (``conftest.make_tiny_encoder``).
"""

from __future__ import annotations

import asyncio
import io
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HYBRID_TEXTS, make_tiny_encoder
from kl_retrievers import Gaussians, KLStore
from kl_retrievers.langchain import KLEmbeddings, KLVectorStore, LangChainFormatError

pytestmark = pytest.mark.filterwarnings("ignore:.*langchain-community.*:DeprecationWarning")

TEXTS = HYBRID_TEXTS
IDS = [f"d{i}" for i in range(len(TEXTS))]
META = [{"n": i, "tags": ["x", str(i)]} for i in range(len(TEXTS))]
QUERIES = ["cat", "tea and bread", "a question about nothing"]


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder(seed=1)


@pytest.fixture
def store(encoder: Any) -> KLVectorStore:
    return KLVectorStore.from_texts(TEXTS, KLEmbeddings(encoder), META, ids=IDS, relevance="inverse")


def _results(store: KLVectorStore, k: int = 5) -> list[list[tuple[str | None, str, dict[str, Any], float]]]:
    return [
        [(d.id, d.page_content, d.metadata, s) for d, s in store.similarity_search_with_score(q, k=k)] for q in QUERIES
    ]


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _with_entry(good: bytes, info: zipfile.ZipInfo | str, data: bytes = b"x") -> bytes:
    """``good`` (a serialize_to_bytes archive) with one more entry."""
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        entries: list[tuple[zipfile.ZipInfo | str, bytes]] = [(i, archive.read(i)) for i in archive.infolist()]
    return _zip([*entries, (info, data)])


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


# --------------------------------------------------------------------------- 1. bytes
def test_round_trip_gives_the_same_store(store: KLVectorStore, encoder: Any, no_pickle: None) -> None:
    data = store.serialize_to_bytes()
    assert isinstance(data, bytes) and data[:4] == b"PK\x03\x04"  # a zip archive, not a pickle
    again = KLVectorStore.deserialize_from_bytes(data, KLEmbeddings(encoder))
    assert _results(again) == _results(store)
    assert again.relevance == "inverse" and len(again) == len(store)
    assert sorted(again.store.ids) == sorted(IDS)
    np.testing.assert_array_equal(again.store.get_gaussians(IDS).mean, store.store.get_gaussians(IDS).mean)
    np.testing.assert_array_equal(again.store.get_gaussians(IDS).var, store.store.get_gaussians(IDS).var)
    # the temporary folder is gone, so nothing may be memory-mapped from it: the store still works and changes
    again.add_texts(["one more"], ids=["new"])
    again.delete(["d0"])
    assert "new" in again.store and "d0" not in again.store and "d0" in store.store


def test_round_trip_takes_faiss_keywords_and_bytes_like(store: KLVectorStore, encoder: Any) -> None:
    data = store.serialize_to_bytes()
    again = KLVectorStore.deserialize_from_bytes(
        bytearray(data), KLEmbeddings(encoder), allow_dangerous_deserialization=True, relevance="exp"
    )
    assert again.relevance == "exp" and _results(again) == _results(store)
    assert len(KLVectorStore.deserialize_from_bytes(memoryview(data), encoder, verify_checksums=False)) == len(TEXTS)


def test_empty_store_round_trips(encoder: Any) -> None:
    empty = KLVectorStore(KLEmbeddings(encoder))
    again = KLVectorStore.deserialize_from_bytes(empty.serialize_to_bytes(), KLEmbeddings(encoder))
    assert len(again) == 0 and again.similarity_search("cat") == []


def test_bad_arguments_are_refused(store: KLVectorStore, encoder: Any) -> None:
    data = store.serialize_to_bytes()
    with pytest.raises(ValueError, match=r"cannot memory-map \(mmap=True\)"):
        KLVectorStore.deserialize_from_bytes(data, encoder, mmap=True)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['distance_strategy'\]"):
        KLVectorStore.deserialize_from_bytes(data, encoder, distance_strategy="MAX_INNER_PRODUCT")
    with pytest.raises(TypeError, match="serialized must be bytes .*; got str"):
        KLVectorStore.deserialize_from_bytes("PK", encoder)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.txt", "holds '.' or '..'"),
        ("klstore/../../evil.txt", "holds '.' or '..'"),
        ("/etc/evil.txt", "an absolute path"),
        ("C:/evil.txt", "a drive letter"),
        ("klstore\\..\\evil.txt", "a backslash"),
    ],
)
def test_zip_slip_entries_are_refused(
    store: KLVectorStore, encoder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, problem: str
) -> None:
    monkeypatch.chdir(tmp_path / "..")  # where a relative escape would land
    bad = _with_entry(store.serialize_to_bytes(), name)
    with pytest.raises(LangChainFormatError, match=f"archive entry {name!r:s}".replace("\\", "\\\\")) as caught:
        KLVectorStore.deserialize_from_bytes(bad, KLEmbeddings(encoder))
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/etc/evil.txt").exists()


@pytest.mark.parametrize(
    ("mode", "problem"),
    [(stat.S_IFLNK | 0o777, "a symbolic link"), (stat.S_IFIFO | 0o644, "not a regular file or folder")],
)
def test_links_and_special_files_are_refused(store: KLVectorStore, encoder: Any, mode: int, problem: str) -> None:
    info = zipfile.ZipInfo("klstore/link")
    info.external_attr = mode << 16
    bad = _with_entry(store.serialize_to_bytes(), info, b"/etc/passwd")
    with pytest.raises(LangChainFormatError, match=f"archive entry 'klstore/link' is {problem}"):
        KLVectorStore.deserialize_from_bytes(bad, KLEmbeddings(encoder))


def test_duplicate_entries_are_refused(store: KLVectorStore, encoder: Any) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile's own warning when writing one
        bad = _with_entry(store.serialize_to_bytes(), "langchain.json", b"{}")
    with pytest.raises(LangChainFormatError, match="'langchain.json' is a second entry of the same name"):
        KLVectorStore.deserialize_from_bytes(bad, KLEmbeddings(encoder))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "0 bytes starting with b''"),
        (b"hello, world", "not bytes from KLVectorStore.serialize_to_bytes .*12 bytes starting with b'hello, world'"),
        (pickle.dumps({"a": 1}), "look like a pickle, which KLVectorStore never unpickles"),
        (_zip([("notes.txt", b"hi")]), r"a zip archive without langchain.json \(it holds \['notes.txt'\]\)"),
    ],
)
def test_bytes_that_are_not_ours_are_refused(encoder: Any, no_pickle: None, data: bytes, message: str) -> None:
    with pytest.raises(LangChainFormatError, match=message):
        KLVectorStore.deserialize_from_bytes(data, KLEmbeddings(encoder))


def test_faiss_pickle_gets_a_hint_and_is_not_unpickled(encoder: Any) -> None:
    faiss_mod = pytest.importorskip("langchain_community.vectorstores")
    fake = pytest.importorskip("langchain_core.embeddings").DeterministicFakeEmbedding(size=4)
    data = faiss_mod.FAISS.from_texts(["x", "y"], fake).serialize_to_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
        with pytest.raises(LangChainFormatError, match="langchain-community FAISS's serialize_to_bytes output"):
            KLVectorStore.deserialize_from_bytes(data, KLEmbeddings(encoder), allow_dangerous_deserialization=True)


def test_damaged_archive_is_a_format_error(store: KLVectorStore, encoder: Any) -> None:
    with zipfile.ZipFile(io.BytesIO(store.serialize_to_bytes())) as archive:
        entries: list[tuple[zipfile.ZipInfo | str, bytes]] = [
            (i.filename, archive.read(i) if not i.filename.endswith(".npy") else b"\x93NUMPY broken")
            for i in archive.infolist()
        ]
    with pytest.raises(LangChainFormatError, match="the serialized KLVectorStore is damaged"):
        KLVectorStore.deserialize_from_bytes(_zip(entries), KLEmbeddings(encoder))


def test_serialize_of_a_server_store_says_why(encoder: Any) -> None:
    class Server:  # the methods a MilvusKLStore has, and no save
        encoder = None
        dim = None
        ids = ()

        def add(self, *a: Any, **k: Any) -> list[str]:
            return []

        delete = get_by_ids = get_gaussians = search = add

        def __len__(self) -> int:
            return 0

    with pytest.raises(NotImplementedError, match="nothing to save locally"):
        KLVectorStore(KLEmbeddings(encoder), store=Server()).serialize_to_bytes()


# --------------------------------------------------------------------------- 2. merge_from
def test_merge_from_copies_documents_and_gaussians(store: KLVectorStore, encoder: Any) -> None:
    other_enc = make_tiny_encoder(seed=7)  # another encoder of the same dimension: nothing is re-encoded
    other = KLVectorStore.from_texts(
        # texts in the tiny vocabulary, so the two differ (two texts of unknown words only would get the
        # same Gaussian, and the search below would be an exact tie, broken later-added first)
        ["green tea", "black sun"],
        KLEmbeddings(other_enc),
        [{"m": 1}, {}],
        ids=["m1", "m2"],
    )
    other.store.add(gaussians=Gaussians(np.full((1, 8), 0.3), np.full((1, 8), 2.0)), ids=["g"], metadatas=[{"g": 1}])
    before = other.store.get_gaussians(["m1", "m2", "g"])
    store.merge_from(other)
    assert len(store) == len(TEXTS) + 3 and len(other) == 3
    got = store.get_by_ids(["m1", "m2", "g"])
    assert [(d.id, d.page_content, d.metadata) for d in got] == [
        ("m1", "green tea", {"m": 1}),
        ("m2", "black sun", {}),
        ("g", "", {"g": 1}),
    ]
    after = store.store.get_gaussians(["m1", "m2", "g"])
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_array_equal(after.var, before.var)
    assert store.store.get_by_ids(["g"])[0].text is None  # a document without text stays without
    # searched by the copied Gaussian itself, the merged document comes first with -KL 0
    (doc, score), *_ = store.similarity_search_with_score_by_vector(Gaussians(before.mean[:1], before.var[:1]), k=1)
    assert doc.id == "m1" and score == pytest.approx(0.0, abs=1e-4)


def test_merge_from_an_empty_store_changes_nothing(store: KLVectorStore, encoder: Any) -> None:
    before = _results(store)
    store.merge_from(KLVectorStore(KLEmbeddings(encoder)))
    assert _results(store) == before


def test_merge_into_an_empty_store(store: KLVectorStore, encoder: Any) -> None:
    empty = KLVectorStore(KLEmbeddings(encoder))
    empty.merge_from(store)
    assert _results(empty) == _results(store)


def test_merge_from_refuses_id_collisions_like_faiss(store: KLVectorStore, encoder: Any) -> None:
    other = KLVectorStore.from_texts(["fresh", "clash"], KLEmbeddings(encoder), ids=["fresh", "d3"])
    before = _results(store)
    with pytest.raises(ValueError, match=r"^Tried to add ids that already exist: \['d3'\] .*nothing was merged"):
        store.merge_from(other)
    assert _results(store) == before and "fresh" not in store.store
    with pytest.raises(ValueError, match="Tried to add ids that already exist: .*the store itself"):
        store.merge_from(store)
    assert len(store) == len(TEXTS)


def test_merge_from_refuses_another_dimension(store: KLVectorStore, encoder: Any) -> None:
    other = KLVectorStore.from_texts(["wide"], KLEmbeddings(make_tiny_encoder(dim=16, seed=2)), ids=["w"])
    before = _results(store)
    with pytest.raises(ValueError, match="dimension 16 into one of dimension 8 .*Nothing was merged"):
        store.merge_from(other)
    assert _results(store) == before and "w" not in store.store
    empty = KLVectorStore(KLEmbeddings(encoder))  # no documents yet: its encoder's dimension counts
    with pytest.raises(ValueError, match="dimension 16 into one of dimension 8"):
        empty.merge_from(other)
    assert len(empty) == 0


def test_merge_from_refuses_a_foreign_store(store: KLVectorStore) -> None:
    with pytest.raises(TypeError, match="merge_from takes a KLVectorStore; got KLStore"):
        store.merge_from(KLStore())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 3. FAISS's signatures
def test_from_texts_takes_ids_by_position(encoder: Any) -> None:
    built = KLVectorStore.from_texts(["a", "b"], KLEmbeddings(encoder), [{"x": 1}, {"x": 2}], ["i1", "i2"])
    assert sorted(built.store.ids) == ["i1", "i2"]


def test_add_texts_takes_ids_by_position(store: KLVectorStore) -> None:
    assert store.add_texts(["c"], [{"x": 3}], ["i3"]) == ["i3"]
    assert store.get_by_ids(["i3"])[0].metadata == {"x": 3}


def test_load_local_takes_index_name_by_position(store: KLVectorStore, encoder: Any, tmp_path: Path) -> None:
    store.save_local(tmp_path, "news")
    loaded = KLVectorStore.load_local(tmp_path, KLEmbeddings(encoder), "news", allow_dangerous_deserialization=True)
    assert _results(loaded) == _results(store)


def test_faiss_score_by_vector_variants(store: KLVectorStore) -> None:
    vector = store.embeddings.embed_query("cat")
    sync = store.similarity_search_with_score_by_vector(vector, k=3, filter={"n": {"$gte": 2}})
    got = asyncio.run(store.asimilarity_search_with_score_by_vector(vector, k=3, filter={"n": {"$gte": 2}}))
    assert got == sync and len(got) == 3 and all(d.metadata["n"] >= 2 for d, _ in got)
    picks = store.max_marginal_relevance_search_with_score_by_vector(vector, k=3, fetch_k=6, lambda_mult=0.3)
    assert [d for d, _ in picks] == store.max_marginal_relevance_search_by_vector(
        vector, k=3, fetch_k=6, lambda_mult=0.3
    )
    scores = dict((d.id, s) for d, s in store.similarity_search_with_score_by_vector(vector, k=len(TEXTS)))
    assert all(s == pytest.approx(scores[d.id]) for d, s in picks)  # each pick's own -KL
    assert (
        asyncio.run(store.amax_marginal_relevance_search_with_score_by_vector(vector, k=3, fetch_k=6, lambda_mult=0.3))
        == picks
    )


def test_async_add_takes_ids_by_position(store: KLVectorStore, encoder: Any) -> None:
    assert asyncio.run(store.aadd_texts(["c"], [{"x": 3}], ["i3"])) == ["i3"]
    assert store.get_by_ids(["i3"])[0].metadata == {"x": 3}


def test_async_build_takes_ids_by_position(encoder: Any) -> None:
    built = asyncio.run(
        KLVectorStore.afrom_texts(["a", "b"], KLEmbeddings(encoder), [{"x": 1}, {"x": 2}], ["i1", "i2"])
    )
    assert [(d.id, d.metadata) for d in built.get_by_ids(["i1", "i2"])] == [("i1", {"x": 1}), ("i2", {"x": 2})]


def test_async_documents_keep_their_ids(store: KLVectorStore, encoder: Any) -> None:
    from langchain_core.documents import Document

    docs = [Document(page_content="kept", id="k1", metadata={"y": 1}), Document(page_content="fresh")]
    ids = asyncio.run(store.aadd_documents(docs))
    assert ids[0] == "k1" and len(ids[1]) == 32 and store.get_by_ids(["k1"])[0].metadata == {"y": 1}
    built = asyncio.run(KLVectorStore.afrom_documents(docs, KLEmbeddings(encoder)))
    assert "k1" in built.store and len(built) == 2


# --------------------------------------------------------------------------- review fixes (stop 41)
def test_an_entry_save_local_never_writes_is_refused(store: KLVectorStore, encoder: Any) -> None:
    bad = _with_entry(store.serialize_to_bytes(), "klstore/extra.bin", b"\0" * 100)
    with pytest.raises(LangChainFormatError, match=r"holds \['klstore/extra.bin'\], which serialize_to_bytes never"):
        KLVectorStore.deserialize_from_bytes(bad, KLEmbeddings(encoder))


def test_entries_declaring_far_more_bytes_than_the_archive_are_refused(store: KLVectorStore, encoder: Any) -> None:
    good = store.serialize_to_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "klstore/documents.jsonl":
                data += b" " * (80 << 20)  # 80 MiB of blanks deflate to about 80 KB
            dst.writestr(info.filename, data)
    bomb = buffer.getvalue()
    assert len(bomb) < 1 << 20
    with pytest.raises(LangChainFormatError, match=r"declare \d+ bytes unpacked from \d+ bytes, more than"):
        KLVectorStore.deserialize_from_bytes(bomb, KLEmbeddings(encoder))


def test_arrays_are_stored_uncompressed(store: KLVectorStore) -> None:
    with zipfile.ZipFile(io.BytesIO(store.serialize_to_bytes())) as archive:
        kinds = {i.filename: i.compress_type for i in archive.infolist()}
    assert kinds["klstore/mean.npy"] == kinds["klstore/index.faiss"] == zipfile.ZIP_STORED
    assert kinds["langchain.json"] == zipfile.ZIP_DEFLATED


def test_without_embeddings_only_a_bundled_encoder_is_loaded_by_name(store: KLVectorStore) -> None:
    data = store.serialize_to_bytes()
    name = str(store.store.encoder.name_or_path)
    with pytest.raises(ValueError, match=f"names the encoder {name!r:s}, which is not a model bundled"):
        KLVectorStore.deserialize_from_bytes(data)
    empty = KLVectorStore.from_texts([], KLEmbeddings(make_tiny_encoder(seed=1)))
    empty.store.encoder.name_or_path = "minilm-gauss-soup"  # a bundled name: loaded as before
    copy = KLVectorStore.deserialize_from_bytes(empty.serialize_to_bytes())
    assert len(copy) == 0


def test_merge_from_checks_the_dimension_of_an_embeddings_encoder(store: KLVectorStore) -> None:
    fake = pytest.importorskip("langchain_core.embeddings").DeterministicFakeEmbedding(size=5)
    target = KLVectorStore(fake)
    assert store.dim != 5
    with pytest.raises(ValueError, match=f"dimension {store.dim} into one of dimension 5"):
        target.merge_from(store)
    assert len(target) == 0


# --------------------------------------------------------------------------- FAISS's add_embeddings / from_embeddings
def test_from_embeddings_ranks_as_from_texts(store: KLVectorStore, encoder: Any) -> None:
    emb = KLEmbeddings(encoder)
    vectors = emb.embed_documents(TEXTS)
    built = KLVectorStore.from_embeddings(list(zip(TEXTS, vectors, strict=True)), emb, META, IDS, relevance="inverse")
    for got, want in zip(_results(built), _results(store), strict=True):
        assert [(i, t, m) for i, t, m, _ in got] == [(i, t, m) for i, t, m, _ in want]
        np.testing.assert_allclose([s for *_, s in got], [s for *_, s in want], rtol=1e-5, atol=1e-6)
    more = KLVectorStore(emb)
    assert more.add_embeddings(zip(TEXTS[:2], vectors[:2], strict=True)) and len(more) == 2
    copy = asyncio.run(KLVectorStore.afrom_embeddings(list(zip(TEXTS, vectors, strict=True)), emb, None, IDS))
    assert sorted(copy.store.ids) == sorted(IDS)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5], "document vectors d~ as KLEmbeddings.embed_documents returns them"),  # a plain one
        ("query", "document vectors d~"),  # a q~ query vector (coordinates 1..k positive)
    ],
)
def test_add_embeddings_refuses_what_is_no_document_vector(encoder: Any, vector: Any, message: str) -> None:
    emb = KLEmbeddings(encoder)
    if vector == "query":
        vector = emb.embed_query("tea")
    target = KLVectorStore(emb)
    with pytest.raises(ValueError, match=message):
        target.add_embeddings([("tea", vector)])
    assert len(target) == 0


def test_add_embeddings_refuses_another_dimension_and_bad_items(store: KLVectorStore) -> None:
    other = KLEmbeddings(make_tiny_encoder(seed=2, dim=3))
    vec = other.embed_documents(["tea"])[0]
    with pytest.raises(ValueError, match=f"Gaussians of dimension 3 .*this store needs dimension {store.dim}"):
        store.add_embeddings([("tea", vec)])
    with pytest.raises(TypeError, match=r"text_embeddings\[0\] must be a \(text, vector\) pair"):
        store.add_embeddings(["tea"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="got 2 ids for 1 text_embeddings"):
        store.add_embeddings([("tea", vec)], ids=["a", "b"])


def test_add_embeddings_stores_the_given_vectors_without_encoding(store: KLVectorStore, encoder: Any) -> None:
    other = KLEmbeddings(make_tiny_encoder(seed=9))  # same dimension, other weights: its vectors must be kept
    vectors = other.embed_documents(TEXTS)
    target = KLVectorStore(KLEmbeddings(encoder))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoder, "encode_documents", lambda *a, **k: pytest.fail("add_embeddings encoded a text"))
        target.add_embeddings(list(zip(TEXTS, vectors, strict=True)), ids=IDS)
    stored = target.store.get_gaussians(IDS)
    want = other.encode_documents(TEXTS)
    np.testing.assert_allclose(stored.mean, want.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stored.var, want.var, rtol=1e-5, atol=1e-6)


def test_add_embeddings_refuses_a_vector_whose_first_value_is_not_its_gaussian_s(encoder: Any) -> None:
    emb = KLEmbeddings(encoder)
    good = emb.embed_documents(["tea"])[0]
    plain = list(good)
    plain[0] += 1.0  # the rest is a valid d~: only the first value gives it away
    target = KLVectorStore(emb)
    with pytest.raises(ValueError, match=r"text_embeddings\[1\] is not one: its first value is"):
        target.add_embeddings([("tea", good), ("tea", plain)])
    assert len(target) == 0
    with pytest.raises(ValueError, match=r"text_embeddings\[0\] has 17 floats but text_embeddings\[1\] has 5"):
        target.add_embeddings([("tea", good), ("tea", [-1.0] * 5)])


def test_from_embeddings_requires_the_encoder_as_faiss_does(encoder: Any) -> None:
    vec = KLEmbeddings(encoder).embed_documents(["tea"])
    with pytest.raises(TypeError, match="embedding"):
        KLVectorStore.from_embeddings([("tea", vec[0])])  # type: ignore[call-arg]
