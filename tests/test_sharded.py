"""Streaming, resumable corpus encoding into shards, locally and as a Ray Data job."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_encoder
from kl_retrievers import sharded
from kl_retrievers.cli import main, read_texts
from kl_retrievers.sharded import encode_corpus, iter_encoded, load_encoded, plan_shards, read_shard

WORDS = "the cat sat on mat tea bread sun moon rock sea water green black star".split()


def _corpus(path: Path, n: int = 23, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 12))))
        lines.append(json.dumps({"_id": f"doc{i}", "title": f"t{i % 3}", "text": words}))
        if i % 5 == 0:
            lines.append("")  # blank lines are skipped, as in the one-shot reader
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    out = tmp_path / "tiny-model"
    make_tiny_encoder().save_pretrained(out)
    return out


def test_plan_and_read_shards_match_the_one_shot_reader(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    specs, identity = plan_shards(corpus, shard_size=5)
    assert [s.rows for s in specs] == [5, 5, 5, 5, 3]
    assert identity["records"] == 23 and identity["size"] == corpus.stat().st_size
    ids, texts = [], []
    for spec in specs:
        part_ids, part_texts = read_shard(corpus, spec)
        ids += part_ids
        texts += part_texts
    assert (ids, texts) == read_texts(corpus)
    plain = tmp_path / "c.txt"
    plain.write_text("a\n\nb\nc\n")
    specs, _ = plan_shards(plain, shard_size=2)
    assert [read_shard(plain, s) for s in specs] == [(["0", "1"], ["a", "b"]), (["2"], ["c"])]
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards(plain, shard_size=0)


def test_local_encoding_matches_encoding_each_shard(tmp_path: Path, model_dir: Path) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    report = encode_corpus(corpus, tmp_path / "out", model=str(model_dir), shard_size=5, show_progress_bar=False)
    assert report.shards == 5 and report.rows == 23 and report.encoded == [0, 1, 2, 3, 4] and report.reused == []
    g, ids = load_encoded(tmp_path / "out")
    want_ids, texts = read_texts(corpus)
    assert ids == want_ids and g.mean.shape == (23, 8) and g.mean.dtype == np.float32
    from kl_retrievers.pretrained import load_model

    enc = load_model(str(model_dir))
    whole = enc.encode_documents(texts)
    np.testing.assert_allclose(g.mean, whole.mean, atol=1e-5)
    np.testing.assert_allclose(g.var, whole.var, rtol=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["score"] == {"name": "neg_kl", "direction": "higher_is_better"}
    assert manifest["input"]["records"] == 23 and manifest["kind"] == "document"


def test_resume_redoes_only_missing_and_corrupt_shards(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    real = sharded.encode_shard
    calls: list[int] = []

    def flaky(encoder: object, *, spec: sharded.ShardSpec, **kw: object) -> int:
        if spec.index == 3:
            raise KeyboardInterrupt  # the run is interrupted while encoding shard 3
        calls.append(spec.index)
        return real(encoder, spec=spec, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sharded, "encode_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(corpus, out, model=str(model_dir), shard_size=5, show_progress_bar=False)
    monkeypatch.setattr(sharded, "encode_shard", real)
    assert calls == [0, 1, 2] and not (out / "shard-00003").exists()
    with pytest.raises(ValueError, match="shard-00003 is missing"):
        load_encoded(out)
    report = encode_corpus(corpus, out, model=str(model_dir), shard_size=5, show_progress_bar=False)
    assert report.encoded == [3, 4] and report.reused == [0, 1, 2]
    first, ids = load_encoded(out)
    # corrupt one shard, delete another: only those two are redone, with identical output
    mean_file = out / "shard-00001" / "mean.npy"
    data = bytearray(mean_file.read_bytes())
    data[-3] ^= 0xFF
    mean_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard-00001 is corrupt"):
        list(iter_encoded(out))
    import shutil

    shutil.rmtree(out / "shard-00004")
    report = encode_corpus(corpus, out, model=str(model_dir), shard_size=5, show_progress_bar=False)
    assert report.encoded == [1, 4] and report.reused == [0, 2, 3]
    again, ids2 = load_encoded(out)
    assert ids2 == ids
    np.testing.assert_array_equal(again.mean, first.mean)
    np.testing.assert_array_equal(again.var, first.var)


def test_refuses_a_folder_from_another_input_or_settings(tmp_path: Path, model_dir: Path) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    out = tmp_path / "out"
    encode_corpus(corpus, out, model=str(model_dir), shard_size=5, show_progress_bar=False)
    before = (out / "shard-00000" / "mean.npy").read_bytes()
    with pytest.raises(ValueError, match="shard_size, shards differ"):
        encode_corpus(corpus, out, model=str(model_dir), shard_size=7, show_progress_bar=False)
    other = _corpus(tmp_path / "other.jsonl", seed=1)
    with pytest.raises(ValueError, match="input"):
        encode_corpus(other, out, model=str(model_dir), shard_size=5, show_progress_bar=False)
    assert (out / "shard-00000" / "mean.npy").read_bytes() == before
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        encode_corpus(corpus, stray, model=str(model_dir), shard_size=5, show_progress_bar=False)
    with pytest.raises(ValueError, match="backend"):
        encode_corpus(corpus, tmp_path / "o2", model=str(model_dir), backend="spark")


def test_cli_encode_streams_into_shards(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path / "c.jsonl")
    args = ["encode", "--input", str(corpus), "--out", str(tmp_path / "out"), "--model", str(model_dir)]
    assert main([*args, "--shard-size", "10", "--no-progress"]) == 0
    assert "wrote 23 Gaussians in 3 shards" in capsys.readouterr().out
    assert main([*args, "--shard-size", "10", "--no-progress"]) == 0
    assert "0 encoded, 3 reused" in capsys.readouterr().out
    g, ids = load_encoded(tmp_path / "out")
    assert len(g) == 23 and ids[0] == "doc0"


def test_ray_data_job_gives_identical_output(tmp_path: Path, model_dir: Path) -> None:
    import ray

    corpus = _corpus(tmp_path / "c.jsonl", n=40)
    local = encode_corpus(corpus, tmp_path / "local", model=str(model_dir), shard_size=8, show_progress_bar=False)
    bad = tmp_path / "bad.jsonl"
    lines = [line for line in corpus.read_text().splitlines() if line]
    bad.write_text("\n".join([*lines[:12], '{"_id": "x1", "text": ', *lines[12:]]) + "\n")
    try:
        report = encode_corpus(
            corpus, tmp_path / "ray", model=str(model_dir), shard_size=8, backend="ray", num_workers=2
        )
        # a half-finished local job is finished by Ray: the same model (fingerprint), its name spelled otherwise
        shutil.rmtree(tmp_path / "local" / "shard-00003")
        resumed = encode_corpus(corpus, tmp_path / "local", model=f"{model_dir}/", shard_size=8, backend="ray")
        # a bad record: the worker's own message, not a Ray traceback asking for a bug report
        with pytest.raises(ValueError, match=r"^\S*bad.jsonl, line 13: not valid JSON"):
            encode_corpus(bad, tmp_path / "bad", model=str(model_dir), shard_size=4, backend="ray", num_workers=1)
    finally:
        ray.shutdown()
    assert report.backend == "ray" and report.encoded == local.encoded == [0, 1, 2, 3, 4]
    assert resumed.encoded == [3] and resumed.reused == [0, 1, 2, 4]
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray")]
    assert manifests[0]["model"] == manifests[1]["model"] is not None
    a, ids_a = load_encoded(tmp_path / "local")
    b, ids_b = load_encoded(tmp_path / "ray")
    assert ids_a == ids_b
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.var, b.var)
    written = sorted(p.name for p in (tmp_path / "bad").glob("shard-*"))
    assert written == []  # the bad record is found while planning, before any shard is encoded


class _FlakyRay:
    """Stands in for the ``ray`` module: ``init`` fails ``fails`` times with ``message``, then succeeds."""

    def __init__(self, fails: int, message: str = "The current node timed out during startup. This could ...") -> None:
        self.fails, self.message = fails, message
        self.calls: list[tuple[str, dict[str, object]]] = []

    def init(self, **kwargs: object) -> None:
        self.calls.append(("init", kwargs))
        if sum(c[0] == "init" for c in self.calls) <= self.fails:
            raise Exception(self.message)

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))


def test_a_local_ray_node_that_times_out_at_start_up_is_started_again(caplog: pytest.LogCaptureFixture) -> None:
    from kl_retrievers.sharded import RAY_LOCAL_START_ATTEMPTS, _ray_init

    ray = _FlakyRay(fails=1)
    with caplog.at_level(logging.WARNING, logger="kl_retrievers.sharded"):
        _ray_init(ray, {"num_cpus": 2})
    assert [c[0] for c in ray.calls] == ["init", "shutdown", "init"]
    assert "timed out during start-up (attempt 1 of 3)" in caplog.text
    always = _FlakyRay(fails=99)
    with pytest.raises(Exception, match="timed out during startup"):
        _ray_init(always, {})
    assert sum(c[0] == "init" for c in always.calls) == RAY_LOCAL_START_ATTEMPTS
    other = _FlakyRay(fails=1, message="some other failure")  # anything else is not retried
    with pytest.raises(Exception, match="some other failure"):
        _ray_init(other, {})
    remote = _FlakyRay(fails=1)  # nor is connecting to a cluster
    with pytest.raises(Exception, match="timed out"):
        _ray_init(remote, {"address": "ray://head:10001"})
    assert [c[0] for c in other.calls] == [c[0] for c in remote.calls] == ["init"]


def test_shards_of_another_model_with_the_same_name_are_not_reused(tmp_path: Path) -> None:
    """Two models both named "tiny-random" (other weights, or another dimension) must not share shards."""
    src = tmp_path / "c.txt"
    src.write_text("".join(f"text number {i}\n" for i in range(4)))
    first, other, wider = make_tiny_encoder(seed=0), make_tiny_encoder(seed=1), make_tiny_encoder(seed=0, dim=16)
    assert first.name_or_path == other.name_or_path == wider.name_or_path
    out = tmp_path / "enc"
    encode_corpus(src, out, encoder=first, shard_size=2, show_progress_bar=False)
    for encoder in (other, wider):
        with pytest.raises(ValueError, match="model_fingerprint differ"):
            encode_corpus(src, out, encoder=encoder, shard_size=2, show_progress_bar=False)
    again = encode_corpus(src, out, encoder=first, shard_size=2, show_progress_bar=False)
    assert again.encoded == [] and again.reused == [0, 1]


def test_a_leftover_of_an_interrupted_manifest_write_does_not_block_the_run(tmp_path: Path) -> None:
    src = tmp_path / "c.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "enc"
    out.mkdir()
    (out / ".manifest.json.tmp-0badf00d").write_text("")  # what a kill during the first manifest write leaves
    report = encode_corpus(src, out, encoder=make_tiny_encoder(), shard_size=1, show_progress_bar=False)
    assert report.encoded == [0, 1]
    other = tmp_path / "enc2"
    other.mkdir()
    (other / "stray.txt").write_text("x")  # anything else still means "not our folder"
    with pytest.raises(ValueError, match="not empty and has no manifest.json"):
        encode_corpus(src, other, encoder=make_tiny_encoder(), shard_size=1, show_progress_bar=False)
