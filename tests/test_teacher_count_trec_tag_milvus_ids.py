"""Fix F3: the teacher's token count after a long word, its docstring, TREC run tags and Milvus ids UTF-8 cannot encode.

* :meth:`~kl_retrievers.training.teacher.CrossEncoderTeacher._count` counts a long text's tokens in pieces; a piece
  grown to hold one long word kept that length for the rest of the text, so every later piece of ordinary words
  cost hundreds of MB to tokenize. It has the usual length again after the long word.
* The teacher module's docstring listed what names its cache folder without the pair version.
* :func:`~kl_retrievers.evaluation.write_trec_run` raised a bare ``UnicodeEncodeError`` for a tag holding a lone
  surrogate; it is refused, naming the tag, as ids are.
* ``MilvusKLStore.delete`` / ``get_by_ids`` / ``get_gaussians`` raised pymilvus' ``MilvusException`` for such an
  id; they refuse it as ``add`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_teacher_cut_and_id_checks as cut_checks

from conftest import cli_error_line, random_gaussians, write_tiny_beir

#: The tiny random ONNX cross-encoder of the teacher's cut tests (a module-scoped fixture, built once here).
cross_encoder_dir = cut_checks.cross_encoder_dir

_USUAL = cut_checks.MAX_LENGTH * 16  # a piece's length with _COUNT_CHARS = 0: _CUT_CHARS_PER_TOKEN * max_length


def _long_word_text(seed: int, word: int = 5000) -> str:
    """Ordinary words, one word of ``word`` characters (one ``[UNK]``), then many ordinary words."""
    return f"{cut_checks._words(200, seed)} {'x' * word} {cut_checks._words(3000, seed + 1)}"


# ------------------------------------------------------------------ 1: the count's pieces after a long word
def test_the_counts_pieces_have_the_usual_length_again_after_a_long_word(
    cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers import _encoding
    from kl_retrievers.training import teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_COUNT_CHARS", 0)  # pieces of _USUAL characters: a short text has many
    assert _encoding._CUT_CHARS_PER_TOKEN * cut_checks.MAX_LENGTH == _USUAL
    teacher = cut_checks._teacher(cross_encoder_dir)
    plain = teacher._plain
    text = _long_word_text(11)
    lengths: list[int] = []  # the length of each text handed to the tokenizer, in order
    teacher._plain = cut_checks._CountingTokenizer(plain, lengths)
    count = teacher._count(text)
    assert count == len(plain.encode(text, add_special_tokens=False).ids)  # the whole text's count
    assert lengths and len(text) not in lengths, lengths  # counted in pieces, not whole
    grown = lengths.index(max(lengths))
    assert lengths[grown] > 5000, lengths  # the piece grew to hold the long word ...
    after = lengths[grown + 1 :]
    assert len(after) > 10, lengths  # ... and the 20 K characters after it were counted in many pieces ...
    assert max(after) <= _USUAL, lengths  # ... of the usual length again (8192 each before the fix)


@pytest.mark.parametrize("max_length", [cut_checks.MAX_LENGTH, cut_checks.MAX_LENGTH + 1])  # room 29 / 30
def test_pairs_cut_with_a_piecewise_count_keep_the_whole_texts_ids_and_scores(
    cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch, max_length: int
) -> None:
    """The count in pieces (each long text here is several pieces long) gives the cuts of the whole texts' count."""
    from kl_retrievers.training import teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_COUNT_CHARS", 0)
    teacher = cut_checks._teacher(cross_encoder_dir, max_length)
    longer, shorter = cut_checks._words(600, 21), cut_checks._words(480, 22)
    with_long_word = f"{cut_checks._words(150, 23)} {'y' * 3000} {cut_checks._words(400, 24)}"
    pairs = [
        (longer, shorter),  # both long: the query has more tokens ...
        (shorter, longer),  # ... fewer
        (with_long_word, shorter),  # ... a long word (one [UNK]) in a long query
        (shorter, with_long_word),
        ("the cat", _long_word_text(25)),  # a long passage beside a short query
        ("sun and moon", "green tea and bread"),  # nothing long
    ]
    for text in {longer, shorter, with_long_word}:
        assert len(text) > 2 * teacher_module._encoding._CUT_CHARS_PER_TOKEN * max_length  # several pieces
        assert teacher._count(text) == len(teacher._plain.encode(text, add_special_tokens=False).ids)
    cut = teacher._cut_pairs(pairs)
    assert all(len(q) + len(p) < len(wq) + len(wp) for (q, p), (wq, wp) in zip(cut[:5], pairs[:5], strict=True))
    assert cut[5] == pairs[5]
    assert [list(e.ids) for e in teacher.tokenizer.encode_batch(cut)] == cut_checks._whole_ids(teacher, pairs)
    np.testing.assert_array_equal(teacher._run(pairs), cut_checks._whole_scores(teacher, pairs))


# ------------------------------------------------------------------ 2: the docstring names the pair version
def test_the_teacher_docstring_lists_the_pair_version_that_names_its_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.training import teacher

    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    before = teacher.teacher_identity(tmp_path, 512)
    monkeypatch.setattr(teacher, "_PAIRS_VERSION", teacher._PAIRS_VERSION + 1)
    assert teacher.teacher_identity(tmp_path, 512) != before  # the pair version is part of the identity ...
    doc = " ".join((teacher.__doc__ or "").split())
    for part in ("model.onnx", "tokenizer.json", "pair version", "_PAIRS_VERSION", "token budget"):
        assert part in doc, part  # ... and the module's docstring says so, with the other parts
    args = " ".join((teacher.CrossEncoderTeacher.__doc__ or "").split())
    assert "(model, tokenizer, pair version, ``max_length``)" in args


# ------------------------------------------------------------------ 3: TREC run tags UTF-8 cannot encode
def test_write_trec_run_refuses_a_tag_with_a_lone_surrogate_and_keeps_the_previous_file(tmp_path: Path) -> None:
    from kl_retrievers.evaluation import write_trec_run

    path = tmp_path / "run.trec"
    write_trec_run(path, {"q1": {"d1": 1.0}}, tag="first")
    tag = "model\ud800"
    with pytest.raises(ValueError) as err:
        write_trec_run(path, {"q1": {"d1": 2.0}}, tag=tag)
    assert not isinstance(err.value, UnicodeError), repr(err.value)  # the package's message, not the codec's
    message = str(err.value)
    assert message.startswith(f"run tag {tag!r} contains a lone surrogate"), message
    assert "('\\ud800')" in message and "characters UTF-8 can encode" in message, message
    assert path.read_text(encoding="utf-8") == "q1 Q0 d1 1 1.0 first\n"  # left whole
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]  # no temporary file left


def test_write_trec_run_still_replaces_a_tags_whitespace_and_control_characters(tmp_path: Path) -> None:
    from kl_retrievers.evaluation import write_trec_run

    path = tmp_path / "run.trec"
    write_trec_run(path, {"q1": {"d1": 1.0}}, tag="my\x1bmodel v2 é")
    assert path.read_text(encoding="utf-8") == "q1 Q0 d1 1 1.0 my_model_v2_é\n"


@pytest.mark.parametrize("where", ["query", "document"])
def test_write_trec_run_refuses_ids_with_a_lone_surrogate(tmp_path: Path, where: str) -> None:
    from kl_retrievers.evaluation import write_trec_run

    ident = "x\udcff"
    run = {ident: {"d1": 1.0}} if where == "query" else {"q1": {ident: 1.0}}
    with pytest.raises(ValueError, match="a lone surrogate") as err:
        write_trec_run(tmp_path / "run.trec", run)
    assert f"{where} id {ident!r}" in str(err.value) and not isinstance(err.value, UnicodeError)
    assert not (tmp_path / "run.trec").exists()


def test_evaluate_save_run_with_such_a_tag_fails_with_the_same_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's tag is the model's label; one that UTF-8 cannot encode gives the message above (exit 2)."""
    from kl_retrievers import evaluate_cli
    from kl_retrievers.cli import main

    real = evaluate_cli.run_baseline

    def surrogate_label(*args: Any, **kwargs: Any) -> Any:
        run, label = real(*args, **kwargs)
        return run, f"{label}\udcff"  # as a name decoded with errors="surrogateescape" would be

    monkeypatch.setattr(evaluate_cli, "run_baseline", surrogate_label)
    root = write_tiny_beir(tmp_path / "beir")
    run_file = tmp_path / "run.trec"
    code = main(["evaluate", str(root), "--baseline", "bm25", "--no-progress", "--save-run", str(run_file)])
    assert code == 2
    line = cli_error_line(capsys, "evaluate")
    assert "run tag '" in line and "\\udcff' contains a lone surrogate" in line, line
    assert not run_file.exists()


# ------------------------------------------------------------------ 4: Milvus ids UTF-8 cannot encode
def test_milvus_lookups_and_deletes_refuse_an_id_with_a_lone_surrogate_as_add_does(tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store.milvus import MilvusKLStore

    bad = "x\ud800"
    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat")
    try:
        with pytest.raises(ValueError, match="delete: id holds a lone surrogate"):
            store.delete([bad])  # an empty store too (no collection yet)
        store.add(gaussians=random_gaussians(2, 4), ids=["a", "b"], metadatas=[{"k": 1}, {"k": 2}])
        with pytest.raises(ValueError) as added:
            store.add(gaussians=random_gaussians(1, 4), ids=[bad])
        assert "holds a lone surrogate '\\ud800' at character 1" in str(added.value)  # add's message ...
        calls = {
            "delete": lambda: store.delete(["a", bad]),
            "delete with a filter": lambda: store.delete([bad], filter={"k": 1}),
            "get_by_ids": lambda: store.get_by_ids(["a", bad]),
            "get_gaussians": lambda: store.get_gaussians([bad]),
        }
        for what, call in calls.items():
            with pytest.raises(ValueError) as err:  # ... the same check, not pymilvus' MilvusException
                call()
            message = str(err.value)
            method = what.split()[0]
            assert message.startswith(f"{method}: id holds a lone surrogate '\\ud800' at character 1"), (what, message)
            assert f"got {bad!r}" in message, (what, message)
        assert sorted(store.ids) == ["a", "b"]  # nothing deleted
        assert [d.id for d in store.get_by_ids(["b", "a", "zz"])] == ["b", "a"]  # plain ids as before
    finally:
        store.close()
