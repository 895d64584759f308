"""A set or frozenset as a filter value: the values of ``$in`` / ``$nin``, refused anywhere else.

A bare set (``{"lang": {"en", "de"}}``), or one in ``$eq`` / ``$ne`` / a comparison or inside a list, used
to be compared as the list of its elements in iteration order, which for strings depends on
``PYTHONHASHSEED``: it matched nothing on a scalar field and, on a list field, matched by chance. It now
raises ``ValueError`` naming the key and the set on every store; MilvusKLStore named a "list" it was not
given.

The same holds for a numpy object array holding sets (read as the list of its elements) and for set-like
views (``dict.keys()``, any ``collections.abc.Set``): a view is taken as ``$in`` / ``$nin`` values and
refused elsewhere. Another iterable that is no value (a generator, a ``range``, ``dict.values()``) silently
matched nothing as a value and now raises naming the key and its type, as ``$in`` / ``$nin`` values do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers.filters import compile_filter
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore

METAS: list[dict[str, Any]] = [
    {"lang": "en", "tags": ["en", "de"], "n": 1},
    {"lang": "de", "tags": ["de", "en"], "n": 2},
    {"lang": "fr", "tags": ["fr"], "n": 3},
]
IDS = ["a", "b", "c"]
QUERY = Gaussians(np.zeros((1, 2)), np.ones((1, 2)))

#: Filters holding a set where a value is compared, each with the key its error must name.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"lang": {"en", "de"}}, "lang"),
    ({"tags": frozenset({"en", "de"})}, "tags"),
    ({"lang": {"$eq": {"en"}}}, "lang"),
    ({"lang": {"$ne": frozenset({"en"})}}, "lang"),
    ({"lang": {"$neq": {"en"}}}, "lang"),
    ({"n": {"$gt": {1}}}, "n"),
    ({"lang": {"$not": {"$eq": {"en"}}}}, "lang"),
    ({"tags": [{"en"}, "fr"]}, "tags"),
    ({"tags": {"$in": [frozenset({"en", "de"})]}}, "tags"),
    ({"$or": [{"n": 1}, {"lang": {"de"}}]}, "lang"),
]


def _outputs_under_hash_seeds(code: str, cwd: Path) -> set[str]:
    """The distinct outputs of ``python -c code`` run under four ``PYTHONHASHSEED`` values."""
    root = Path(__file__).resolve().parents[1]
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout)
    return outputs


def _store() -> KLStore:
    store = KLStore()
    store.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))), ids=IDS, metadatas=METAS)
    return store


def _ids(results: list[Any]) -> list[str]:
    return sorted(str(r.id) for r in results)


@pytest.mark.parametrize(("flt", "key"), REFUSED)
def test_set_compared_as_a_value_is_refused_naming_the_key_and_set(flt: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*is a set") as info:
        compile_filter(flt)
    assert "$in" in str(info.value)
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*is a set"):
        _store().search(QUERY, k=3, filter=flt)
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*is a set"):
        KLStore(dim=2).search(QUERY, k=3, filter=flt)  # empty: checked before anything is searched


def test_error_names_the_set_and_suggests_its_elements_as_a_list() -> None:
    with pytest.raises(ValueError) as info:
        compile_filter({"lang": {"en", "de"}})
    message = str(info.value)
    assert "'de'" in message and "'en'" in message
    assert "{'lang': ['de', 'en']}" in message  # the suggestion in a stable (sorted) order


@pytest.mark.parametrize("kind", [set, frozenset])
def test_set_as_in_and_nin_values_is_the_list_of_its_elements(kind: type) -> None:
    store = _store()
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": kind({"en", "de"})}})) == ["a", "b"]
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$nin": kind({"en", "de"})}})) == ["c"]
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$not": {"$in": kind({"fr"})}}})) == ["a", "b"]
    # a list field compared with each element (equality with the whole list): nothing here
    assert _ids(store.search(QUERY, k=3, filter={"tags": {"$in": kind({"en", "de"})}})) == []


def test_refusal_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    code = (
        "from kl_retrievers.filters import compile_filter\n"
        "for f in ({'tags': {'en', 'de'}}, {'lang': {'$eq': {'en', 'de'}}}):\n"
        "    try:\n"
        "        compile_filter(f)\n"
        "        print('accepted')\n"
        "    except ValueError:\n"
        "        print('refused')\n"
        "m = compile_filter({'tags': {'$in': {'en', 'de'}}})\n"
        "print(m({'tags': 'de'}), m({'tags': ['de', 'en']}), m({'tags': ['en', 'de']}))\n"
    )
    outputs = _outputs_under_hash_seeds(code, tmp_path)
    assert outputs == {"refused\nrefused\nTrue False False\n"}


def test_hybrid_store_refuses_a_bare_set() -> None:
    from kl_retrievers.hybrid import KLHybridStore

    hybrid = KLHybridStore(make_tiny_encoder())
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        hybrid.search("cat", k=3, filter={"lang": {"en", "de"}})  # empty
    hybrid.add(["the cat", "a dog", "tea"], ids=IDS, metadatas=METAS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        hybrid.search("cat", k=3, filter={"lang": {"en", "de"}})
    assert _ids(hybrid.search("cat", k=3, filter={"lang": {"$in": {"en", "de"}}})) == ["a", "b"]


def test_langchain_store_refuses_a_bare_set() -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    vs = KLVectorStore(KLEmbeddings(make_tiny_encoder()))
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        vs.similarity_search("cat", k=3, filter={"lang": {"en", "de"}})  # empty
    vs.add_texts(["the cat", "a dog", "tea"], METAS, ids=IDS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        vs.similarity_search("cat", k=3, filter={"lang": {"en", "de"}})
    assert sorted(str(d.id) for d in vs.similarity_search("cat", k=3, filter={"lang": {"$in": {"en", "de"}}})) == [
        "a",
        "b",
    ]


def test_milvus_names_the_set_not_a_list() -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.milvus import to_milvus_expr

    for flt in ({"lang": {"en", "de"}}, {"lang": {"$eq": frozenset({"en"})}}, {"tags": [{"en"}]}):
        with pytest.raises(ValueError, match=r"filter on '(lang|tags)': .*is a set") as info:
            to_milvus_expr(flt)
        assert "got list" not in str(info.value)
    assert to_milvus_expr({"lang": {"$in": {"en"}}}) == to_milvus_expr({"lang": {"$in": ["en"]}})
    with pytest.raises(ValueError, match="got list"):  # a tuple value: equality with a list, as before
        to_milvus_expr({"v": (1, 2)})


def test_milvus_store_refuses_a_bare_set(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "sets.db"), collection_name="c", index_type="flat")
    store.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))), ids=IDS, metadatas=METAS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a set"):
        store.search(QUERY, k=3, filter={"lang": {"en", "de"}})
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": {"en", "de"}}})) == ["a", "b"]


def _lang_keys() -> Any:
    return {"en": 1, "de": 2}.keys()


#: Filters holding a set-like view, another iterable that is no value, or a set in an object array.
NO_VALUE: list[tuple[Any, str, str]] = [
    (lambda: {"tags": np.array([{"en", "de"}, {"fr"}], dtype=object)}, "tags", "is a set"),
    (lambda: {"tags": {"$in": np.array([{"en", "de"}, {"fr"}], dtype=object)}}, "tags", "is a set"),
    (lambda: {"tags": {"$eq": np.array([{"en", "de"}], dtype=object)}}, "tags", "is a set"),
    (lambda: {"lang": _lang_keys()}, "lang", r"set-like \(dict_keys\)"),
    (lambda: {"lang": {"$eq": {"en": 1}.items()}}, "lang", r"set-like \(dict_items\)"),
    (lambda: {"tags": ["fr", _lang_keys()]}, "tags", r"set-like \(dict_keys\)"),
    (lambda: {"lang": (x for x in ["en"])}, "lang", "is a generator"),
    (lambda: {"n": range(0, 3)}, "n", "is a range"),
    (lambda: {"lang": {"en": 1}.values()}, "lang", "is a dict_values"),
    (lambda: {"lang": {"$ne": range(2)}}, "lang", "is a range"),
    (lambda: {"tags": ["en", iter(["de"])]}, "tags", "is a list_iterator"),
    (lambda: {"n": {"$in": range(0, 3)}}, "n", r"\$in needs a list.*got range\(0, 3\)"),
    (lambda: {"lang": {"$nin": (x for x in ["en"])}}, "lang", r"\$nin needs a list.*\(generator\)"),
    (lambda: {"lang": {"$in": "en"}}, "lang", r"\$in needs a list.*\(str\)"),
    (lambda: {"n": {"$in": np.array(1)}}, "n", r"\$in needs a list.*\(ndarray\)"),
    (lambda: {"lang": {"$in": [_lang_keys()]}}, "lang", r"set-like \(dict_keys\)"),
]


@pytest.mark.parametrize(("make", "key", "says"), NO_VALUE)
def test_iterable_that_is_no_value_is_refused_naming_the_key(make: Any, key: str, says: str) -> None:
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*{says}"):
        compile_filter(make())
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*{says}"):
        _store().search(QUERY, k=3, filter=make())
    with pytest.raises(ValueError, match=rf"filter on {key!r}: .*{says}"):
        KLStore(dim=2).search(QUERY, k=3, filter=make())  # empty: checked before anything is searched


def test_object_array_of_sets_is_refused_whatever_the_hash_seed(tmp_path: Path) -> None:
    code = (
        "import numpy as np\n"
        "from kl_retrievers.filters import compile_filter\n"
        "for f in ({'tags': np.array([{'en', 'de'}, {'fr'}], dtype=object)},\n"
        "          {'tags': {'$in': np.array([{'en', 'de'}], dtype=object)}}):\n"
        "    try:\n"
        "        print(compile_filter(f)({'tags': ['de', 'en']}))\n"
        "    except ValueError:\n"
        "        print('refused')\n"
    )
    outputs = _outputs_under_hash_seeds(code, tmp_path)
    assert outputs == {"refused\nrefused\n"}


def test_object_array_is_checked_element_by_element() -> None:
    store = _store()
    with pytest.raises(ValueError, match=r"filter on 'n': \{1\} in array\(\[\{1\}, 2\], dtype=object\) is a set"):
        store.search(QUERY, k=3, filter={"n": np.array([{1}, 2], dtype=object)})
    # without a set in it, an object array still reads as the list it holds ("one of")
    assert _ids(store.search(QUERY, k=3, filter={"n": np.array([1, "x", None], dtype=object)})) == ["a"]
    assert _ids(store.search(QUERY, k=3, filter={"tags": np.array([["fr"], "x"], dtype=object)})) == ["c"]


def test_set_like_views_are_in_and_nin_values() -> None:
    store = _store()
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": _lang_keys()}})) == ["a", "b"]
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$nin": _lang_keys()}})) == ["c"]
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$not": {"$in": _lang_keys()}}})) == ["c"]
    assert _ids(store.search(QUERY, k=3, filter={"n": {"$in": {1: "x", 3: "y"}.keys()}})) == ["a", "c"]


def _message(flt: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as info:
        compile_filter(flt)
    return str(info.value)


def test_set_hint_follows_the_operator() -> None:
    gt = _message({"n": {"$gt": {1}}})
    assert "$gt compares with a single value" in gt
    assert "one of" not in gt and "{'n': [1]}" not in gt
    eq = _message({"lang": {"$eq": {"en", "de"}}})
    assert "write {'$in': ['de', 'en']} in place of $eq" in eq
    ne = _message({"lang": {"$neq": {"en"}}})
    assert """"none of" write {'$nin': ['en']} in place of $neq""" in ne and '"one of"' not in ne
    negated = _message({"lang": {"$not": {"en"}}})  # the suggestion replaces the set under $not
    assert "{'lang': ['en']}" not in negated and "['en']" in negated


def test_set_inside_a_list_shows_the_whole_value_without_a_partial_suggestion() -> None:
    message = _message({"tags": [{"en"}, "fr"]})
    assert "{'en'} in [{'en'}, 'fr'] is a set" in message
    assert "{'tags': ['en']}" not in message and "{'$in': ['en']}" not in message
    message = _message({"tags": {"$in": ["de", frozenset({"en"})]}})
    assert "frozenset({'en'}) in ['de', frozenset({'en'})] is a set" in message


def test_hybrid_and_langchain_stores_refuse_views_and_iterables() -> None:
    from kl_retrievers.hybrid import KLHybridStore

    hybrid = KLHybridStore(make_tiny_encoder())
    hybrid.add(["the cat", "a dog", "tea"], ids=IDS, metadatas=METAS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*set-like \(dict_keys\)"):
        hybrid.search("cat", k=3, filter={"lang": _lang_keys()})
    with pytest.raises(ValueError, match=r"filter on 'n': .*is a range"):
        hybrid.search("cat", k=3, filter={"n": range(3)})
    assert _ids(hybrid.search("cat", k=3, filter={"lang": {"$in": _lang_keys()}})) == ["a", "b"]
    pytest.importorskip("langchain_core")
    from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

    vs = KLVectorStore(KLEmbeddings(make_tiny_encoder()))
    with pytest.raises(ValueError, match=r"filter on 'lang': .*is a generator"):
        vs.similarity_search("cat", k=3, filter={"lang": (x for x in ["en"])})  # empty
    vs.add_texts(["the cat", "a dog", "tea"], METAS, ids=IDS)
    with pytest.raises(ValueError, match=r"filter on 'lang': .*set-like \(dict_keys\)"):
        vs.similarity_search("cat", k=3, filter={"lang": _lang_keys()})
    found = vs.similarity_search("cat", k=3, filter={"lang": {"$in": _lang_keys()}})
    assert sorted(str(d.id) for d in found) == ["a", "b"]


def test_milvus_expressions_refuse_views_and_iterables_naming_the_key() -> None:
    pytest.importorskip("pymilvus")
    from kl_retrievers.milvus import to_milvus_expr

    for make, key, says in NO_VALUE:
        with pytest.raises(ValueError, match=rf"filter on {key!r}: .*{says}"):
            to_milvus_expr(make())
    with pytest.raises(ValueError, match=r"filter on 'tags': \{'en'\} in \('de', \{'en'\}\) is a set") as info:
        to_milvus_expr({"tags": ("de", {"en"})})
    assert "got list" not in str(info.value)
    with pytest.raises(ValueError, match=r"\$gt compares with a single value"):
        to_milvus_expr({"n": {"$gt": {1}}})
    assert to_milvus_expr({"lang": {"$in": _lang_keys()}}) == to_milvus_expr({"lang": {"$in": ["en", "de"]}})
    assert to_milvus_expr({"lang": {"$nin": _lang_keys()}}) == to_milvus_expr({"lang": {"$nin": ["en", "de"]}})


def test_milvus_store_takes_a_view_as_in_values(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store import MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "views.db"), collection_name="c", index_type="flat")
    store.add(gaussians=Gaussians(np.zeros((3, 2)), np.ones((3, 2))), ids=IDS, metadatas=METAS)
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": _lang_keys()}})) == ["a", "b"]
    many = {f"x{i}": i for i in range(200)} | {"fr": 0}  # a long $in list: resolved to ids on Milvus Lite
    assert _ids(store.search(QUERY, k=3, filter={"lang": {"$in": many.keys()}})) == ["c"]
    with pytest.raises(ValueError, match=r"filter on 'lang': .*set-like \(dict_keys\)"):
        store.search(QUERY, k=3, filter={"lang": _lang_keys()})


# --------------------------------------------------------------- large values in messages and checks
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"k": {"$in": [*range(100_000), {1}]}}, "{1} in [0, 1, 2,"),
        ({"k": [*range(100_000), {1}]}, "{1} in [0, 1, 2,"),
        ({"k": {"$in": [*range(100_000), (x for x in [1])]}}, "is a generator"),
        ({"k": {"$nin": dict.fromkeys(range(100_000), 0).values()}}, "got dict_values([0, 0, 0,"),
    ],
)
def test_an_error_on_a_large_value_quotes_it_shortened(spec: dict[str, Any], expected: str) -> None:
    """A bad element of a 100k-element list is named without repeating the list (it made a 689,070-char message)."""
    with pytest.raises(ValueError, match="filter on 'k'") as info:
        compile_filter(spec)
    message = str(info.value)
    assert expected in message
    assert len(message) < 1000 and "..." in message


def test_a_numeric_array_of_in_values_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an object array can hold a set: a numeric one is not checked element by element."""
    import kl_retrievers.filters as filters

    calls: list[Any] = []
    check = filters._check_value

    def counting(*args: Any) -> None:
        calls.append(args[1])
        check(*args)

    monkeypatch.setattr(filters, "_check_value", counting)
    predicate = compile_filter({"n": {"$in": np.arange(1000)}})
    assert calls == []
    assert predicate is not None and predicate({"n": 3}) and not predicate({"n": 1000})
    with pytest.raises(ValueError, match=r"\{3\} in .* is a set"):  # an object array is still walked
        compile_filter({"n": {"$in": np.array([1, {3}], dtype=object)}})
    assert calls


@pytest.mark.parametrize("spec", [{"n": set(range(100_000))}, {"n": {"$eq": set(range(100_000))}}])
def test_a_huge_set_gets_a_short_message(spec: dict[str, Any]) -> None:
    """The hint quotes a shortened value: a 100k-element set gave a message of about 1.4 million characters."""
    with pytest.raises(ValueError, match=r"is a set") as info:
        compile_filter(spec)
    assert len(str(info.value)) < 1000 and "..." in str(info.value)
