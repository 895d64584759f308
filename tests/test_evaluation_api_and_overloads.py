"""A review of the public API as a sentence-transformers / ir-measures user meets it (evaluation, typing, logging).

Each test fails on the code before its fix: ``evaluate_model(k=1)`` reporting recall@100 read from a depth-1
run without a word (the CLI's ``--depth`` warns), ``EvaluationResult``'s repr printing every query's metrics,
``evaluate_run(metrics="ndcg@10")`` read letter by letter ("unknown metric 'n'") and ir_measures' spellings
refused, ``MilvusKLStore`` not usable in a ``with`` block, ``load_model``'s return type not narrowed by its
``backend`` (``assert_type`` below is checked by the project's mypy run over tests), and an in-process
``cli.main()`` leaving its log handler behind, so that a later ``main(["-v", ...])`` logged nothing at INFO.
"""

from __future__ import annotations

import json
import logging
import sys
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from conftest import bare_root_logger, make_tiny_encoder, milvus_lite_locked, write_tiny_beir
from kl_retrievers.cli import main
from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.encoder import GaussianEncoder
from kl_retrievers.evaluation import EvaluationResult, evaluate_model, evaluate_run
from kl_retrievers.onnx import OnnxGaussianEncoder
from kl_retrievers.pretrained import Backend, load_default_model, load_model

T = TypeVar("T")

if sys.version_info >= (3, 11):
    from typing import assert_type
elif TYPE_CHECKING:  # mypy checks at the 3.10 floor (pyproject): typeshed's typing_extensions has it
    from typing_extensions import assert_type
else:  # pragma: no cover - Python 3.10 at run time: assert_type checks nothing at run time anyway

    def assert_type(value: T, typ: object, /) -> T:
        return value


#: The tiny collection's judgements (``write_tiny_beir``): query 1 has two relevant documents.
QRELS = "1\td1\t1\n1\td3\t1\n2\td2\t1\n3\td4\t1\n"


def _beir(root: Path) -> Path:
    return write_tiny_beir(root, QRELS)


@pytest.fixture
def dataset(tmp_path: Path) -> BeirDataset:
    return load_beir(_beir(tmp_path / "beir"), "test")


# ---------------------------------------------------------------- 1. evaluate_model(k=...) below a metric's cutoff


def test_evaluate_model_warns_when_k_is_below_a_metrics_cutoff(dataset: BeirDataset, tmp_path: Path) -> None:
    encoder = make_tiny_encoder()
    with pytest.warns(UserWarning, match=r"^k=2 is below the cutoff of ndcg@10, recall@100: they are computed") as seen:
        result = evaluate_model(
            encoder, dataset, k=2, metrics=["ndcg@10", "recall@100"], show_progress=False, use_cache=False
        )
    assert [w.filename for w in seen] == [__file__]  # the caller's line, not the library's
    assert set(result.aggregate) == {"ndcg@10", "recall@100"}  # computed anyway
    assert max(len(docs) for docs in result.run.values()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default depth reaches every cutoff: no warning
        evaluate_model(encoder, dataset, show_progress=False, use_cache=False)
        evaluate_model(encoder, dataset, k=10, metrics=["ndcg@10", "mrr@10"], show_progress=False, use_cache=False)


def test_the_cli_and_the_library_share_one_depth_warning() -> None:
    from kl_retrievers.evaluation import _depth_warning

    library = _depth_warning(5, ["ndcg@10", "map@100"])
    cli = _depth_warning(5, ["ndcg@10", "map@100"], "--depth")
    assert library is not None and cli is not None
    assert library.startswith("k=5 is below the cutoff of ndcg@10, map@100: they are")
    assert cli == "--depth 5" + library.removeprefix("k=5")


def test_cli_evaluate_warns_about_its_depth_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "model"
    make_tiny_encoder().save_pretrained(model)
    root = _beir(tmp_path / "beir")
    caplog.set_level(logging.WARNING)
    # below the 4 documents of the corpus: a depth reaching them all does not warn (see the shallow-runs tests)
    argv = ["evaluate", str(root), "--model", str(model), "--json", "--no-progress", "--no-cache", "--depth", "3"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["depth"] == 3
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("--depth 3 is below the cutoff" in m for m in messages) == 1
    assert not any("k=3" in m for m in messages), messages  # evaluate_model's own text is the same warning


# ---------------------------------------------------------------- 2. EvaluationResult's repr


def test_evaluation_result_repr_leaves_the_per_query_metrics_out() -> None:
    per_query = {f"q{i}": {"ndcg@10": 0.5, "recall@100": 0.25} for i in range(5000)}
    result = EvaluationResult("data/msmarco", "dev", "m", {"ndcg@10": 0.5}, per_query, {}, {"depth": 100}, {})
    text = repr(result)
    assert len(text) < 300, len(text)
    assert "q4999" not in text and "per_query" not in text
    assert "aggregate={'ndcg@10': 0.5}" in text and "'depth': 100" in text
    assert result.per_query is per_query  # still there, just not printed


# ---------------------------------------------------------------- 3. metric names


def test_a_bare_string_is_one_metric() -> None:
    qrels, run = {"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}
    agg, per_query = evaluate_run(qrels, run, metrics="mrr@10")
    assert agg == {"mrr@10": 0.5} and per_query == {"q": {"mrr@10": 0.5}}


def test_ir_measures_spellings_and_any_case_name_the_reported_metrics() -> None:
    qrels, run = {"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}
    agg, per_query = evaluate_run(qrels, run, metrics=["nDCG@10", "RR@10", "R@100", "AP@100", "NDCG@10", "MAP@100"])
    assert list(agg) == ["ndcg@10", "mrr@10", "recall@100", "map@100"]  # reported under our names, once each
    assert agg == evaluate_run(qrels, run)[0]
    assert list(per_query["q"]) == list(agg)


@pytest.mark.parametrize("metrics", [["P@10"], "ndcg@5", ["ndcg@10", "recall@1000"]])
def test_an_unknown_metric_is_named_with_the_choices(metrics: Any) -> None:
    bad = metrics if isinstance(metrics, str) else metrics[-1]
    with pytest.raises(ValueError, match=rf"unknown metric '{bad}'; choose from \['map@100', 'mrr@10'.*nDCG@10"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, metrics=metrics)


def test_evaluate_model_takes_a_bare_metric_name_and_checks_it_before_encoding(dataset: BeirDataset) -> None:
    encoder = make_tiny_encoder()
    result = evaluate_model(encoder, dataset, metrics="nDCG@10", show_progress=False, use_cache=False)
    assert list(result.aggregate) == ["ndcg@10"]

    class NeverEncodes:
        name_or_path = "never-encodes"
        config: Any = None

        def encode_queries(self, *args: Any, **kw: Any) -> Any:
            raise AssertionError("encoded before the metric was checked")

        encode_documents = encode_queries

    with pytest.raises(ValueError, match="unknown metric 'ndcg@5'"):
        evaluate_model(NeverEncodes(), dataset, metrics="ndcg@5", show_progress=False, use_cache=False)


# ---------------------------------------------------------------- 4. MilvusKLStore as a context manager


def test_milvus_store_closes_on_leaving_a_with_block_and_a_second_close_does_nothing(tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite")
    from kl_retrievers.milvus import MilvusKLStore

    path = str(tmp_path / "kl.db")
    with MilvusKLStore(uri=path, collection_name="c", index_type="flat", dim=4) as store:
        assert isinstance(store, MilvusKLStore) and len(store) == 0
        assert milvus_lite_locked(path)
    assert not milvus_lite_locked(path)  # closed: another process may open the file now
    store.close()  # closing twice does nothing
    # an exception inside the block propagates, and the store is closed all the same
    with pytest.raises(KeyError, match="raised inside"), MilvusKLStore(uri=path, collection_name="c") as again:
        assert again.dim == 4
        raise KeyError("raised inside")
    assert not milvus_lite_locked(path)
    first = MilvusKLStore(uri=path, collection_name="c")
    second = MilvusKLStore(uri=path, collection_name="c")  # the same file, served once in this process
    first.close()
    first.close()  # a second close does not count as the second store's
    assert milvus_lite_locked(path) and len(second) == 0
    second.close()
    assert not milvus_lite_locked(path)


# ---------------------------------------------------------------- 5. load_model's type follows its backend


def test_load_model_overloads_narrow_the_class_by_backend() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("typing.get_overloads needs Python 3.11")
    for function in (load_model, load_default_model):
        overloads = typing.get_overloads(function)
        shown = [(o.__annotations__["backend"], o.__annotations__["return"]) for o in overloads]
        assert shown == [
            ("Literal['torch']", "GaussianEncoder"),
            ("Literal['onnx']", "OnnxGaussianEncoder"),
            ("Backend | None", "GaussianEncoder | OnnxGaussianEncoder"),  # a typo or a plain str: refused
        ], function.__name__


def test_load_model_returns_the_class_its_overload_names(tmp_path: Path) -> None:
    make_tiny_encoder().save_pretrained(tmp_path / "enc")
    torch_encoder = assert_type(load_model(tmp_path / "enc", backend="torch"), GaussianEncoder)
    assert isinstance(torch_encoder, GaussianEncoder)
    torch_encoder.save_pretrained(tmp_path / "again")  # a GaussianEncoder method, as the type says
    onnx_encoder = assert_type(load_default_model(backend="onnx"), OnnxGaussianEncoder)
    assert isinstance(onnx_encoder, OnnxGaussianEncoder)
    backend: Backend | None = None
    either = assert_type(load_model(tmp_path / "enc", backend=backend), GaussianEncoder | OnnxGaussianEncoder)
    assert isinstance(either, (GaussianEncoder, OnnxGaussianEncoder))


# ---------------------------------------------------------------- 6. in-process cli.main() and logging


def test_in_process_cli_calls_each_honour_verbose_and_leave_logging_as_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", str(_beir(tmp_path / "beir")), "--baseline", "bm25", "--per-query", str(tmp_path / "pq.json")]
    with bare_root_logger() as root:
        for _ in range(2):
            assert main(argv) == 0
            assert "per-query results written" not in capsys.readouterr().err  # INFO: not shown without -v
            assert root.handlers == [] and root.level == logging.WARNING  # nothing left behind
        assert main(["-v", *argv]) == 0
        err = capsys.readouterr().err
        assert root.handlers == [] and root.level == logging.WARNING
    assert f"INFO kl_retrievers.evaluate_cli: per-query results written to {tmp_path / 'pq.json'}" in err


def test_a_program_that_configured_logging_keeps_its_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beir = str(_beir(tmp_path / "beir"))
    with bare_root_logger() as root:
        mine = logging.StreamHandler(sys.stdout)
        root.addHandler(mine)
        root.setLevel(logging.ERROR)
        assert main(["-v", "evaluate", beir, "--baseline", "bm25", "--per-query", str(tmp_path / "pq.json")]) == 0
        assert root.handlers == [mine] and root.level == logging.ERROR
    assert "per-query results written" not in capsys.readouterr().err
