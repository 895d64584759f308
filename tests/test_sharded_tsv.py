"""Sharded (streaming) encoding reads MS MARCO-style ``.tsv`` inputs as ``kl-retrievers encode`` does without shards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.cli import main, read_texts
from kl_retrievers.sharded import encode_corpus, load_encoded, plan_shards, read_shard

#: A header, a byte order mark, CRLF line ends, blank lines (also inside a shard) and tabs-free texts with spaces.
MESSY = "\ufeffpid\tpassage\r\n\r\n7\tthe cat sat\r\n8\ta dog  \r\n\n  \n10\tsun and moon\r\n11\tsea\n12\tx\r\n"


def _sharded(path: Path, shard_size: int) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    for spec in plan_shards(path, shard_size=shard_size)[0]:
        part_ids, part_texts = read_shard(path, spec)
        ids += part_ids
        texts += part_texts
    return ids, texts


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    out = tmp_path / "tiny-model"
    make_tiny_encoder().save_pretrained(out)
    return out


@pytest.mark.parametrize("shard_size", [1, 2, 4, 100])
def test_sharded_tsv_gives_the_ids_and_texts_of_the_one_shot_reader(tmp_path: Path, shard_size: int) -> None:
    path = tmp_path / "collection.tsv"
    path.write_bytes(MESSY.encode("utf-8"))
    want = read_texts(path)
    assert want == (["7", "8", "10", "11", "12"], ["the cat sat", "a dog  ", "sun and moon", "sea", "x"])
    assert _sharded(path, shard_size) == want
    assert plan_shards(path, shard_size=shard_size)[1]["records"] == 5


def test_sharded_tsv_without_a_header_reads_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "c.TSV"
    path.write_text("d1\tone\nd2\ttwo\n")
    assert _sharded(path, 1) == read_texts(path) == (["d1", "d2"], ["one", "two"])


def test_sharded_tsv_header_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("\nqid\tquery\n1\twhat is x\n")
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.sharded"):
        assert _sharded(path, 1) == (["1"], ["what is x"])
    warned = [r.getMessage() for r in caplog.records if r.name == "kl_retrievers.sharded"]
    assert len(warned) == 1 and "line 2" in warned[0] and "'qid'" in warned[0], warned


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("d1\tone\nd2\ttwo\tthree\n", r"c\.tsv, line 2: has 3 tab-separated columns"),
        ("d1\tone\n\nd2\n", r"c\.tsv, line 3: has 1 tab-separated column;"),
        ("d1\tone\n \thello\n", r"c\.tsv, line 2: the id column is empty"),
        ("d1\tone\nd2\ttwo\n\nd1\tagain\n", r"c\.tsv, line 4: duplicate id 'd1' \(first on line 1\)"),
        ("id\ttext\nid\ttext\nid\tx\n", r"c\.tsv, line 3: duplicate id 'id' \(first on line 2\)"),
    ],
)
def test_sharded_tsv_refuses_what_the_one_shot_reader_refuses_with_its_message(
    tmp_path: Path, content: str, match: str
) -> None:
    path = tmp_path / "c.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as one_shot:
        read_texts(path)
    with pytest.raises(ValueError, match=match) as streamed:
        plan_shards(path, shard_size=1)
    assert str(streamed.value) == str(one_shot.value)


def test_csv_stays_refused_on_the_sharded_path(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("7,the cat\n")
    with pytest.raises(ValueError, match=r"not \.csv: convert it to JSON Lines"):
        plan_shards(path, shard_size=1)


def test_cli_encode_shard_size_reads_a_tsv_like_encode_without_shards(tmp_path: Path, model_dir: Path) -> None:
    from kl_retrievers._io import load_gaussians

    corpus = tmp_path / "collection.tsv"
    corpus.write_bytes(MESSY.encode("utf-8"))
    base = ["encode", "--model", str(model_dir), "--input", str(corpus), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "one.safetensors")]) == 0
    assert main([*base, "--out", str(tmp_path / "shards"), "--shard-size", "2"]) == 0
    whole, whole_ids = load_gaussians(tmp_path / "one.safetensors")
    streamed, ids = load_encoded(tmp_path / "shards")
    assert ids == whole_ids == ["7", "8", "10", "11", "12"]
    np.testing.assert_allclose(streamed.mean, whole.mean, atol=1e-5)
    np.testing.assert_allclose(streamed.var, whole.var, rtol=1e-5)


def test_an_interrupted_sharded_tsv_run_resumes(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "collection.tsv"
    corpus.write_bytes(MESSY.encode("utf-8"))
    out = tmp_path / "out"
    real = sharded.encode_shard
    calls: list[int] = []

    def flaky(encoder: object, *, spec: sharded.ShardSpec, **kw: object) -> int:
        if spec.index == 1:
            raise KeyboardInterrupt  # the run is interrupted while encoding shard 1
        calls.append(spec.index)
        return real(encoder, spec=spec, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sharded, "encode_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(corpus, out, model=str(model_dir), shard_size=2, show_progress_bar=False)
    monkeypatch.setattr(sharded, "encode_shard", real)
    assert calls == [0] and not (out / "shard-00001").exists()
    report = encode_corpus(corpus, out, model=str(model_dir), shard_size=2, show_progress_bar=False)
    assert report.encoded == [1, 2] and report.reused == [0]
    resumed, ids = load_encoded(out)
    assert ids == read_texts(corpus)[0]
    fresh = encode_corpus(corpus, tmp_path / "fresh", model=str(model_dir), shard_size=2, show_progress_bar=False)
    assert fresh.encoded == [0, 1, 2]
    again, _ = load_encoded(tmp_path / "fresh")
    np.testing.assert_array_equal(resumed.mean, again.mean)
    np.testing.assert_array_equal(resumed.var, again.var)


def test_a_tsv_copy_renamed_txt_is_another_input(tmp_path: Path, model_dir: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("d1\tone\nd2\ttwo\n")
    out = tmp_path / "out"
    encode_corpus(tsv, out, model=str(model_dir), shard_size=1, show_progress_bar=False)
    txt = tmp_path / "c.txt"
    txt.write_bytes(tsv.read_bytes())
    with pytest.raises(ValueError, match=r"\(input differ\)"):
        encode_corpus(txt, out, model=str(model_dir), shard_size=1, show_progress_bar=False)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("1\ta\n2\tb\n3\tc\n 4\td\n", r"c\.tsv, line 4 \(record 4\): the id ' 4' has leading or trailing whitespace"),
        ("id\ttext\n\n1\ta\n2 \tb\n", r"c\.tsv, line 4 \(record 2\): the id '2 ' has leading or trailing whitespace"),
        (" 1\ta\n", r"c\.tsv, line 1 \(record 1\): the id ' 1' has leading or trailing whitespace"),
    ],
)
def test_a_padded_tsv_id_is_refused_naming_its_line_and_record_on_both_paths(
    tmp_path: Path, content: str, match: str
) -> None:
    path = tmp_path / "c.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as one_shot:
        read_texts(path)
    for shard_size in (1, 3):
        with pytest.raises(ValueError, match=match) as streamed:
            plan_shards(path, shard_size=shard_size)
        assert str(streamed.value) == str(one_shot.value)


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r\r\n"])
def test_the_tsv_header_warning_reads_alike_on_both_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, end: str
) -> None:
    path = tmp_path / "h.tsv"
    path.write_text(f"pid\tpassage{end}1\ta{end}", newline="")
    with caplog.at_level(logging.WARNING):
        read_texts(path)
    one_shot = [r.getMessage() for r in caplog.records if r.name == "kl_retrievers.cli"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _sharded(path, 1) == (["1"], ["a"])
    streamed = [r.getMessage() for r in caplog.records if r.name == "kl_retrievers.sharded"]
    assert (
        one_shot
        == streamed
        == [f"{path}: line 1 (columns 'pid' and 'passage') is taken for a header and skipped, not read as a document"]
    )
