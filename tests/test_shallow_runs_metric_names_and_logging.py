"""Shallow-run warnings, metric names, the CLI's logging across threads and Milvus' close (a second review round).

Each test fails on the code before its fix: ``MilvusKLStore.close()`` (and so leaving a ``with`` block) closed
a client the caller passed as ``client=``, and a closed store failed with pymilvus' "should create connection
first"; two threads running the command line at once lost log lines (the first to end removed the handler the
second logged through); ``RetrievalEvaluator`` warned about a shallow depth late, from library code, at every
evaluation, and refused ir_measures' spellings that ``evaluate_model`` takes; ``run_evaluate``, the training
command and ``python -m kl_retrievers.onnx_cli`` called ``logging.basicConfig`` in the caller's process; the
depth warning fired when the run held the whole corpus; bad ``metrics`` values raised ``IndexError`` or named
``110`` for ``b"ndcg@10"``; and the depth warning had no category of its own to filter.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

import kl_retrievers.evaluation as evaluation
from conftest import bare_root_logger, make_tiny_encoder, write_tiny_beir
from kl_retrievers.cli import _cli_logging, build_parser, main
from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.evaluation import evaluate_model, evaluate_run

#: The tiny collection's judgements (``write_tiny_beir``): query 1 has two relevant documents.
QRELS = "1\td1\t1\n1\td3\t1\n2\td2\t1\n3\td4\t1\n"


def _beir(root: Path) -> Path:
    return write_tiny_beir(root, QRELS)


@pytest.fixture
def dataset(tmp_path: Path) -> BeirDataset:
    return load_beir(_beir(tmp_path / "beir"), "test")


def _depth_messages(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if "below the cutoff" in str(w.message)]


# ---------------------------------------------------------------- 1. MilvusKLStore and a caller's client


def test_milvus_store_leaves_a_given_client_open_and_a_closed_store_says_so(tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite")
    from pymilvus import MilvusClient

    from kl_retrievers.milvus import MilvusKLStore

    client = MilvusClient(str(tmp_path / "given.db"))
    try:
        with MilvusKLStore(client=client, collection_name="c", index_type="flat", dim=4) as store:
            assert len(store) == 0
        assert client.list_collections() == ["c"]  # the caller's client still works after the with block
        again = MilvusKLStore(client=client, collection_name="c")  # and serves another store
        assert len(again) == 0
        again.close()
        assert client.has_collection("c")
        with pytest.raises(RuntimeError, match=r"MilvusKLStore\(collection='c'\) is closed"):
            len(store)
        assert repr(store).startswith("MilvusKLStore(client=MilvusClient, collection='c'")
    finally:
        client.close()
    owned = MilvusKLStore(uri=str(tmp_path / "own.db"), collection_name="c", index_type="flat", dim=4)
    owned.close()
    with pytest.raises(RuntimeError, match="is closed"):
        owned.drop()
    with pytest.raises(RuntimeError, match="is closed"), owned:  # entering a closed store is refused too
        pass
    owned.close()  # closing twice still does nothing


# ---------------------------------------------------------------- 2. two threads running the command line


def test_two_overlapping_cli_commands_keep_their_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A (no -v) starts first, B (-v) starts while A runs, A ends before B logs: B's lines are all shown."""
    log = logging.getLogger("kl_retrievers.demo_round2")
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def command_a() -> None:
        with _cli_logging(False):
            a_in.set()
            assert b_in.wait(30)
        a_done.set()

    def command_b() -> None:
        assert a_in.wait(30)
        with _cli_logging(True):
            b_in.set()
            assert a_done.wait(30)
            log.info("B info line")
            log.warning("B warning line")

    def guarded(target: Any) -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    with bare_root_logger() as root:
        threads = [threading.Thread(target=guarded, args=(f,)) for f in (command_a, command_b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        assert root.handlers == [] and root.level == logging.WARNING  # the last to end removed the handler
    err = capsys.readouterr().err
    assert "INFO kl_retrievers.demo_round2: B info line" in err, err
    assert "WARNING kl_retrievers.demo_round2: B warning line" in err, err


def test_nested_cli_logging_keeps_the_handler_until_the_outer_call_ends(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("kl_retrievers.demo_round2")
    with bare_root_logger() as root:
        root.setLevel(logging.ERROR)
        with _cli_logging(True):
            with _cli_logging(False):
                assert len(root.handlers) == 1
            assert len(root.handlers) == 1 and root.level == logging.INFO
            log.info("after the inner call")
        assert root.handlers == [] and root.level == logging.ERROR  # the level the first entry found
    assert "INFO kl_retrievers.demo_round2: after the inner call" in capsys.readouterr().err


# ---------------------------------------------------------------- 3, 4. RetrievalEvaluator


def test_retrieval_evaluator_warns_once_where_it_is_made(dataset: BeirDataset) -> None:
    pytest.importorskip("torch")
    from kl_retrievers.training.trainer import RetrievalEvaluator

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        evaluator = RetrievalEvaluator(dataset, metric="recall@100", k=2)
        made = _depth_messages(seen)
        assert len(made) == 1 and made[0].startswith("k=2 is below the cutoff of recall@100"), made
        assert [Path(w.filename).name for w in seen if "below the cutoff" in str(w.message)] == [Path(__file__).name]
        encoder = make_tiny_encoder()
        for _ in range(2):
            assert set(evaluator(encoder)) == {"recall@100"}
    assert len(_depth_messages(seen)) == 1, [str(w.message) for w in seen]  # none from the evaluations


def test_retrieval_evaluator_function_warns_at_its_callers_line(dataset: BeirDataset) -> None:
    pytest.importorskip("torch")
    from kl_retrievers.training.trainer import retrieval_evaluator

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        retrieval_evaluator(dataset, metric="map@100", k=3)
    shallow = [w for w in seen if "below the cutoff" in str(w.message)]
    assert [(Path(w.filename).name, w.category) for w in shallow] == [
        (Path(__file__).name, evaluation.ShallowRunWarning)
    ]


@pytest.mark.parametrize(
    ("spelled", "reported"), [("nDCG@10", "ndcg@10"), ("R@100", "recall@100"), ("MRR@10", "mrr@10")]
)
def test_retrieval_evaluator_takes_the_metric_spellings_evaluate_model_takes(
    dataset: BeirDataset, spelled: str, reported: str
) -> None:
    pytest.importorskip("torch")
    from kl_retrievers.training.trainer import RetrievalEvaluator

    evaluator = RetrievalEvaluator(dataset, metric=spelled)
    assert evaluator.metric == reported and evaluator.description()["metric"] == reported
    assert set(evaluator(make_tiny_encoder())) == {reported}
    with pytest.raises(ValueError, match=r"metric must be one of .*; got 'P@10'"):
        RetrievalEvaluator(dataset, metric="P@10")


def test_train_eval_metric_built_in_code_is_read_as_evaluate_model_reads_it(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from kl_retrievers.training.cli import _load_eval_data

    args = argparse.Namespace(
        eval_data=str(_beir(tmp_path / "beir")),
        eval_split="test",
        eval_every=None,
        eval_metric="nDCG@10",
        out=str(tmp_path / "out"),
    )
    loaded = _load_eval_data(args, tmp_path / "out", tmp_path / "ckpt")
    assert loaded is not None and args.eval_metric == "ndcg@10"
    args.eval_metric = "P@10"
    with pytest.raises(ValueError, match=r"--eval-metric must be one of .*; got 'P@10'"):
        _load_eval_data(args, tmp_path / "out", tmp_path / "ckpt")


# ---------------------------------------------------------------- 5. library entry points leave logging alone


def test_run_evaluate_called_directly_leaves_the_root_logger_alone(tmp_path: Path) -> None:
    from kl_retrievers.evaluate_cli import run_evaluate

    args = build_parser().parse_args(["evaluate", str(tmp_path / "none"), "--baseline", "bm25", "--no-progress"])
    with bare_root_logger() as root:
        assert run_evaluate(args) == 2
        assert root.handlers == [] and root.level == logging.WARNING


def test_training_main_in_process_leaves_the_root_logger_alone(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from kl_retrievers.training.cli import main as train_main

    with bare_root_logger() as root:
        assert train_main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
        assert root.handlers == [] and root.level == logging.WARNING


def test_onnx_cli_main_in_process_leaves_the_root_logger_alone(tmp_path: Path) -> None:
    from kl_retrievers.onnx_cli import main as onnx_main

    with bare_root_logger() as root:
        assert onnx_main(["export", str(tmp_path / "no-such-model"), str(tmp_path / "out")]) == 2
        assert root.handlers == [] and root.level == logging.WARNING


# ---------------------------------------------------------------- 6, 9. the depth warning


def test_no_depth_warning_when_the_run_holds_every_document(dataset: BeirDataset) -> None:
    encoder = make_tiny_encoder()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        full = evaluate_model(encoder, dataset, k=4, show_progress=False, use_cache=False)  # 4 documents
        assert _depth_messages(seen) == []
        evaluate_model(encoder, dataset, k=3, show_progress=False, use_cache=False)
    shallow = [w for w in seen if "below the cutoff" in str(w.message)]
    assert len(shallow) == 1 and shallow[0].category is evaluation.ShallowRunWarning
    deep = evaluate_model(encoder, dataset, k=100, show_progress=False, use_cache=False)
    assert full.aggregate == deep.aggregate  # why no warning: the figures are those of the default depth


def test_cli_evaluate_does_not_warn_when_the_depth_reaches_the_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = _beir(tmp_path / "beir")
    caplog.set_level(logging.WARNING)
    assert main(["evaluate", str(root), "--baseline", "bm25", "--json", "--no-progress", "--depth", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["depth"] == 4
    assert not [r for r in caplog.records if "below the cutoff" in r.getMessage()]
    caplog.clear()
    assert main(["evaluate", str(root), "--baseline", "bm25", "--json", "--no-progress", "--depth", "3"]) == 0
    messages = [r.getMessage() for r in caplog.records if "below the cutoff" in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith("--depth 3 is below the cutoff"), messages


def test_the_depth_warning_has_its_own_category() -> None:
    assert issubclass(evaluation.ShallowRunWarning, UserWarning)
    assert "ShallowRunWarning" in evaluation.__all__


# ---------------------------------------------------------------- 8. bad metrics values


@pytest.mark.parametrize(
    ("metrics", "error", "named"),
    [
        ([], ValueError, "no metric given (metrics=[])"),
        (None, TypeError, "not None"),
        (b"ndcg@10", TypeError, "not b'ndcg@10'"),
        ([b"ndcg@10"], TypeError, "not b'ndcg@10'"),
    ],
)
def test_bad_metrics_values_are_named_with_the_choices(metrics: Any, error: type[Exception], named: str) -> None:
    qrels, run = {"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}
    with pytest.raises(error) as info:
        evaluate_run(qrels, run, metrics)
    assert named in str(info.value) and "['map@100', 'mrr@10', 'ndcg@10', 'recall@100']" in str(info.value)
