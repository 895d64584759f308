"""Audit of sharded encodings (``kl_retrievers.sharded`` and ``kl-retrievers encode --shard-size``).

Each test names the audit item it covers; every one failed before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.cli import main, read_texts
from kl_retrievers.sharded import ShardSpec, encode_corpus, iter_encoded, load_encoded, plan_shards


@pytest.fixture(scope="module")
def encoder() -> Any:
    return make_tiny_encoder()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny-model"
    make_tiny_encoder().save_pretrained(out)
    return out


def _jsonl(path: Path, tag: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"_id": f"{tag}{i}", "text": f"{tag} text {i}"}) + "\n" for i in range(n)))
    return path


def _same_refusal_in_both_readers(path: Path) -> str:
    """The one-shot reader's and plan_shards' messages for a file both refuse: they must be the same text."""
    with pytest.raises(ValueError) as one_shot:
        read_texts(path)
    with pytest.raises(ValueError) as planned:
        plan_shards(path, shard_size=1)
    assert str(planned.value) == str(one_shot.value)
    return str(one_shot.value)


def _encode(corpus: Path, out: Path, encoder: Any, shard_size: int = 5, **kw: Any) -> sharded.EncodeReport:
    return encode_corpus(corpus, out, encoder=encoder, shard_size=shard_size, show_progress_bar=False, **kw)


# ---------------------------------------------------------------- 1. a shard belongs to one run
def test_item1_a_shard_of_another_run_is_refused_on_load_and_redone_on_resume(tmp_path: Path, encoder: Any) -> None:
    a = _jsonl(tmp_path / "a.jsonl", "a", 10)
    b = _jsonl(tmp_path / "b.jsonl", "b", 10)
    _encode(a, tmp_path / "out_a", encoder)
    _encode(b, tmp_path / "out_b", encoder)
    shutil.rmtree(tmp_path / "out_a" / "shard-00001")
    shutil.copytree(tmp_path / "out_b" / "shard-00001", tmp_path / "out_a" / "shard-00001")
    with pytest.raises(ValueError, match=r"shard-00001.*another encode run"):
        load_encoded(tmp_path / "out_a")
    with pytest.raises(ValueError, match=r"shard-00001.*another encode run"):
        next(iter_encoded(tmp_path / "out_a"))
    report = _encode(a, tmp_path / "out_a", encoder)
    assert report.encoded == [1] and report.reused == [0]
    assert load_encoded(tmp_path / "out_a")[1] == [f"a{i}" for i in range(10)]
    meta = json.loads((tmp_path / "out_a" / "shard-00000" / "shard.json").read_text())
    assert isinstance(meta["run"], str) and len(meta["run"]) == 64


def test_item1_other_settings_give_another_run_key(tmp_path: Path, encoder: Any) -> None:
    a = _jsonl(tmp_path / "a.jsonl", "a", 10)
    _encode(a, tmp_path / "doc", encoder)
    _encode(a, tmp_path / "query", encoder, kind="query")
    shutil.rmtree(tmp_path / "doc" / "shard-00000")
    shutil.copytree(tmp_path / "query" / "shard-00000", tmp_path / "doc" / "shard-00000")
    with pytest.raises(ValueError, match=r"shard-00000.*another encode run"):
        load_encoded(tmp_path / "doc")
    assert _encode(a, tmp_path / "doc", encoder).encoded == [0]


def test_item1_shards_without_a_run_key_load_with_a_warning_and_are_kept(
    tmp_path: Path, encoder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder written before run keys (hours of encoding, perhaps) still loads and resumes, with one warning."""
    a = _jsonl(tmp_path / "a.jsonl", "a", 10)
    out = tmp_path / "out"
    _encode(a, out, encoder)
    before = load_encoded(out)[0]
    for shard in ("shard-00000", "shard-00001"):  # as the previous version wrote them
        meta = json.loads((out / shard / "shard.json").read_text())
        del meta["run"]
        (out / shard / "shard.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="kl_retrievers.sharded"):
        g, ids = load_encoded(out)
    assert ids == [f"a{i}" for i in range(10)]
    np.testing.assert_array_equal(g.mean, before.mean)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "2 of its 2 shards" in caplog.records[0].message and "before run keys" in caplog.records[0].message
    report = _encode(a, out, encoder)
    assert report.encoded == [] and report.reused == [0, 1]


def test_item1_shards_must_follow_each_other_and_cover_the_input(tmp_path: Path, encoder: Any) -> None:
    a = _jsonl(tmp_path / "a.jsonl", "a", 10)
    out = tmp_path / "out"
    _encode(a, out, encoder)
    path = out / "shard-00001" / "shard.json"
    meta = json.loads(path.read_text())
    meta["spec"]["first_row"] = 4
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"shard-00001.*first_row 4.*5 rows"):
        load_encoded(out)


# ---------------------------------------------------------------- 2 and 4. one id rule, records checked while planning
@pytest.mark.parametrize(
    "line",
    [
        '{"_id": null, "text": "a"}',
        '{"_id": null, "id": "x", "text": "a"}',
        '{"_id": 1.5, "text": "a"}',
        '{"_id": true, "text": "a"}',
        '{"_id": "", "text": "a"}',
        '{"_id": " ", "text": "a"}',
        '{"id": {"k": 1}, "text": "a"}',
    ],
)
def test_item2_bad_ids_are_refused_as_the_one_shot_reader_refuses_them(tmp_path: Path, line: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "ok", "text": "fine"}\n\n' + line + "\n")
    assert ", line 3: " in _same_refusal_in_both_readers(path)


def test_item2_valid_ids_are_the_same_in_both_readers(tmp_path: Path, encoder: Any) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": 7, "text": "a"}\n{"id": "x", "text": "b"}\n{"text": "c"}\n{"_id": -3, "text": "d"}\n')
    _encode(path, tmp_path / "out", encoder, shard_size=3)
    assert load_encoded(tmp_path / "out")[1] == read_texts(path)[0] == ["7", "x", "2", "-3"]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"_id": "bad", "txt": "typo field"}', "auto"),
        ('{"_id": "bad", "text": "x"}', "body"),
        ('{"_id": "bad", "text": null}', "auto"),
        ('["a list"]', "auto"),
        ('{"_id": "bad", "text": ', "auto"),
        ('{"_id": false, "text": "x"}', "auto"),
    ],
)
def test_item4_a_bad_record_is_found_before_any_shard_is_encoded(
    tmp_path: Path, encoder: Any, line: str, field: str
) -> None:
    lines = []
    for i in range(20):
        lines.append(json.dumps({"_id": f"d{i}", "text": f"text {i}", "body": f"body {i}"}))
        if i % 4 == 0:
            lines.append("")
    lines.append(line)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as one_shot:
        read_texts(corpus, field)
    assert f", line {len(lines)}: " in str(one_shot.value)
    with pytest.raises(ValueError) as planned:
        plan_shards(corpus, shard_size=5, field=field)
    assert str(planned.value) == str(one_shot.value)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as encoded:
        _encode(corpus, out, encoder, field=field)
    assert str(encoded.value) == str(one_shot.value)
    assert not out.exists() or not any(p.name.startswith("shard-") for p in out.iterdir())


def test_item4_text_that_is_not_utf8_names_its_line(tmp_path: Path, encoder: Any) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"one\n\ntwo\nthree \xff\nfour\n")
    with pytest.raises(ValueError, match=r"c\.txt, line 4: not UTF-8"):
        plan_shards(corpus, shard_size=1)
    with pytest.raises(ValueError, match=r"c\.txt, line 4: not UTF-8"):
        _encode(corpus, tmp_path / "out", encoder, shard_size=1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("shard-*"))


# ---------------------------------------------------------------- 3. Ray with device cuda and no GPU
class _FakeRay(types.ModuleType):
    """Stands in for ``ray``: a running cluster with ``resources``; starting actors records the call."""

    def __init__(self, resources: dict[str, float]) -> None:
        super().__init__("ray")
        self.resources = resources
        self.started = False
        self.data = types.SimpleNamespace(from_items=self._from_items)

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)

    def _from_items(self, *args: Any, **kwargs: Any) -> Any:
        self.started = True
        raise RuntimeError("actors started")


@pytest.mark.parametrize("resources", [{"CPU": 4.0}, {"CPU": 4.0, "GPU": 0.0}, {"CPU": 4.0, "GPU": 0.5}])
def test_item3_ray_with_cuda_on_a_cluster_without_a_gpu_is_refused(
    monkeypatch: pytest.MonkeyPatch, resources: dict[str, float]
) -> None:
    fake = _FakeRay(resources)
    monkeypatch.setitem(sys.modules, "ray", fake)
    todo = [ShardSpec(0, 0, 10, 0, 3)]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match=r"device 'cuda'.*local Ray node has fewer than one"):
        sharded._run_ray(todo, model=None, device="cuda", job={}, num_workers=None, ray_address=None)
    assert not fake.started
    with pytest.raises(RuntimeError, match="actors started"):  # CPU workers need no GPU
        sharded._run_ray(todo, model=None, device="cpu", job={}, num_workers=None, ray_address=None)


def test_ray_with_cuda_on_a_named_cluster_without_gpus_yet_starts_one_actor_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An autoscaling cluster shows no GPU until a GPU actor is queued: refusing would break it."""
    fake = _FakeRay({"CPU": 4.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    with caplog.at_level("WARNING", logger="kl_retrievers.sharded"), pytest.raises(RuntimeError, match="started"):
        sharded._run_ray(
            [ShardSpec(0, 0, 10, 0, 3)], model=None, device="cuda", job={}, num_workers=None, ray_address="ray://x:1"
        )
    assert fake.started and "adds a GPU node" in caplog.text
    assert sharded._ray_workers({"CPU": 4.0}, device="cuda", num_workers=3, shards=5, local=False) == 3


def test_item3_ray_with_cuda_on_a_cluster_with_gpus_starts_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeRay({"CPU": 4.0, "GPU": 2.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(RuntimeError, match="actors started"):
        sharded._run_ray(
            [ShardSpec(0, 0, 10, 0, 3)], model=None, device="cuda:0", job={}, num_workers=None, ray_address=None
        )
    assert fake.started


# ---------------------------------------------------------------- 5. integer sizes
@pytest.mark.parametrize("size", ["3", 2.5, 3.0, True, None, 0, -1])
def test_item5_shard_size_must_be_a_positive_int(tmp_path: Path, encoder: Any, size: Any) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 7)
    with pytest.raises(ValueError, match=rf"shard_size must be a positive integer; got {size!r}"):
        plan_shards(corpus, shard_size=size)
    with pytest.raises(ValueError, match=rf"shard_size must be a positive integer; got {size!r}"):
        _encode(corpus, tmp_path / "out", encoder, shard_size=size)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["3", 2.5, True, 0])
def test_item5_batch_size_must_be_a_positive_int(tmp_path: Path, encoder: Any, size: Any) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 7)
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer; got {size!r}"):
        _encode(corpus, tmp_path / "out", encoder, batch_size=size)


def test_item5_numpy_integers_are_accepted(tmp_path: Path, encoder: Any) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 7)
    three64: Any = np.int64(3)  # numpy integers, as a user's array arithmetic gives them
    three32: Any = np.int32(3)
    assert [s.rows for s in plan_shards(corpus, shard_size=three64)[0]] == [3, 3, 1]
    report = _encode(corpus, tmp_path / "out", encoder, shard_size=three32, batch_size=np.int64(2))
    assert report.shards == 3
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["shard_size"] == 3


# ---------------------------------------------------------------- 6. nothing yielded from an unfinished folder
@pytest.mark.parametrize("damage", ["folder", "shard.json", "ids.json"])
def test_item6_iter_encoded_checks_every_shard_before_yielding(tmp_path: Path, encoder: Any, damage: str) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 14)
    out = tmp_path / "out"
    _encode(corpus, out, encoder)
    if damage == "folder":
        shutil.rmtree(out / "shard-00002")
    else:
        (out / "shard-00002" / damage).unlink()
    it = iter_encoded(out)
    with pytest.raises(ValueError, match=r"shard-00002.*rerun the encode command"):
        next(it)


# ---------------------------------------------------------------- 7. an empty corpus
def test_item7_an_empty_corpus_is_refused_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"empty\.jsonl: holds no texts; nothing to encode"):
        encode_corpus(empty, out, model=str(tmp_path / "no-such-model"), shard_size=5, show_progress_bar=False)
    assert not out.exists()
    no_model = str(tmp_path / "no-such-model")
    assert main(["encode", "-i", str(empty), "-o", str(out), "-m", no_model, "--shard-size", "3", "--no-progress"]) == 2
    assert "holds no texts; nothing to encode" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- 8. the same input under another name
def test_item8_a_renamed_identical_input_resumes(tmp_path: Path, encoder: Any) -> None:
    a = _jsonl(tmp_path / "a.jsonl", "a", 10)
    out = tmp_path / "out"
    _encode(a, out, encoder)
    moved = tmp_path / "moved.jsonl"
    shutil.copyfile(a, moved)
    shutil.rmtree(out / "shard-00001")
    report = _encode(moved, out, encoder)
    assert report.reused == [0] and report.encoded == [1]
    assert json.loads((out / "manifest.json").read_text())["input"]["name"] == "moved.jsonl"
    assert load_encoded(out)[1] == [f"a{i}" for i in range(10)]
    other = _jsonl(tmp_path / "other.jsonl", "b", 10)
    with pytest.raises(ValueError, match=r"\(input differ\)"):
        _encode(other, out, encoder)


# ---------------------------------------------------------------- 9. messages about encoded-shards folders
def test_item9_one_shot_encode_into_an_encoded_shards_folder_says_what_it_is(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 6)
    enc = tmp_path / "enc"
    assert main(["encode", "-i", str(corpus), "-o", str(enc), "-m", str(model_dir), "--shard-size", "3"]) == 0
    capsys.readouterr()
    assert main(["encode", "-i", str(corpus), "-o", str(enc), "-m", str(model_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is an encoded-shards folder" in err and "--shard-size" in err and "not an encode output" not in err
    assert (enc / "manifest.json").is_file()


def test_item9_index_of_an_encoded_shards_folder_points_to_iter_encoded(
    tmp_path: Path, encoder: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 6)
    enc = tmp_path / "enc"
    _encode(corpus, enc, encoder, shard_size=3)
    assert main(["index", str(enc), "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "is an encoded-shards folder" in err and "iter_encoded" in err and "KLStore.add(gaussians=" in err
    assert "holds no corpus.jsonl" not in err


def test_item9_streaming_into_a_safetensors_name_is_refused(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 6)
    out = tmp_path / "g.safetensors"
    assert main(["encode", "-i", str(corpus), "-o", str(out), "-m", str(model_dir), "--shard-size", "3"]) == 2
    err = capsys.readouterr().err
    assert "g.safetensors" in err and "folder" in err
    assert not out.exists()


def test_a_shard_folder_an_earlier_version_named_x_safetensors_still_resumes(
    tmp_path: Path, model_dir: Path, encoder: Any
) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 6)
    out = tmp_path / "old.safetensors"  # the previous version wrote shard folders under such names
    _encode(corpus, out, make_tiny_encoder(), shard_size=3)
    shutil.rmtree(out / "shard-00001")
    assert main(["encode", "-i", str(corpus), "-o", str(out), "-m", str(model_dir), "--shard-size", "3"]) == 0
    assert load_encoded(out)[1] == [f"a{i}" for i in range(6)]


def test_a_jsonl_input_renamed_txt_is_another_input(tmp_path: Path, encoder: Any) -> None:
    """Same bytes, but a .txt name reads each JSON line as a text: resuming would mix two readings."""
    a = _jsonl(tmp_path / "a.jsonl", "a", 10)
    out = tmp_path / "out"
    _encode(a, out, encoder)
    shutil.rmtree(out / "shard-00001")
    as_text = tmp_path / "a.txt"
    shutil.copyfile(a, as_text)
    with pytest.raises(ValueError, match=r"\(input differ\)"):
        _encode(as_text, out, encoder)


def test_item9_cli_common_knows_the_encoded_shards_format() -> None:
    from kl_retrievers.cli_common import ENCODED_SHARDS_FORMAT

    assert ENCODED_SHARDS_FORMAT == sharded._FORMAT_NAME


# ---------------------------------------------------------------- 10. a pipe is not a file
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_item10_a_pipe_as_input_is_not_a_regular_file(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"pipe\.jsonl is not a regular file.*seekable"):
        plan_shards(fifo, shard_size=2)
    out = tmp_path / "out"
    assert main(["encode", "-i", str(fifo), "-o", str(out), "-m", str(model_dir), "--shard-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file" in err and "not found" not in err
    assert main(["encode", "-i", str(fifo), "-o", str(tmp_path / "g.safetensors"), "-m", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "is not a regular file" in err and "not found" not in err


def test_item4_a_record_broken_after_planning_is_still_reported_by_the_ray_worker(tmp_path: Path, encoder: Any) -> None:
    """The worker still sends a bad record back as data (now only when the file changed after planning)."""
    corpus = _jsonl(tmp_path / "c.jsonl", "a", 4)
    specs, _ = plan_shards(corpus, shard_size=2)
    line = json.dumps({"_id": "a2", "text": "a text 2"})
    broken = "[" + " " * (len(line) - 2) + "]"  # same length: the planned byte ranges still fit
    corpus.write_text(corpus.read_text().replace(line, broken, 1))
    worker = sharded._RayShardWorker.__new__(sharded._RayShardWorker)
    worker.encoder = encoder
    worker.job = {"path": str(corpus), "out": str(tmp_path / "out"), "kind": "document", "field": "auto"}
    worker.job.update({"batch_size": 2, "max_length": None, "run": "0" * 64})
    batch = {k: np.asarray([getattr(s, k) for s in specs]) for k in ("index", "start", "end", "first_row", "rows")}
    result = worker(batch)
    assert result["index"].tolist() == [0, 1]
    assert result["error"][0] == ""
    assert (
        result["error"][1].startswith("ValueError: ")
        and "c.jsonl, record 3: expected a JSON object" in result["error"][1]
    )


# ---------------------------------------------------------------- f2. one line rule for JSONL in both readers
@pytest.mark.parametrize(
    "body",
    [
        '{"_id": "a", "text": "a"}\n\u00a0\n{"_id": "b", "text": "b"}\n'.encode(),  # a NBSP line is not blank
        b'{"_id": "a", "text": "a"}\n\x1c\n{"_id": "b", "text": "b"}\n',  # nor is a \x1c line
        b'{"_id": "a", "text": "a"}\r{"_id": "b", "text": "b"}\r',  # a lone \r does not end a line
        b'{"_id": "a", "text": "a"}\n{"_id": "b", "text": "caf\xe9"}\n',  # not UTF-8: the line is named
    ],
)
def test_f2_jsonl_lines_are_split_and_skipped_alike_in_both_readers(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(body)
    assert ", line " in _same_refusal_in_both_readers(path)


def test_f2_crlf_and_ascii_blank_lines_are_read_alike(tmp_path: Path, encoder: Any) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "a\\u2028b"}\r\n \t\r\n\r\n{"_id": "b", "text": "c"}\r\n')
    assert read_texts(path) == (["a", "b"], ["a\u2028b", "c"])
    _encode(path, tmp_path / "out", encoder, shard_size=1)
    assert load_encoded(tmp_path / "out")[1] == ["a", "b"]
