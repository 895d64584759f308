"""Benchmark scripts that must not overwrite hand-written text or shipped parameters, and their command lines:
explicit flags win over ``--quick``, counts of 0 are refused, bad inputs stop before any work, default outputs
are anchored to the repository (not the working folder)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import adapter_latency  # noqa: E402
import ann  # noqa: E402
import bm25_stemming  # noqa: E402
import calibration  # noqa: E402
import encode  # noqa: E402
import gpu_lora  # noqa: E402
import hybrid  # noqa: E402
import hybrid_speed  # noqa: E402
import onnx_session  # noqa: E402
import qpp  # noqa: E402
import reliability  # noqa: E402
import results_more  # noqa: E402
import train_heads_experiments  # noqa: E402
import train_zero_shot  # noqa: E402
import wise_ft  # noqa: E402

from conftest import make_tiny_encoder, random_gaussians  # noqa: E402
from kl_retrievers.datasets import BeirDataset, load_beir  # noqa: E402
from kl_retrievers.evaluation import load_per_query  # noqa: E402
from kl_retrievers.gaussian import Gaussians  # noqa: E402
from kl_retrievers.hybrid import ADAPTIVE_PARAMS_PATH, AdaptiveParams, KLHybridStore  # noqa: E402
from kl_retrievers.pretrained import bundled_model_path, load_model  # noqa: E402

COLLECTIONS = {
    "scifact": "SciFact",
    "nfcorpus-preprocessed": "NFCorpus",
    "cranfield": "Cranfield",
    "trec-dl21-passage-pooled": "TREC DL21",
}


class _Reached(Exception):
    """Raised by a stub: the script got past its argument checks to real work."""


def _reached(*_: Any, **__: Any) -> Any:
    raise _Reached


# ------------------------------------------------------------------ encode.py


class _FakeEncoder:
    def encode_documents(self, *_: Any, **__: Any) -> None:
        return None

    def encode(self, *_: Any, **__: Any) -> None:
        return None


@pytest.fixture
def fake_encode_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``encode.main`` runs end to end on stubs: no model, no data, no timing; its default page is under tmp."""
    fake_st = types.ModuleType("sentence_transformers")
    fake_st.SentenceTransformer = lambda *_, **__: _FakeEncoder()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake_st)
    monkeypatch.setattr("kl_retrievers.load_model", lambda *_, **__: _FakeEncoder())
    monkeypatch.setattr(
        "kl_retrievers.GaussianEncoder", types.SimpleNamespace(from_backbone=lambda *_, **__: _FakeEncoder())
    )
    monkeypatch.setattr("kl_retrievers.hub.resolve_model_path", lambda name: name)
    monkeypatch.setattr(encode, "load_docs", lambda n: ["a document"] * 4)
    monkeypatch.setattr(encode, "timed", lambda fn, docs: (fn(docs), 10.0)[1])
    quality = {"dataset": "scifact", "docs": 4, "queries": 2, "ndcg_torch": 0.5, "ndcg_int8": 0.5}
    quality |= {"ndcg_delta": 0.0, "uncertainty_spearman": 1.0}
    monkeypatch.setattr(encode, "quality", lambda *_, **__: dict(quality))
    monkeypatch.setattr(encode, "import_seconds", lambda *_, **__: 0.05)
    monkeypatch.setattr(encode, "REPO", tmp_path / "repo")  # a default page, if any, lands here


def _run_encode(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["encode.py", *args])
    encode.main()


@pytest.mark.usefixtures("fake_encode_run")
def test_encode_full_run_keeps_the_hand_written_text_after_the_generated_part(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The documented full run used to drop every hand-written line between the generated part and the marker."""
    page = tmp_path / "encode.md"
    page.write_text(
        "# Encoding throughput\n\nData: old run. Best of 9 interleaved rounds.\n\n"
        '`python -c "import kl_retrievers"`: 9.99 s (best of 3).\n\n'
        "Log of this run: a paragraph written by hand; the cause is not found.\n\n"
        f"{encode.KEEP_MARKER}\n## Bundled models\n\nthe --models table\n"
    )
    _run_encode(monkeypatch, "--out", str(page))
    text = page.read_text()
    assert "Best of 9" not in text and "9.99 s" not in text, text  # the generated part is new
    assert text.count("# Encoding throughput") == 1 and "0.05 s (best of 3)" in text, text
    assert "Log of this run: a paragraph written by hand; the cause is not found." in text, text
    assert text.endswith(f"{encode.KEEP_MARKER}\n## Bundled models\n\nthe --models table\n"), text
    hand = text.index("Log of this run")
    assert text.index("0.05 s (best of 3)") < hand < text.index(encode.KEEP_MARKER)


def test_encode_merge_page_round_trips_the_committed_page() -> None:
    """Regenerating the committed page's generated part leaves the page as it is."""
    page = (REPO / "docs" / "encode.md").read_text()
    end = page.index("\n", page.index(encode.GENERATED_LAST)) + 1
    assert encode.merge_page(page, page[:end]) == page
    assert encode.merge_page("", "new\n") == "new\n"
    assert encode.merge_page(f"old\n{encode.KEEP_MARKER}\nkept\n", "new\n") == f"new\n\n{encode.KEEP_MARKER}\nkept\n"


@pytest.mark.usefixtures("fake_encode_run")
def test_encode_quick_honours_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--quick --out FILE`` used to write nothing; without --out a quick run still writes no page."""
    page = tmp_path / "quick.md"
    _run_encode(monkeypatch, "--quick", "--out", str(page))
    assert page.is_file() and "Command: `python benchmarks/encode.py --quick`" in page.read_text()
    _run_encode(monkeypatch, "--quick")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("mode", [["--models", "all"], ["--quality-only"], ["--ratio-only"]])
def test_encode_out_is_refused_where_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: list[str]
) -> None:
    """``--out`` used to be ignored silently by the modes that only print."""
    for name in ("models_speed", "quality_only", "ratio_only"):
        monkeypatch.setattr(encode, name, _reached)
    with pytest.raises(SystemExit) as exc:
        _run_encode(monkeypatch, *mode, "--out", str(tmp_path / "page.md"))
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err


# ------------------------------------------------------------------ results_more.py: hybrid_section


def _hybrid_record(collections: list[str], value: float, command: str) -> dict[str, Any]:
    systems = ("bm25", "dense", "rrf", "convex", "adaptive")
    return {
        "benchmark": "hybrid",
        "model": "minilm-gauss-soup",
        "split": "test",
        "stemmer": "english",
        "adaptive_params": {"file": "kl_retrievers/data/hybrid_adaptive.json", "sha256": "0" * 64},
        "fixed_convex_scifact_train": {"weight": 0.5, "normalization": "minmax"},
        "collections": {
            c: {**{s: {"ndcg@10": value} for s in systems}, "p_adaptive_vs_convex": 0.5} for c in collections
        },
        "mean_ndcg@10": dict.fromkeys(systems, value),
        "command": command,
        "commit": "abc",
    }


def test_hybrid_section_skips_a_run_on_a_subset_of_the_collections(tmp_path: Path) -> None:
    """A ``--collections scifact`` run used to replace the four-collection table, its mean the subset's."""
    log = tmp_path / results_more.HYBRID_LOG
    log.parent.mkdir(parents=True)
    full = _hybrid_record(list(COLLECTIONS), 0.4321, "python benchmarks/hybrid.py --quick")
    subset = _hybrid_record(["scifact"], 0.9876, "python benchmarks/hybrid.py --quick --collections scifact")
    log.write_text(json.dumps(full) + "\n" + json.dumps(subset) + "\n")
    text = "\n".join(results_more.hybrid_section(tmp_path, COLLECTIONS))
    assert "0.9876" not in text and "--collections scifact" not in text, text
    assert "0.4321" in text and text.count("| mean of the 4 |") == 1, text


# ------------------------------------------------------------------ hybrid.py --fit


@pytest.fixture
def fit_args(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``hybrid.main`` stops where ``--fit`` would start fitting; the namespace it got is kept."""
    seen: dict[str, Any] = {}

    def spy(args: argparse.Namespace) -> None:
        seen["args"] = args
        raise _Reached

    monkeypatch.setattr(hybrid, "cmd_fit", spy)
    return seen


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], ADAPTIVE_PARAMS_PATH),
        (["--stemmer", "none"], ADAPTIVE_PARAMS_PATH.with_name("hybrid_adaptive.unstemmed.json")),
        (
            ["--model", "bge-small-unit-variance"],
            bundled_model_path("bge-small-unit-variance") / "hybrid_adaptive.json",
        ),
        (
            ["--model", "bge-small-unit-variance", "--stemmer", "none"],
            bundled_model_path("bge-small-unit-variance") / "hybrid_adaptive.unstemmed.json",
        ),
        (["--model", "minilm-gauss-lora"], bundled_model_path("minilm-gauss-lora") / "hybrid_adaptive.json"),
    ],
)
def test_hybrid_fit_writes_beside_the_model_and_per_stemmer_by_default(
    fit_args: dict[str, Any], flags: list[str], expected: Path
) -> None:
    """``--fit --model X`` used to overwrite the default model's shipped kl_retrievers/data/hybrid_adaptive.json."""
    with pytest.raises(_Reached):
        hybrid.main(["--fit", *flags])
    assert Path(fit_args["args"].params_out) == expected


def test_hybrid_fit_with_another_stemmer_needs_params_out(
    fit_args: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        hybrid.main(["--fit", "--stemmer", "porter"])
    assert exc.value.code == 2 and "--params-out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a hub id: no folder to write beside
        hybrid.main(["--fit", "--model", "someone/no-such-model"])
    assert exc.value.code == 2 and "--params-out" in capsys.readouterr().err
    assert "args" not in fit_args
    with pytest.raises(_Reached):
        hybrid.main(["--fit", "--stemmer", "porter", "--params-out", str(tmp_path / "p.json")])
    assert Path(fit_args["args"].params_out) == tmp_path / "p.json"


# ------------------------------------------------------------------ qpp.py


def test_qpp_quick_says_it_reprints_logged_results(capsys: pytest.CaptureFixture[str]) -> None:
    """``--quick`` re-prints a logged result; its help and runs/qpp/README.md used to imply a recomputation."""
    with pytest.raises(SystemExit):
        qpp.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "nothing is recomputed" in help_text and "Without it every collection is evaluated again" in help_text
    readme = " ".join((REPO / "runs" / "qpp" / "README.md").read_text().split())
    assert "prints that newest line and recomputes nothing" in readme


@pytest.fixture
def qpp_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A ``scifact`` folder with a test split only; loading any model raises :class:`_Reached`."""
    qrels = tmp_path / "datasets" / "scifact" / "qrels"
    qrels.mkdir(parents=True)
    (qrels / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    monkeypatch.setattr(qpp, "DATASETS", tmp_path / "datasets")
    monkeypatch.setattr("kl_retrievers.pretrained.load_model", _reached)
    cached = getattr(qpp, "load_encoder", None)  # the encoder loaded once per run (cached)
    if cached is not None:
        cached.cache_clear()
    yield tmp_path
    if cached is not None:
        cached.cache_clear()


def test_qpp_bad_split_exits_2_before_loading_the_model(qpp_datasets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --split used to load the model, then die in a DatasetError traceback."""
    with pytest.raises(SystemExit) as exc:
        qpp.main(["--collections", "scifact", "--split", "dev", "--log-dir", str(qpp_datasets / "log")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'dev'" in err and "['test']" in err, err
    assert not (qpp_datasets / "log").exists()


def test_qpp_unknown_model_exits_2_with_one_line(
    qpp_datasets: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown --model used to end in a ModelNotFoundError traceback."""
    monkeypatch.setattr("kl_retrievers.pretrained.load_model", load_model)  # the real one: no download for this name
    log = qpp_datasets / "log"
    with pytest.raises(SystemExit) as exc:
        qpp.main(["--model", "kl_retrievers:no-such-model", "--collections", "scifact", "--log-dir", str(log)])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "--model 'kl_retrievers:no-such-model' does not load" in err and "no bundled model named" in err, err
    assert "Traceback" not in err


def test_qpp_check_inputs_passes_a_logged_label_under_quick(qpp_datasets: Path) -> None:
    """A logged experiment label (no model folder) with --quick needs no model and no data."""
    log = qpp_datasets / "log"
    log.mkdir()
    record = {"model": "soup+mc20", "collection": "scifact", "split": "train"}
    (log / "qpp.jsonl").write_text(json.dumps(record) + "\n")
    parser = argparse.ArgumentParser()
    qpp.check_inputs(parser, ["soup+mc20"], ["scifact"], "train", quick=True, log_dir=log)  # no split, no model
    with pytest.raises(_Reached):  # without --quick it is evaluated again: the model must load
        qpp.check_inputs(parser, ["soup+mc20"], ["scifact"], "test", quick=False, log_dir=log)


# ------------------------------------------------------------------ --quick against explicit flags; counts


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """adapter_latency.main disables INFO logging process-wide."""
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.usefixtures("restore_logging")
def test_adapter_latency_explicit_flags_win_over_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []

    def build(n: int, texts: int, encoder: Any) -> Any:
        seen.append((n, texts))
        raise _Reached

    monkeypatch.setattr("kl_retrievers.load_default_model", lambda: object())
    monkeypatch.setattr(adapter_latency, "_build", build)
    with pytest.raises(_Reached):
        adapter_latency.main(["--quick", "--n", "100", "--texts", "7"])
    with pytest.raises(_Reached):
        adapter_latency.main(["--quick", "--texts", "7"])
    with pytest.raises(_Reached):
        adapter_latency.main([])
    assert seen == [(100, 7), (5_000, 7), (50_000, 2_000)]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("flag", ["--n", "--texts", "--queries", "--repeat"])
def test_adapter_latency_refuses_counts_below_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    monkeypatch.setattr("kl_retrievers.load_default_model", _reached)
    with pytest.raises(SystemExit) as exc:
        adapter_latency.main([flag, "0"])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_ann_sizes_win_over_quick_and_zero_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[int] = []

    def run_size(n: int, *_: Any, **__: Any) -> Any:
        seen.append(n)
        raise _Reached

    monkeypatch.setattr(ann, "run_size", run_size)
    with pytest.raises(_Reached):
        ann.main(["--quick", "--sizes", "2000"])
    with pytest.raises(_Reached):
        ann.main(["--quick"])
    assert seen == [2000, 100_000]
    for flags in (["--sizes", "0"], ["--queries", "-3"], ["--nprobe", "0"]):
        with pytest.raises(SystemExit) as exc:
            ann.main(flags)
        assert exc.value.code == 2 and flags[0] in capsys.readouterr().err


def test_hybrid_speed_zero_is_refused_and_explicit_flags_win(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--n 0`` used to run the default corpus."""
    seen: list[tuple[int, int]] = []

    def build(n: int, dim: int) -> Any:
        seen.append((n, dim))
        raise _Reached

    monkeypatch.setattr(hybrid_speed, "build_store", build)
    for flags in (["--n", "0"], ["--quick", "--dim", "0"], ["--queries", "-1"]):
        with pytest.raises(SystemExit) as exc:
            hybrid_speed.main(flags)
        assert exc.value.code == 2 and flags[-2] in capsys.readouterr().err
    with pytest.raises(_Reached):
        hybrid_speed.main(["--quick", "--n", "7"])
    assert seen == [(7, 128)]


def test_onnx_session_zero_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--rounds 0`` used to run the default 5 rounds."""
    monkeypatch.setattr(onnx_session, "OnnxGaussianEncoder", _reached)
    for flags in (["--rounds", "0"], ["--quick", "--reps", "0"], ["--docs", "0"], ["--busy", "-1"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exc:
            onnx_session.main(flags)
        assert exc.value.code == 2 and flags[-2] in capsys.readouterr().err
    with pytest.raises(_Reached):
        onnx_session.main(["--quick", "--rounds", "1"])


# ------------------------------------------------------------------ reliability.py --only


def test_reliability_only_takes_several_categories_after_one_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[str] = []

    def category(name: str) -> Any:
        def run(folder: Path, quick: bool, rng: Any) -> Any:
            ran.append(name)
            return reliability.Tally(name)

        return run

    monkeypatch.setattr(reliability, "CATEGORIES", {name: category(name) for name in ("a", "b", "c", "d")})
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(tmp_path / "cache"))  # main sets it; restored after the test
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["reliability.py", "--only", "a", "b", "--only", "d"])
    assert reliability.main() == 0
    assert ran == ["a", "b", "d"]


# ------------------------------------------------------------------ default outputs under the repository


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


def _parsed(monkeypatch: pytest.MonkeyPatch, main: Any, argv: list[str]) -> argparse.Namespace:
    """The namespace a script's ``main()`` parses from ``argv`` (it stops there)."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(original(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", ["script.py", *argv])
    with pytest.raises(_Parsed) as exc:
        main()
    return exc.value.namespace


@pytest.mark.parametrize(
    ("main", "argv", "attr", "expected"),
    [
        (bm25_stemming.main, [], "log", "runs/eval/bm25_stemming.jsonl"),
        (gpu_lora.main, ["report"], "log", "runs/gpu_lora.jsonl"),
        (gpu_lora.main, ["report"], "per_query_dir", "runs/gpu_lora"),
        (train_heads_experiments.main, ["in-domain"], "log", "runs/train_heads.jsonl"),
        (train_zero_shot.main, ["final"], "per_query_dir", "runs/zs_final"),
        (wise_ft.main, ["export", "--from", "x", "--job", "j", "--alphas", "0.5"], "out_dir", "runs/wise"),
    ],
)
def test_default_outputs_are_under_the_repository_whatever_the_working_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, main: Any, argv: list[str], attr: str, expected: str
) -> None:
    """These defaults used to be relative to the working folder: run from elsewhere, logs went astray."""
    monkeypatch.chdir(tmp_path)
    args = _parsed(monkeypatch, main, argv)
    assert Path(getattr(args, attr)).resolve() == REPO / expected


def test_wise_ft_records_the_default_out_dir_relative_to_the_repository() -> None:
    assert wise_ft._shown(REPO / "runs" / "wise") == Path("runs/wise")
    assert wise_ft._shown(Path("elsewhere")) == Path("elsewhere")


# ------------------------------------------------------------------ hybrid.py: --params follows --model


@pytest.fixture
def eval_args(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``hybrid.main`` stops where the evaluation would start; the namespace it got is kept."""
    seen: dict[str, Any] = {}

    def spy(args: argparse.Namespace) -> None:
        seen["args"] = args
        raise _Reached

    monkeypatch.setattr(hybrid, "cmd_eval", spy)
    return seen


_BGE = bundled_model_path("bge-small-unit-variance")


def test_hybrid_eval_params_default_to_the_file_the_models_store_reads(eval_args: dict[str, Any]) -> None:
    """Evaluating ``--model X`` used to read the default model's parameters unless --params was given."""
    cases = [
        ([], ADAPTIVE_PARAMS_PATH),
        (["--stemmer", "none"], ADAPTIVE_PARAMS_PATH.with_name("hybrid_adaptive.unstemmed.json")),
        (["--model", "bge-small-unit-variance"], _BGE / "hybrid_adaptive.json"),
        (["--model", "bge-small-unit-variance", "--stemmer", "none"], _BGE / "hybrid_adaptive.unstemmed.json"),
        (["--model", "minilm-gauss-lora"], ADAPTIVE_PARAMS_PATH),  # ships none: the default model's, as a store
        (["--model", "bge-small-unit-variance", "--params", "p.json"], Path("p.json")),  # explicit wins
    ]
    got = []
    for flags, _ in cases:
        with pytest.raises(_Reached):
            hybrid.main(flags)
        got.append(Path(eval_args["args"].params))
    assert got == [expected for _, expected in cases]


def test_hybrid_eval_default_params_are_the_ones_a_store_reads(tmp_path: Path) -> None:
    """:func:`hybrid.default_params` finds the file :meth:`KLHybridStore.adaptive_params` loads, case by case."""
    folder = tmp_path / "model"  # a local model folder with stemmed parameters only, unlike every shipped file
    folder.mkdir()
    own = AdaptiveParams.load(ADAPTIVE_PARAMS_PATH).to_dict()
    own["bias"] = own["bias"] + 1.25
    (folder / "hybrid_adaptive.json").write_text(json.dumps(own))
    cases = [
        (name, stemmer) for name in ("minilm-gauss-soup", "bge-small-unit-variance") for stemmer in ("english", None)
    ]
    cases += [("minilm-gauss-lora", "english"), ("minilm-gauss-lora", None), (str(folder), None)]
    seen = set()
    for name, stemmer in cases:
        encoder = make_tiny_encoder()
        encoder.name_or_path = name
        read = KLHybridStore(encoder, stemmer=stemmer).adaptive_params().to_dict()
        path = hybrid.default_params(name, stemmer)
        assert AdaptiveParams.load(path).to_dict() == read, (name, stemmer, path)
        seen.add(path)
    assert folder / "hybrid_adaptive.json" in seen and len(seen) == 5, seen


def test_hybrid_help_and_page_say_what_params_defaults_to(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        hybrid.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--params PARAMS adaptive parameters to evaluate (default: the file a KLHybridStore of --model" in help_text
    page = " ".join((REPO / "docs" / "hybrid.md").read_text().split())
    assert "Without `--params` it evaluates the adaptive parameters a store of that `--model` and `--stemmer`" in page


# ------------------------------------------------------------------ qpp.py: one per-query file per run


@pytest.fixture
def qpp_tiny(tmp_path: Path) -> tuple[BeirDataset, Gaussians, Gaussians]:
    """A three-document, two-query BEIR split and random Gaussians of its queries and documents."""
    folder = tmp_path / "tiny"
    (folder / "qrels").mkdir(parents=True)
    docs = {"d1": "gaussian retrieval of text", "d2": "bm25 ranks words", "d3": "another text about words"}
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs.items())
    )
    queries = {"q1": "gaussian text", "q2": "ranking words"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return load_beir(folder, "test"), random_gaussians(2, 4, seed=1), random_gaussians(3, 4, seed=2)


def _start_clock(monkeypatch: pytest.MonkeyPatch, seconds: list[int]) -> None:
    """``time.gmtime()`` (the current UTC time, no argument) gives these instants in turn."""
    real, starts = time.gmtime, iter(seconds)
    monkeypatch.setattr(time, "gmtime", lambda *args: real(*args) if args else real(next(starts)))


@pytest.mark.filterwarnings("ignore:only 2 judged queries", "ignore:too few bootstrap resamples")
def test_qpp_each_run_writes_a_per_query_file_of_its_own(
    qpp_tiny: tuple[BeirDataset, Gaussians, Gaussians], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each run used to rewrite ``<model>.<collection>.<split>.json``, the file the older lines still named."""
    dataset, queries, documents = qpp_tiny
    log = tmp_path / "log"
    log.mkdir()
    legacy = log / "m.tiny.test.json"  # a committed file of the old naming: left as it is
    legacy.write_text("not touched\n")
    _start_clock(monkeypatch, [0, 1])
    first = qpp.evaluate_gaussians("m", dataset, queries, documents, log_dir=log)
    second = qpp.evaluate_gaussians("m", dataset, queries, documents, log_dir=log)
    assert legacy.read_text() == "not touched\n"
    files = [Path(r["per_query_file"]) for r in (first, second)]
    assert [f.name for f in files] == ["m.tiny.test.19700101T000000Z.json", "m.tiny.test.19700101T000001Z.json"]
    logged = [json.loads(line) for line in (log / "qpp.jsonl").read_text().splitlines()]
    assert [Path(r["per_query_file"]) for r in logged] == files
    for rec, path in zip(logged, files, strict=True):
        per_query, _ = load_per_query(path)
        assert rec["ndcg@10"] == pytest.approx(float(np.mean([m["ndcg@10"] for m in per_query.values()])), abs=1e-6)


@pytest.mark.filterwarnings("ignore:only 2 judged queries", "ignore:too few bootstrap resamples")
def test_qpp_never_overwrites_a_per_query_file(
    qpp_tiny: tuple[BeirDataset, Gaussians, Gaussians], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A run that would write an existing per-query file stops before any work: no file rewritten, no line."""
    dataset, queries, documents = qpp_tiny
    log = tmp_path / "log"
    _start_clock(monkeypatch, [0, 0])
    first = qpp.evaluate_gaussians("m", dataset, queries, documents, log_dir=log)
    path = Path(first["per_query_file"])
    before = path.read_bytes()
    monkeypatch.setattr(qpp, "retrieve_exact", _reached)
    with pytest.raises(FileExistsError, match="not overwriting the per-query file of an earlier run"):
        qpp.evaluate_gaussians("m", dataset, queries, documents, log_dir=log)
    assert path.read_bytes() == before
    assert len((log / "qpp.jsonl").read_text().splitlines()) == 1


def test_qpp_claims_a_per_query_file_atomically(tmp_path: Path) -> None:
    """Two runs starting in the same second both passed the exists() check: now one claims the name, one stops."""
    path = tmp_path / "log" / "m.tiny.test.19700101T000000Z.json"
    barrier, refused = threading.Barrier(2), []

    def claim() -> None:
        barrier.wait()
        try:
            qpp._refuse_existing(path)
        except FileExistsError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refused) == 1 and "not overwriting" in refused[0] and path.exists()
    other = tmp_path / "other.json"
    other.write_text("claimed by process 1 thread 2\n")  # another process's claim, its run not written yet
    with pytest.raises(FileExistsError, match="not overwriting"):
        qpp._refuse_existing(other)


def _qpp_log(log: Path, files: list[Path]) -> None:
    """``qpp.jsonl`` lines of the default on SciFact test naming ``files``, oldest first (nDCG@10: the index)."""
    log.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        row = {"ndcg@10": float(i), "mrr@10": 1.0, "uncertainty": 0.5, "qpp.max_score": -1.0, "qpp.gap12": 0.25}
        path.write_text(json.dumps({"meta": {"command": f"run {i}"}, "per_query": {"q1": row}}), encoding="utf-8")
        line = {"model": qpp.REFERENCE_MODEL, "collection": "scifact", "split": "test", "per_query_file": str(path)}
        with (log / "qpp.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")


def test_calibration_from_log_reads_the_file_the_newest_qpp_line_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read the fixed ``runs/qpp/minilm-gauss-soup.scifact.test.json``, which newer runs no longer write."""
    log = tmp_path / "qpp"
    legacy, newer = log / f"{qpp.REFERENCE_MODEL}.scifact.test.json", log / "newer.json"
    _qpp_log(log, [legacy, newer])
    monkeypatch.setattr(calibration, "LOG_DIR", log)
    monkeypatch.setattr(calibration, "CALIB_DIR", log / "calib")
    calibration.cmd_from_log(argparse.Namespace(sets=["scifact:test"]))
    meta = json.loads((log / "calib" / "scifact.test.json").read_text(encoding="utf-8"))["meta"]
    assert meta["source"] == str(newer) and meta["ndcg@10"] == 1.0 and meta["source_command"] == "run 1"
    with pytest.raises(SystemExit, match="no line of .* on cranfield:test"):
        calibration.cmd_from_log(argparse.Namespace(sets=["cranfield:test"]))


class _Fitted:
    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def save(self, path: Path) -> None:
        pass


@pytest.mark.filterwarnings("ignore:only 2 judged queries")
def test_calibration_combined_writes_a_per_query_file_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``combined`` overwrote ``minilm-gauss-soup_combined.<collection>.<split>.json`` and logged a line naming it."""
    import kl_retrievers.qpp

    root = tmp_path.resolve()
    log = root / "runs" / "qpp"
    log.mkdir(parents=True)
    legacy = log / "minilm-gauss-soup_combined.scifact.test.json"
    legacy.write_text("not touched\n")
    rows = {q: {"uncertainty": u, "ndcg@10": u} for q, u in (("q1", 0.25), ("q2", 0.75))}
    for name, value in {
        "ROOT": root,
        "LOG_DIR": log,
        "COMBINED_FILE": log / "c.json",
        "TEST_SETS": ("scifact:test",),
    }.items():
        monkeypatch.setattr(calibration, name, value)
    monkeypatch.setattr(calibration, "COMBINED_CANDIDATES", {"c": ("uncertainty",)})
    monkeypatch.setattr(calibration, "choose", lambda *a: ("c", {}))
    monkeypatch.setattr(calibration, "training_arrays", lambda *a: {})
    monkeypatch.setattr(calibration, "train_info", lambda *a: [])
    monkeypatch.setattr(calibration, "fit_pooled", lambda *a: _Fitted())
    monkeypatch.setattr(calibration, "read_calib", lambda spec: (rows, {}))
    monkeypatch.setattr(calibration, "features_of", lambda r, f: np.zeros((len(r), 1)))
    conf = types.SimpleNamespace(features=[], predict=lambda x: np.full(len(x), 0.5))
    monkeypatch.setattr(calibration, "ConfidenceCalibrator", types.SimpleNamespace(load=lambda path: conf))
    monkeypatch.setattr(kl_retrievers.qpp, "fitted_predictor", lambda values, model: dict(values["uncertainty"]))
    monkeypatch.setattr(kl_retrievers.qpp, "qpp_report", lambda *a, **k: {"predictors": {}})
    args = argparse.Namespace(l2=1.0, calibrator=root / "cal.json", verbose=False)
    _start_clock(monkeypatch, [0, 1, 1])
    calibration.cmd_combined(args)
    calibration.cmd_combined(args)
    with pytest.raises(FileExistsError, match="not overwriting"):
        calibration.cmd_combined(args)  # started in the same second as the one before
    assert legacy.read_text() == "not touched\n"
    logged = [json.loads(line) for line in (log / "qpp.jsonl").read_text().splitlines()]
    files = [Path(r["per_query_file"]).name for r in logged]
    stamps = ["19700101T000000Z", "19700101T000001Z"]
    assert files == [f"minilm-gauss-soup_combined.scifact.test.{t}.json" for t in stamps]
    for rec in logged:
        assert load_per_query(root / rec["per_query_file"])[0]["q2"]["qpp.combined"] == 0.75


def test_hybrid_fit_writes_beside_a_model_named_with_the_kl_retrievers_prefix() -> None:
    """``--fit --model kl_retrievers:bge-small-unit-variance`` needed ``--params-out``."""
    folder = bundled_model_path("bge-small-unit-variance")
    assert (
        hybrid.default_params_out("kl_retrievers:bge-small-unit-variance", "english") == folder / "hybrid_adaptive.json"
    )
    assert hybrid.default_params_out(f"kl_retrievers:{hybrid.MODEL}", None) == hybrid.default_params_out(
        hybrid.MODEL, None
    )


# ------------------------------------------------------------------ claims of runs that raise


@pytest.mark.filterwarnings("ignore:only 2 judged queries", "ignore:too few bootstrap resamples")
@pytest.mark.parametrize("step", ["gaussian_query_stats", "save_per_query"])
def test_qpp_run_that_raises_leaves_no_placeholder(
    step: str, qpp_tiny: tuple[BeirDataset, Gaussians, Gaussians], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A run that raised between its claim and its per-query file left the placeholder under the run's name."""
    dataset, queries, documents = qpp_tiny
    log = tmp_path / "log"
    _start_clock(monkeypatch, [0, 0])
    monkeypatch.setattr(qpp, step, _reached)
    with pytest.raises(_Reached):
        qpp.evaluate_gaussians("m", dataset, queries, documents, log_dir=log)
    assert list(log.rglob("*")) == []
    monkeypatch.undo()
    _start_clock(monkeypatch, [0])  # the same second: the name is free again
    record = qpp.evaluate_gaussians("m", dataset, queries, documents, log_dir=log)
    assert Path(record["per_query_file"]).name == "m.tiny.test.19700101T000000Z.json"


def test_qpp_release_keeps_a_written_file_or_another_runs_claim(tmp_path: Path) -> None:
    """Only this run's placeholder (or an empty file) is removed; a per-query file or another claim stays."""
    mine, written, other, empty = (tmp_path / f"{n}.json" for n in ("mine", "written", "other", "empty"))
    claim = qpp._refuse_existing(mine)
    written.write_text('{"per_query": {}}')
    other.write_text("claimed by process 1 thread 2\n")
    empty.write_text("")
    for path in (mine, written, other, empty, tmp_path / "missing.json"):
        qpp._release_claim(path, claim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "written.json"]
    assert written.read_text() == '{"per_query": {}}'


@pytest.mark.parametrize("writes", [False, True])
def test_results_run_that_raises_leaves_no_empty_claim(
    writes: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """results.py run(): an interrupted evaluate left its empty claim; a per-query file it wrote stays."""
    import results

    pq_dir = tmp_path / "runs" / "eval" / "pq"
    pq_dir.mkdir(parents=True)

    def interrupted(cmd: list[str], **_: Any) -> Any:
        if writes:
            (tmp_path / cmd[cmd.index("--per-query") + 1]).write_text('{"per_query": {}}')
        raise KeyboardInterrupt

    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(results.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.run(["bm25"], ["scifact"])
    left = list(pq_dir.iterdir())
    if writes:
        assert len(left) == 1 and left[0].read_text() == '{"per_query": {}}'
    else:
        assert left == []
    assert not (tmp_path / "runs" / "eval" / "eval.jsonl").exists()
