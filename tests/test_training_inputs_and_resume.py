"""Regression tests for the training audit of stop 42 (an IR researcher's drop-in use of ``kl_retrievers.training``).

Each test fails on the code before the fix: feature bars shown by ``train_heads_cached`` with
``show_progress=False``, a resume past ``--steps`` that silently trained nothing, a fresh run that replaced
an earlier checkpoint without a word, TrainConfig messages naming fields instead of the flags typed, and a
BEIR split whose grades are all 0 reported as "0 queries". Everything runs on a tiny random BERT.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import TrainWorld, make_tiny_encoder, make_train_world
from kl_retrievers import GaussianEncoder
from kl_retrievers.cli import main
from kl_retrievers.training import TrainConfig, load_training_data, train_heads_cached


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TrainWorld:
    return make_train_world(tmp_path_factory.mktemp("train_stop42"))


def _argv(w: TrainWorld, out: Path, *extra: str) -> list[str]:
    argv = ["train", "--data", str(w.beir), "--out", str(out), "--batch-size", "2", "--heads-only-cached"]
    argv += ["--cache-dir", str(w.cache), "--no-progress", "--device", "cpu"]
    argv += ["--base", str(w.base), "--dim", "8", "--max-length", "32", "--query-max-length", "16"]
    return [*argv, *extra]


class _Loaded(Exception):
    """Raised by the patched loaders: the check came too late."""


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise _Loaded("loaded before checking")


# ------------------------------------------------------------------ 1: show_progress=False hides every bar
def test_heads_only_cached_without_progress_shows_no_feature_bars(
    world: TrainWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    ts = load_training_data([str(world.beir)])
    encoder = make_tiny_encoder(pooling="mean")
    capsys.readouterr()
    result = train_heads_cached(encoder, ts, TrainConfig(steps=1, batch_size=2, show_progress=False, device="cpu"))
    assert result.steps_done == 1
    captured = capsys.readouterr()
    assert "features" not in captured.err + captured.out  # "Query features" / "Document features" bars


# ------------------------------------------------------------------ 2: a resume past --steps is refused
def test_resume_with_steps_below_the_checkpoint_is_refused_before_the_backbone(
    world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    assert main(_argv(world, out, "--steps", "3")) == 0
    assert json.loads((tmp_path / "model.checkpoint" / "state.json").read_text())["step"] == 3
    capsys.readouterr()
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    assert main(_argv(world, out, "--steps", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert "is at step 3, past --steps 2" in err
    assert "--steps 3 or more" in err


def test_train_heads_cached_resume_past_steps_raises(world: TrainWorld, tmp_path: Path) -> None:
    ts = load_training_data([str(world.beir)])
    ckpt = tmp_path / "ckpt"
    cfg = TrainConfig(steps=3, batch_size=2, show_progress=False, device="cpu")
    train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg, checkpoint_dir=ckpt)
    fewer = TrainConfig(steps=2, batch_size=2, show_progress=False, device="cpu")
    with pytest.raises(ValueError, match="is at step 3, past --steps 2"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, fewer, checkpoint_dir=ckpt, resume=True)
    # an equal or larger --steps still resumes (the documented way to extend a run)
    more = TrainConfig(steps=4, batch_size=2, show_progress=False, device="cpu")
    result = train_heads_cached(make_tiny_encoder(pooling="mean"), ts, more, checkpoint_dir=ckpt, resume=True)
    assert (result.resumed_from, result.steps_done) == (3, 4)


# ------------------------------------------------------------------ 3: a fresh run over a checkpoint warns
def test_fresh_run_over_an_earlier_checkpoint_warns(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ts = load_training_data([str(world.beir)])
    ckpt = tmp_path / "ckpt"
    cfg = TrainConfig(steps=2, batch_size=2, show_progress=False, device="cpu")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.trainer"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg, checkpoint_dir=ckpt)
    assert not [r for r in caplog.records if "earlier run" in r.getMessage()]  # nothing there yet: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.trainer"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg, checkpoint_dir=ckpt)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # the Python functions' run is told in their arguments, not the command's flags
    assert any("checkpoint of an earlier run (step 2)" in m and "resume=True" in m for m in messages), messages


# ------------------------------------------------------------------ 4: messages name the flags typed
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--warmup", "-1"], "--warmup must be an integer >= 0; got -1 (leave --warmup out for the default"),
        (["--lr", "0"], "--lr must be a finite number > 0; got 0.0"),
        (["--temperature", "-0.5"], "--temperature must be a finite number > 0; got -0.5"),
        (["--var-lr", "-1"], "--var-lr must be a finite number >= 0; got -1.0 (leave --var-lr out for the default"),
        (["--corpus-sample", "-3"], "--corpus-sample must be an integer >= 0; got -3"),
        (["--loss", "listwise", "--negatives", "0"], "needs negatives >= 1 (--negatives); got 0"),
    ],
)
def test_bad_training_values_name_the_flag_before_loading(
    world: TrainWorld,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    monkeypatch.setattr("kl_retrievers.training.data.load_training_data", _boom)
    jsonl = tmp_path / "rows.jsonl"  # distillation losses refuse a BEIR folder without a teacher first
    jsonl.write_text(json.dumps({"query": "q", "pos": ["a"], "neg": ["b"], "pos_scores": [1], "neg_scores": [0]}))
    argv = _argv(world, tmp_path / "model", "--steps", "2", *extra)
    argv[argv.index("--data") + 1] = str(jsonl)
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


# ------------------------------------------------------------------ 5: a BEIR split with grades 0 only
def test_beir_split_with_only_grade_zero_says_so(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    beir = Path(shutil.copytree(world.beir, tmp_path / "beir"))
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\td2\t0\n")
    with (
        caplog.at_level(logging.WARNING, logger="kl_retrievers.training.data"),
        pytest.raises(ValueError, match=r"grade > 0") as info,
    ):
        load_training_data([str(beir)])
    assert "0 queries with a positive" in str(info.value)
    assert any("2 of 2 judged queries have no document with grade > 0" in r.getMessage() for r in caplog.records)


def test_beir_queries_without_positive_are_counted(
    world: TrainWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    beir = Path(shutil.copytree(world.beir, tmp_path / "beir"))
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\nq3\td3\t2\n")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.data"):
        ts = load_training_data([str(beir)])
    assert len(ts.examples) == 2
    assert any("1 of 3 judged queries have no document with grade > 0" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ 6: a qrels line naming an unknown document
def test_unknown_document_in_qrels_names_the_train_flag_and_drop_trains(
    world: TrainWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    beir = Path(shutil.copytree(world.beir, tmp_path / "beir"))
    with (beir / "qrels" / "train.tsv").open("a") as fh:
        fh.write("q1\tdXX\t1\n")
    argv = _argv(world, tmp_path / "model", "--steps", "1")
    argv[argv.index("--data") + 1] = str(beir)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown document id 'dXX'" in err
    assert "pass --unknown-docs drop" in err  # a flag of this command, not load_beir's unknown_docs='drop'
    assert "unknown_docs=" not in err
    assert main([*argv, "--unknown-docs", "drop"]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["encoder"]["extra"]["training"]["recipe"]["unknown_docs"] == "drop"
    ts = load_training_data([str(beir)], unknown_docs="drop")
    assert len(ts.examples) == 5  # q1 keeps its judged d1
    # a resume without the flag reads the qrels as before: refused, naming the flag
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "--unknown-docs" in capsys.readouterr().err


# ------------------------------------------------------------------ 7: a compressed / non-UTF-8 JSONL file
def test_gzipped_jsonl_is_refused_naming_the_file(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps({"query": "q", "positives": ["a"]}).encode() + b"\n"))
    with pytest.raises(ValueError, match=r"rows\.jsonl\.gz, line 1: not UTF-8 text \(a gzip file: decompress it"):
        load_training_data([str(path)])


def test_jsonl_with_a_byte_order_mark_and_crlf_reads(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"query": "q1", "positives": ["a"], "negatives": ["b"]}, {"query": "q2", "pos": ["b"]}]
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows))
    ts = load_training_data([str(path)])
    assert (ts.queries, ts.docs, len(ts.examples)) == (["q1", "q2"], ["a", "b"], 2)


def test_jsonl_with_cr_only_line_ends_reads_and_bad_bytes_name_the_line(tmp_path: Path) -> None:
    """Old Mac line ends (CR only) read as a text-mode open reads them (the review of the fix above)."""
    path = tmp_path / "rows.jsonl"
    rows = [{"query": "q1", "positives": ["a"], "negatives": ["b"]}, {"query": "q2", "pos": ["b"]}]
    path.write_bytes(b"\r".join(json.dumps(r).encode() for r in rows))
    assert len(load_training_data([str(path)]).examples) == 2
    path.write_bytes(json.dumps(rows[0]).encode() + b"\r" + b'{"query": "q\xff"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl, line 2: not UTF-8 text"):
        load_training_data([str(path)])


# ------------------------------------------------------------------ 8: data in which nothing can be a negative
def test_pool_of_positives_only_is_refused(world: TrainWorld, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"query": "cat", "positives": ["the cat"]}) + "\n")
    ts = load_training_data([str(path)])
    cfg = TrainConfig(steps=2, batch_size=2, show_progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"no document can serve as a negative: each of the 1 documents"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg)


def test_cli_refuses_a_pool_of_positives_before_the_backbone(
    world: TrainWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kl-retrievers train`` refuses such data before loading a backbone (the review of the check above)."""
    monkeypatch.setattr(GaussianEncoder, "from_backbone", _boom)
    jsonl = tmp_path / "one.jsonl"
    jsonl.write_text(json.dumps({"query": "cat", "positives": ["the cat"]}) + "\n")
    argv = _argv(world, tmp_path / "model", "--steps", "2")
    argv[argv.index("--data") + 1] = str(jsonl)
    assert main(argv) == 2
    assert "no document can serve as a negative" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_batch_larger_than_the_data_warns(world: TrainWorld, caplog: pytest.LogCaptureFixture) -> None:
    ts = load_training_data([str(world.beir)])  # 5 examples
    cfg = TrainConfig(steps=1, batch_size=64, show_progress=False, device="cpu")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.trainer"):
        result = train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg)
    assert result.steps_done == 1
    assert any(
        "batch_size 64 (--batch-size) is larger than the 5 training examples" in r.getMessage() for r in caplog.records
    )


# ------------------------------------------------------------------ sentence-transformers' column names
def test_sentence_transformers_columns_are_read(tmp_path: Path) -> None:
    """(anchor, positive), (anchor, positive, negative) and mine_hard_negatives' n-tuples read as our schema."""
    path = tmp_path / "st.jsonl"
    rows = [
        {"anchor": "q1", "positive": "a"},
        {"anchor": "q2", "positive": "b", "negative": "c"},
        {"anchor": "q3", "positive": "c", "negative_2": "b", "negative_1": "a"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ts = load_training_data([str(path)])
    assert ts.queries == ["q1", "q2", "q3"]
    negatives = [[ts.docs[i] for i in ex.negatives] for ex in ts.examples]
    assert negatives == [[], ["c"], ["a", "b"]]  # numbered negatives in their order
    path.write_text(json.dumps({"anchor": "q", "positive": "a", "negative_1": "b", "negative_3": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"without gaps; got \['negative_1', 'negative_3'\]"):
        load_training_data([str(path)])
    path.write_text(json.dumps({"anchor": "q", "positive": "a", "negative": "b", "negative_1": "c"}) + "\n")
    with pytest.raises(ValueError, match="not both"):
        load_training_data([str(path)])


def test_warmup_not_below_steps_warns(world: TrainWorld, caplog: pytest.LogCaptureFixture) -> None:
    """A warm-up as long as the run never reaches the learning rate asked for: it was accepted silently."""
    ts = load_training_data([str(world.beir)])
    cfg = TrainConfig(steps=2, warmup_steps=5, batch_size=2, show_progress=False, device="cpu")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.training.trainer"):
        train_heads_cached(make_tiny_encoder(pooling="mean"), ts, cfg)
    assert any("warmup_steps 5 is not below steps 2" in r.getMessage() for r in caplog.records)


def test_heads_only_training_gives_back_the_callers_freezing(world: TrainWorld) -> None:
    """train_heads_cached turned gradients on for every encoder parameter when it ended, undoing a freeze."""
    ts = load_training_data([str(world.beir)])
    encoder = make_tiny_encoder(pooling="mean")
    frozen = [name for name, p in encoder.named_parameters() if "mean_head" not in name and "var_head" not in name]
    for name, p in encoder.named_parameters():
        p.requires_grad_(name not in frozen)
    before = {name: p.requires_grad for name, p in encoder.named_parameters()}
    train_heads_cached(encoder, ts, TrainConfig(steps=1, batch_size=2, show_progress=False, device="cpu"))
    assert {name: p.requires_grad for name, p in encoder.named_parameters()} == before
    assert frozen and not any(before[name] for name in frozen)
