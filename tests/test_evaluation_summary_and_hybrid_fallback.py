"""Follow-ups: the training CLI's evaluation summary and card, the hybrid scorer's dense fallback, the
calibration benchmark's recommended threshold, ``--max-grad-norm 0``'s message and the training page's example.

1. ``evaluation_summary`` and the model card's evaluation table read only the entries of the run's current
   evaluator (each entry records it under ``"evaluator"``); before, a resume with other evaluation settings mixed
   the earlier evaluator's entries into "best ... at step" and the table. Entries that record no evaluator (all
   of them, before stop 45) are all read, as before.
2. ``ConfidenceScorer(retriever="hybrid")`` of a model that ships only a dense calibrator uses it with one
   WARNING per model (not per query or encoder); before, silently.
3. ``benchmarks/calibration.py``'s ``recommended_threshold`` of a hybrid calibrator is ``None`` for a model that
   ships no hybrid calibrator; before, the dense calibrator's threshold (a cut on another probability).
4. A ``TrainConfig`` field whose ``None`` cannot be typed (``--max-grad-norm``, ``--warmup``, ``--var-lr``) says to
   leave the flag out instead of offering ``None``.
5. docs/training.md's "Evaluation during training" example binds every name it uses and reads no project-only
   ``../shared`` path.

Everything runs on a tiny random BERT, a tiny BEIR folder and calibrators written under ``tmp_path``.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

import kl_retrievers._confidence as confidence_mod
from conftest import TrainWorld, heads_cached_train_argv, train_world_with_dev
from kl_retrievers import GaussianEncoder
from kl_retrievers._confidence import ConfidenceScorer
from kl_retrievers.calibration import (
    CALIBRATION_FILE,
    HYBRID_CALIBRATION_FILE,
    ConfidenceCalibrator,
    default_hybrid_calibrator,
)
from kl_retrievers.cli import main
from kl_retrievers.training.cli import (
    _EVALUATOR_KEY,
    _with_flag_name,
    current_evaluations,
    evaluation_summary,
    model_card_text,
)

REPO = Path(__file__).resolve().parents[1]
A = {"type": "RetrievalEvaluator", "dataset": "/data/x", "split": "dev", "metric": "ndcg@10", "k": 100}
B = {**A, "metric": "mrr@10"}
#: A run evaluated by A at steps 2 and 4 (best 0.9 at step 2), then resumed with B (evaluated at step 4).
MIXED: list[dict[str, Any]] = [
    {"step": 2, "ndcg@10": 0.9, "evaluator": A},
    {"step": 4, "ndcg@10": 0.5, "evaluator": A},
    {"step": 4, "mrr@10": 0.1, "evaluator": B},
]
SCORER_WARNING = "so the hybrid retriever's confidence comes from its dense calibrator"


# ------------------------------------------------------------------ 1. only the current evaluator's entries
def test_the_evaluator_key_is_the_trainers() -> None:
    from kl_retrievers.training import trainer

    assert _EVALUATOR_KEY == trainer._EVALUATOR_KEY


def test_the_summary_reads_only_the_current_evaluators_entries() -> None:
    # B's run: its one entry; A's best (0.9 at step 2) is not B's
    assert evaluation_summary(MIXED, "mrr@10", B) == (
        "mrr@10 0.1000 at the end (step 4); best 0.1000 at step 4 (1 evaluation; 2 not recorded as this evaluator's "
        "left out)"
    )
    # A again (a resume whose checkpoint A had already evaluated): A's entries, though B's is the last one
    text = evaluation_summary(MIXED, "ndcg@10", A)
    assert text.startswith("ndcg@10 0.5000 at the end (step 4); best 0.9000 at step 2 (2 evaluations; 1 not")
    # no evaluator given: the last entry's that records one
    assert evaluation_summary(MIXED, "mrr@10") == evaluation_summary(MIXED, "mrr@10", B)


def test_the_summary_of_entries_that_record_no_evaluator_reads_them_all() -> None:
    old = [{"step": 2, "ndcg@10": 0.5}, {"step": 4, "ndcg@10": 0.25}]
    expected = "ndcg@10 0.2500 at the end (step 4); best 0.5000 at step 2 (2 evaluations)"
    assert evaluation_summary(old, "ndcg@10") == expected
    assert evaluation_summary(old, "ndcg@10", A) == expected  # nothing to tell them apart by
    assert current_evaluations(old, A) == (old, 0)
    # mixed with described entries: the undescribed ones may be another evaluator's, so they are left out
    entries, left_out = current_evaluations([*old, MIXED[0]], A)
    assert entries == [MIXED[0]] and left_out == 2
    # an evaluator none of the entries records
    assert evaluation_summary(MIXED, "map@100", {**A, "metric": "map@100"}) == (
        "map@100: no evaluation ran (3 not recorded as this evaluator's left out)"
    )


def test_the_card_table_reads_only_the_current_evaluators_entries() -> None:
    info: dict[str, Any] = {
        "command": "kl-retrievers train ...",
        "evaluation": {"data": "/data/x", "split": "dev", "metric": "mrr@10", "every": 2, "depth": 100, "evaluator": B},
        "evaluations": MIXED,
    }
    card = model_card_text("m", info)
    rows = re.findall(r"^\| (\d+) \| (\S+) \|$", card, re.M)
    assert rows == [("4", "0.1000")], card  # not A's two entries (whose mrr@10 would read n/a)
    assert "2 earlier evaluations not recorded as this evaluator's" in card
    # entries written before stop 45 (and settings without an evaluator): every entry, no note
    old = {**info, "evaluation": {**info["evaluation"], "metric": "ndcg@10"}}
    del old["evaluation"]["evaluator"]
    old["evaluations"] = [{"step": 2, "ndcg@10": 0.9}, {"step": 4, "ndcg@10": 0.5}]
    card = model_card_text("m", old)
    assert re.findall(r"^\| (\d+) \| (\S+) \|$", card, re.M) == [("2", "0.9000"), ("4", "0.5000")]
    assert "not recorded as this evaluator's" not in card


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    return train_world_with_dev(tmp_path_factory.mktemp("f45c_train"))


def _argv(w: TrainWorld, out: Path, *extra: str) -> list[str]:
    return heads_cached_train_argv(w, out, "--eval-data", str(w.beir), "--checkpoint-every", "3", *extra)


def _summary(err: str) -> str:
    return next(x for x in err.splitlines() if x.startswith("evaluation on "))


def test_a_resume_with_another_metric_summarises_and_tabulates_its_own_entries(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    assert main(_argv(world, out, "--eval-metric", "ndcg@10")) == 0
    capsys.readouterr()
    # the finished checkpoint resumed with another metric: evaluated once by it
    assert main(_argv(world, out, "--eval-metric", "mrr@10", "--resume")) == 0
    line = _summary(capsys.readouterr().out)  # the summary is on stdout, as encode's and index's
    training = json.loads((out / "config.json").read_text())["encoder"]["extra"]["training"]
    entries = training["evaluations"]
    assert [(e["step"], e["evaluator"]["metric"]) for e in entries] == [(3, "ndcg@10"), (3, "mrr@10")]
    assert training["evaluation"]["evaluator"] == entries[1]["evaluator"]  # the run's own evaluator is recorded
    mrr = entries[1]["mrr@10"]
    assert f"mrr@10 {mrr:.4f} at the end (step 3)" in line
    assert "(1 evaluation; 1 not recorded as this evaluator's left out)" in line, line
    card = (out / "README.md").read_text()
    assert re.findall(r"^\| (\d+) \| (\S+) \|$", card, re.M) == [("3", f"{mrr:.4f}")], card
    # back to the first metric: its entry exists, nothing runs; the summary reads it, not the last (mrr) entry
    assert main(_argv(world, out, "--eval-metric", "ndcg@10", "--resume")) == 0
    line = _summary(capsys.readouterr().out)  # the summary is on stdout, as encode's and index's
    ndcg = entries[0]["ndcg@10"]
    assert f"ndcg@10 {ndcg:.4f} at the end (step 3)" in line and "(1 evaluation; 1 not" in line, line
    card = (out / "README.md").read_text()
    assert re.findall(r"^\| (\d+) \| (\S+) \|$", card, re.M) == [("3", f"{ndcg:.4f}")], card


# ------------------------------------------------------------------ 2. the hybrid scorer's dense fallback warns once
@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confidence_mod, "_WARNED", set())  # each test sees its own once-only warnings


def _dense_only_folder(folder: Path, threshold: float | None = None) -> Path:
    folder.mkdir(parents=True)
    cal = ConfidenceCalibrator(["gap12"]).fit([[0.0], [0.1], [0.2], [0.3]], [0, 0, 1, 1])
    if threshold is not None:
        cal.info["recommended_min_confidence"] = {"threshold": threshold}
    cal.save(folder / CALIBRATION_FILE)
    return folder


def _scorer_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "kl_retrievers._confidence" and r.levelno == logging.WARNING
        and SCORER_WARNING in r.getMessage()
    ]  # fmt: skip


@pytest.mark.usefixtures("fresh_warnings")
def test_the_hybrid_scorers_dense_fallback_warns_once_per_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = _dense_only_folder(tmp_path / "one")
    two = _dense_only_folder(tmp_path / "two")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        scorer = ConfidenceScorer(retriever="hybrid")
        for _ in range(3):  # queries: the scorer's cache answers
            cal = scorer.calibrator(SimpleNamespace(name_or_path=str(one)))
            assert cal is not None and cal.kind == "dense"
        # another encoder object and another scorer of the same model, an unstemmed store: still the one warning
        assert ConfidenceScorer(retriever="hybrid").calibrator(SimpleNamespace(name_or_path=str(one)), None)
        assert len(_scorer_warnings(caplog)) == 1
        warned = _scorer_warnings(caplog)[0]
        assert str(one) in warned and CALIBRATION_FILE in warned and HYBRID_CALIBRATION_FILE in warned
        assert "fused ranking" in warned
        scorer.calibrator(SimpleNamespace(name_or_path=str(two)))  # another model: its own warning
        assert len(_scorer_warnings(caplog)) == 2 and str(two) in _scorer_warnings(caplog)[1]


@pytest.mark.usefixtures("fresh_warnings")
def test_no_fallback_warning_for_a_dense_scorer_a_hybrid_calibrator_or_an_explicit_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dense_only = _dense_only_folder(tmp_path / "dense")
    both = _dense_only_folder(tmp_path / "both")
    default_hybrid_calibrator("minilm-gauss-soup").save(both / HYBRID_CALIBRATION_FILE)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers._confidence"):
        assert ConfidenceScorer().calibrator(SimpleNamespace(name_or_path=str(dense_only))) is not None
        cal = ConfidenceScorer(retriever="hybrid").calibrator(SimpleNamespace(name_or_path=str(both)))
        assert cal is not None and cal.kind == "hybrid"
        explicit = ConfidenceCalibrator.load(dense_only / CALIBRATION_FILE)
        ConfidenceScorer(explicit, retriever="hybrid").calibrator(SimpleNamespace(name_or_path=str(dense_only)))
    assert _scorer_warnings(caplog) == []


# ------------------------------------------------------------------ 3. the benchmark's threshold matches the kind
@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``benchmarks/calibration.py`` (as its own module: the name ``calibration`` would be ambiguous)."""
    sys.path.insert(0, str(REPO / "benchmarks"))  # its `from qpp import ...`
    spec = importlib.util.spec_from_file_location("f45c_bench_calibration", REPO / "benchmarks" / "calibration.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_hybrid_threshold_is_none_for_a_dense_only_model(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _dense_only_folder(tmp_path / "model", threshold=0.42)
    hybrid = default_hybrid_calibrator("minilm-gauss-soup")
    monkeypatch.setattr(bench, "MODEL", str(folder))
    for stemmer in ("english", None):
        monkeypatch.setattr(bench, "STEMMER", stemmer)
        with caplog.at_level(logging.WARNING):
            assert bench.recommended_threshold(hybrid) is None  # not the dense calibrator's 0.42
        assert any("ships no hybrid confidence calibrator" in r.getMessage() for r in caplog.records)
        assert bench.recommended_threshold(ConfidenceCalibrator.load(folder / CALIBRATION_FILE)) == 0.42
    # the model ships a hybrid calibrator: its recorded threshold
    hybrid.info["recommended_min_confidence"] = {"threshold": 0.07}
    hybrid.save(folder / HYBRID_CALIBRATION_FILE)
    monkeypatch.setattr(bench, "STEMMER", "english")
    assert bench.recommended_threshold(hybrid) == 0.07


def test_the_benchmarks_thresholds_of_the_default_model_are_the_library_constants(bench: ModuleType) -> None:
    from kl_retrievers.calibration import DEFAULT_HYBRID_MIN_CONFIDENCE, DEFAULT_MIN_CONFIDENCE

    assert bench.MODEL == "minilm-gauss-soup"
    assert bench.recommended_threshold(default_hybrid_calibrator("minilm-gauss-soup")) == DEFAULT_HYBRID_MIN_CONFIDENCE
    dense = ConfidenceCalibrator.load(bench.dense_out())
    assert bench.recommended_threshold(dense) == DEFAULT_MIN_CONFIDENCE


# ------------------------------------------------------------------ 4. how to turn clipping off
def _no_loading(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("loaded before checking the flags")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--max-grad-norm", "0"],
            "--max-grad-norm must be a finite number > 0; got 0.0 (leave --max-grad-norm out for no clipping, the "
            "default)",
        ),
        (["--max-grad-norm", "-1"], "got -1.0 (leave --max-grad-norm out for no clipping, the default)"),
        (["--warmup", "-1"], "--warmup must be an integer >= 0; got -1 (leave --warmup out for the default, 10%"),
        (["--var-lr", "-1"], "--var-lr must be a finite number >= 0; got -1.0 (leave --var-lr out for the default"),
    ],
)
def test_a_flag_whose_none_cannot_be_typed_says_to_leave_it_out(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _no_loading)
    monkeypatch.setattr("kl_retrievers.training.data.load_training_data", _no_loading)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"query": "q", "positives": ["a"], "negatives": ["b"]}) + "\n")
    assert main(["train", "--data", str(rows), "--out", str(tmp_path / "m"), "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "or None" not in err, err
    assert not (tmp_path / "m").exists()


def test_the_cli_accepts_a_positive_max_grad_norm_and_leaving_it_out() -> None:
    assert _with_flag_name("lr must be a finite number > 0; got 0.0") == "--lr must be a finite number > 0; got 0.0"
    # a field whose None means nothing on the command line keeps its message as it is
    message = "teacher_temperature must be a finite number > 0 or None; got 0"
    assert _with_flag_name(message) == "--" + message.replace("teacher_temperature", "teacher-temperature")
    from kl_retrievers.cli import build_parser

    parser = build_parser()
    base = ["train", "--data", "d", "--out", "o"]
    assert parser.parse_args(base).max_grad_norm is None  # left out: no clipping
    assert parser.parse_args([*base, "--max-grad-norm", "1.5"]).max_grad_norm == 1.5


# ------------------------------------------------------------------ 5. the training page's example
def _example() -> str:
    text = (REPO / "docs" / "training.md").read_text()
    start = text.index("## Evaluation during training")
    found = re.search(r"^```[^\n]*\n(.*?)^```", text[start:], re.S | re.M)
    assert found is not None
    return found.group(1)


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def _target_names(target: ast.AST) -> set[str]:
    return {name.id for name in ast.walk(target) if isinstance(name, ast.Name)}


def _unbound_names(code: str) -> list[str]:
    """The names ``code`` reads before (or without) binding them, statement by statement as a reader runs it.

    A comprehension's variables are bound inside that comprehension only (its first iterable is read outside
    them), a lambda's parameters inside its body; a walrus binds in the statement's scope.
    """
    bound = set(dir(builtins))
    unbound: list[str] = []

    def reads(node: ast.AST, local: frozenset[str]) -> None:
        if isinstance(node, _COMPREHENSIONS):
            inner = local
            for i, generator in enumerate(node.generators):
                reads(generator.iter, local if i == 0 else inner)
                inner = inner | _target_names(generator.target)
                for condition in generator.ifs:
                    reads(condition, inner)
            for part in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
                reads(part, inner)
            return
        if isinstance(node, ast.Lambda):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    reads(default, local)
            params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]
            reads(node.body, local | {arg.arg for arg in params if arg is not None})
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound | local:
            unbound.append(node.id)
        for child in ast.iter_child_nodes(node):
            reads(child, local)

    def binds(node: ast.AST, scoped: bool = False) -> None:
        if isinstance(node, ast.NamedExpr):  # binds in the enclosing scope, even inside a comprehension
            bound.update(_target_names(node.target))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and not scoped:
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        for child in ast.iter_child_nodes(node):
            binds(child, scoped or isinstance(node, (*_COMPREHENSIONS, ast.Lambda)))

    for statement in ast.parse(code).body:  # also: it is Python
        reads(statement, frozenset())
        binds(statement)
    return unbound


def test_the_binding_check_scopes_comprehension_variables_to_their_comprehension() -> None:
    assert _unbound_names("ids = [1]\nrows = [q for q in ids if q]\nprint(q)\n") == ["q"]
    assert _unbound_names("rows = {q: r for q in [1] for r in range(q)}\nprint(r)\n") == ["r"]
    assert _unbound_names("f = lambda q: q\nprint(q)\n") == ["q"]
    assert _unbound_names("x = [q for q in q]\n") == ["q"]  # the first iterable is read outside
    assert _unbound_names("ids = [1]\nrows = [q for q in ids]\n[(y := q) for q in ids]\nprint(y)\n") == []


def test_the_evaluation_example_binds_every_name_it_uses() -> None:
    code = _example()
    tree = ast.parse(code)  # also: it is Python
    unbound = _unbound_names(code)
    assert unbound == [], f"docs/training.md's example uses names it never binds: {unbound}"
    assert "../shared" not in code  # a folder of this project only; the page's data comes from fetch_beir
    assert "fetch_beir(" in code
    # what it imports exists
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), (node.module, alias.name)
