"""Cleanups: the evaluate command's own advice, and the lenient config readers of ``_config``.

1. ``kl-retrievers evaluate`` turned two library errors into command-line advice by rewriting their
   text (``str(exc).replace(...)``): a change of the library's wording would silently show the Python
   keyword again. An unknown document now carries its option as data (``DatasetError.option``), and an
   ONNX export on the torch backend is recognised by the folder, not by the message.
2. ``describe_saved_folder`` reads ``config.json`` through ``_io.read_json_object`` (same answers), and
   ``read_encoder_meta`` reads it as UTF-8 whatever the locale.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kl_retrievers.cli import main
from kl_retrievers.datasets import DatasetError, load_beir

CORPUS = [{"_id": "d1", "title": "", "text": "cat sat mat"}, {"_id": "d2", "title": "", "text": "dog ran far"}]
QUERIES = [{"_id": "q1", "text": "cat mat"}, {"_id": "q2", "text": "dog"}]


def _beir(root: Path, qrels: str = "q1\td1\t1\nq2\td2\t1\n") -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------- 1a. DatasetError carries its option


def test_an_unknown_document_error_carries_its_option_as_data(tmp_path: Path) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\t1\nq2\td9\t1\n")
    with pytest.raises(DatasetError) as info:
        load_beir(root, "test")
    err = info.value
    assert err.option == ("unknown_docs", "drop") and err.line == 2 and err.path is not None
    assert err.path.endswith("test.tsv") and "'d9'" in err.reason and "unknown_docs" not in err.reason
    # str() is the Python spelling (unchanged); describe() spells the option another way, nothing else changes
    assert str(err) == err.describe() and str(err).endswith(
        "; pass unknown_docs='drop' to skip judgements of documents outside the corpus"
    )
    flag = err.describe(lambda keyword, value: f"--{keyword} {value}")
    assert flag == str(err).replace("unknown_docs='drop'", "--unknown_docs drop")
    plain = DatasetError("bad", path="x.tsv", line=3)
    assert plain.option is None and plain.describe(lambda k, v: "never") == str(plain) == "x.tsv, line 3: bad"


def test_evaluate_spells_the_option_of_any_dataset_error_as_its_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The advice follows the error's data, not its text: reworded library messages still name the flag."""
    import kl_retrievers.evaluate_cli as evaluate_cli

    def reworded(*args: object, **kwargs: object) -> None:
        raise DatasetError(
            "judgement of a document the corpus lacks: 'd9'",
            path="qrels/test.tsv",
            line=2,
            option=("unknown_docs", "drop"),
            option_effect="to ignore such judgements",
        )

    monkeypatch.setattr(evaluate_cli, "load_beir", reworded)
    assert main(["evaluate", str(_beir(tmp_path / "beir")), "--baseline", "bm25", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        "kl-retrievers evaluate: error: qrels/test.tsv, line 2: judgement of a document the corpus lacks: 'd9'; "
        "pass --unknown-docs drop to ignore such judgements" in err
    ), err
    assert "unknown_docs" not in err


def test_evaluate_keeps_other_dataset_errors_as_they_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _beir(tmp_path / "beir", "q1\td1\tx\n")
    assert main(["evaluate", str(root), "--baseline", "bm25", "--no-progress"]) == 2
    err = capsys.readouterr().err
    with pytest.raises(DatasetError) as info:
        load_beir(root, "test")
    assert f"kl-retrievers evaluate: error: {info.value}\n" in err and "score 'x' is not a number" in err


# ---------------------------------------------------------------- 1b. an ONNX export on the torch backend


def _fake_onnx_export(folder: Path) -> Path:
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not read")
    (folder / "config.json").write_text("{}")
    return folder


needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="evaluate's torch backend needs torch"
)


@needs_torch
def test_evaluate_an_onnx_export_on_torch_gives_its_own_advice_whatever_the_library_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.pretrained as pretrained

    def refuse(name_or_path: str, **kwargs: object) -> None:  # the library's typed error, its text reworded
        err = pretrained.OnnxExportOnTorchError(name_or_path)
        err.args = (f"{name_or_path}: an ONNX export; use backend='onnx' (reworded)",)
        raise err

    monkeypatch.setattr(pretrained, "load_model", refuse)
    ds, folder = _beir(tmp_path / "ds"), _fake_onnx_export(tmp_path / "export")
    assert main(["evaluate", str(ds), "--model", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"kl-retrievers evaluate: error: {folder} holds an ONNX export (model.onnx), which runs on ONNX Runtime "
        "only; pass --model-backend onnx (evaluate's default backend is torch, that of the logged figures)"
    ), err


@needs_torch
def test_evaluate_passes_other_model_errors_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kl_retrievers.pretrained as pretrained

    def refuse(name_or_path: str, **kwargs: object) -> None:
        raise ValueError(f"{name_or_path}: something else is wrong")

    monkeypatch.setattr(pretrained, "load_model", refuse)
    ds = _beir(tmp_path / "ds")
    plain = tmp_path / "plain"
    plain.mkdir()  # no model.onnx: not an ONNX export
    assert main(["evaluate", str(ds), "--model", str(plain), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"kl-retrievers evaluate: error: {plain}: something else is wrong"
    export = _fake_onnx_export(tmp_path / "export")  # on the onnx backend the library's message stands
    assert main(["evaluate", str(ds), "--model", str(export), "--model-backend", "onnx", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"kl-retrievers evaluate: error: {export}: something else is wrong"
    # without --model (the default model) the library's message stands too, no internal error
    assert main(["evaluate", str(ds), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == "kl-retrievers evaluate: error: None: something else is wrong"


# ---------------------------------------------------------------- 2. _config's JSON readers


@pytest.mark.parametrize(
    ("content", "want"),
    [
        (None, None),  # no config.json
        (b"{not json", None),
        (b"[1, 2]", None),  # JSON, not an object
        (b'"kl-retrievers/klstore"', None),
        (b"\xff\xfe{}", None),  # not UTF-8
        (b'\xef\xbb\xbf{"format": "kl-retrievers/klstore"}', None),  # a BOM: not JSON for json.loads
        (b'{"model_type": "bert"}', None),  # an object nobody here wrote
        (b'{"format": "kl-retrievers/klstore"}', "a saved KL store (load it with KLStore.load)"),
        (
            b'{"library": "kl_retrievers", "kind": "gaussians"}',
            "saved Gaussians (load them with kl_retrievers.load_gaussians)",
        ),
    ],
)
def test_describe_saved_folder_answers_as_before(tmp_path: Path, content: bytes | None, want: str | None) -> None:
    from kl_retrievers._config import describe_saved_folder

    if content is not None:
        (tmp_path / "config.json").write_bytes(content)
    assert describe_saved_folder(tmp_path) == want
    assert describe_saved_folder(tmp_path / "missing") is None


def test_describe_saved_folder_of_a_folder_named_config_json(tmp_path: Path) -> None:
    from kl_retrievers._config import describe_saved_folder

    (tmp_path / "config.json").mkdir()  # unreadable as a file: None, not an error
    assert describe_saved_folder(tmp_path) is None


def test_read_encoder_meta_reads_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Under an ASCII locale (no UTF-8 mode), a hand-written config.json with non-ASCII text is still valid JSON."""
    meta = {"library": "kl_retrievers", "encoder": {"dim": 4}, "note": "modèle entraîné"}
    (tmp_path / "config.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    code = (
        "import json, sys; from pathlib import Path; from kl_retrievers._config import read_encoder_meta; "
        "print(json.dumps(read_encoder_meta(Path(sys.argv[1]))))"
    )
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == meta
