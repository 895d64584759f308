"""``benchmarks/wise_ft.py``: weight-space interpolation between MiniLM and a LoRA job (real backbone)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kl_retrievers import GaussianEncoder

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

TEXTS = [
    "Protein folding in yeast is assisted by chaperones.",
    "The capital of France is Paris.",
    "Aspirin lowers the risk of a second heart attack.",
]


def untrained() -> GaussianEncoder:
    """The untrained design of the LoRA jobs (= MiniLM cosine, unit variances)."""
    from gpu_lora import BASE

    return GaussianEncoder.from_backbone(
        BASE, pooling="mean", normalize_pooled=True, var_token=False, beta=1.0,
        max_length=256, query_max_length=64, seed=0,
    )  # fmt: skip


def stand_in_jobs(seeds: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stand-ins for trained jobs: every trainable tensor (LoRA factors, heads) moved by seeded noise.

    Returns the untrained trainable tensors and the ``JOB/tensor`` adapters of each job in ``seeds``.
    """
    from gpu_lora import LORA_R

    from kl_retrievers.training.trainer import apply_freezing

    start = untrained()
    apply_freezing(start, lora_r=LORA_R)
    trainable = {n: p.detach().clone() for n, p in start.named_parameters() if p.requires_grad}
    adapters: dict[str, torch.Tensor] = {}
    for job, seed in seeds.items():
        gen = torch.Generator().manual_seed(seed)
        adapters |= {f"{job}/{n}": p + 0.05 * torch.randn(p.shape, generator=gen) for n, p in trainable.items()}
    return trainable, adapters


def test_interpolation_runs_from_minilm_to_the_trained_job() -> None:
    from gpu_lora import _job_encoder
    from wise_ft import interpolate

    job = {"name": "job", "beta": 1.0, "seed": 0}
    trainable, adapters = stand_in_jobs({"job": 0})
    assert any("lora_B" in n for n in trainable) and any("lora_B" not in n and "lora_A" not in n for n in trainable)

    trained = _job_encoder(job, adapters)
    ends = {a: interpolate(job, adapters, a) for a in (0.0, 0.5, 1.0)}

    def docs(enc: GaussianEncoder) -> tuple[np.ndarray, np.ndarray]:
        g = enc.eval().encode_documents(TEXTS)
        return g.mean, g.var

    m0, v0 = docs(ends[0.0])
    ref_mean, ref_var = docs(untrained())
    np.testing.assert_allclose(m0, ref_mean, atol=1e-5)  # alpha 0 is the untrained design (= MiniLM cosine)
    np.testing.assert_allclose(v0, ref_var, atol=1e-6)
    np.testing.assert_allclose(v0, 1.0, atol=1e-5)
    m1, v1 = docs(ends[1.0])
    tm, tv = docs(trained)
    np.testing.assert_allclose(m1, tm, atol=1e-6)  # alpha 1 is the trained job
    np.testing.assert_allclose(v1, tv, atol=1e-6)
    mh, _ = docs(ends[0.5])
    assert not np.allclose(mh, m0, atol=1e-4) and not np.allclose(mh, m1, atol=1e-4)

    # alpha 0.5: half the LoRA update B @ A, and every head parameter halfway from its initial value
    half = dict(ends[0.5].named_parameters())
    for n, p in trained.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_B" in n:
            torch.testing.assert_close(half[n], 0.5 * p)
        elif "lora_A" in n:
            torch.testing.assert_close(half[n], p)
        else:
            torch.testing.assert_close(half[n], trainable[n] + 0.5 * (p - trainable[n]))

    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got 1.5"):
        interpolate(job, adapters, 1.5)


def test_soup_is_the_mean_of_its_members_and_saves_as_a_delta(tmp_path: Path) -> None:
    from gpu_lora import LORA_R, _job_encoder
    from wise_ft import soup

    from kl_retrievers.training import merge_lora

    _, adapters = stand_in_jobs({"job0": 1, "job1": 2})  # two jobs, each moved by its own seeded noise
    members = [_job_encoder({"name": f"job{i}", "beta": 1.0, "seed": 0}, adapters) for i in range(2)]
    mixed = soup(members)
    rank = {p.shape[0] for n, p in mixed.named_parameters() if "lora_A" in n}
    assert rank == {2 * LORA_R}  # the factors are stacked, not averaged
    with pytest.raises(ValueError, match="the same trainable tensors"):
        soup([members[0], mixed])  # rank 16 and rank 32 do not mix

    mixed.save_pretrained(tmp_path / "soup", include_backbone=False)
    loaded = GaussianEncoder.from_pretrained(tmp_path / "soup")
    want = mixed.eval().encode_documents(TEXTS)
    got = loaded.eval().encode_documents(TEXTS)
    np.testing.assert_allclose(got.mean, want.mean, atol=1e-5)
    np.testing.assert_allclose(got.var, want.var, atol=1e-6)

    # every merged weight (backbone and heads) is the mean of the members' merged weights
    for enc in (*members, mixed):
        merge_lora(enc)
    states = [dict(e.state_dict()) for e in members]
    merged = dict(mixed.state_dict())
    assert set(merged) == set(states[0])
    moved = 0
    for key, value in merged.items():
        torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2, atol=1e-6, rtol=1e-5)
        moved += not torch.equal(states[0][key], states[1][key])
    assert moved >= 12  # the LoRA-adapted matrices and the heads differ between the members

    with pytest.raises(ValueError, match="soup needs at least one encoder"):
        soup([])


def test_gpu_wise_command_evaluates_each_alpha_and_keeps_earlier_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gpu_lora.py wise` twice into one folder: the second call must not drop the first call's runs."""
    import argparse
    import gzip
    import json
    import shutil

    import gpu_lora
    from safetensors.torch import save_file

    from kl_retrievers.hub import resolve_model_path

    pack = tmp_path / "pack"
    shutil.copytree(resolve_model_path(gpu_lora.BASE), pack / "backbone")
    docs = [*TEXTS, "Heart attacks are treated in hospital.", "Yeast cells divide by budding."]
    evals = {key: {"corpus": "c", "qids": ["q0", "q1"], "queries": ["aspirin heart", "yeast protein"]}
             for key in gpu_lora.ZS_EVALS}  # fmt: skip
    with gzip.open(pack / "data.json.gz", "wt", encoding="utf-8") as fh:
        json.dump({"corpora": {"c": {"ids": [f"d{i}" for i in range(len(docs))], "texts": docs}}, "evals": evals}, fh)
    monkeypatch.setattr(gpu_lora, "PACK", pack)
    src = tmp_path / "run"
    src.mkdir()
    _, adapters = stand_in_jobs({"job": 0})
    save_file({k: v.contiguous() for k, v in adapters.items()}, str(src / "adapters.safetensors"))
    job = {"name": "job", "beta": 1.0, "seed": 0, "backbone": "minilm", "similarity": "neg_kl", "data": "zs"}
    (src / "jobs.jsonl").write_text(json.dumps(job) + "\n" + json.dumps({"name": "broken", "error": "x"}) + "\n")

    out = tmp_path / "out"
    for alphas in ([0.0], [1.0]):
        gpu_lora.cmd_wise(argparse.Namespace(job=["job"], alphas=alphas, out=str(out), source=str(src), smoke=False))
    rows = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["job-a0", "job-a1"]
    assert [r["wise_ft"] for r in rows] == [{"job": "job", "alpha": 0.0}, {"job": "job", "alpha": 1.0}]
    with np.load(out / "runs.npz") as runs:
        files = set(runs.files)
        a0, a1 = runs["job-a0|scifact:test|score"], runs["job-a1|scifact:test|score"]
    for name in ("job-a0", "job-a1", "job-a0-means-only", "job-a1-means-only"):
        assert {f"{name}|{key}|{part}" for key in gpu_lora.ZS_EVALS for part in ("idx", "score")} <= files
    assert a0.shape == (2, len(docs)) and not np.allclose(a0, a1)
    # alpha 0 has unit variances: its -KL ranking is MiniLM cosine's
    assert rows[0]["scifact:test:doc_var_p1_p50_p99"] == [1.0, 1.0, 1.0]


def test_gpu_report_pairs_each_system_with_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    import gpu_lora

    from kl_retrievers.evaluation import paired_test, save_per_query

    per = {
        "ref": {f"q{i}": {"ndcg@10": v} for i, v in enumerate([0.5, 0.6, 0.7, 0.8])},
        "sys": {f"q{i}": {"ndcg@10": v} for i, v in enumerate([0.4, 0.6, 0.5, 0.75])},
    }
    tests = [k for k, v in gpu_lora.ZS_EVALS.items() if v[1] == "test" and k != "squad-dev"]
    with open(tmp_path / "log.jsonl", "w", encoding="utf-8") as fh:
        for system, offset in (("ref", 0.0), ("sys", 0.1)):
            for key in ["scifact:train", *tests]:
                save_per_query(tmp_path / f"{system}.{key.replace(':', '.')}.json", per[system])
                value = sum(v["ndcg@10"] for v in per[system].values()) / 4 + (offset if key != "scifact:train" else 0)
                fh.write(json.dumps({"system": system, "eval": key, "ndcg@10": value}) + "\n")
    gpu_lora.cmd_report(
        argparse.Namespace(log=str(tmp_path / "log.jsonl"), per_query_dir=str(tmp_path), reference="ref")
    )
    out = capsys.readouterr().out
    res = paired_test(per["sys"], per["ref"])
    assert "| ref | 0.6500 | (reference) |  |" in out
    assert f"| sys | 0.5625 | {res.mean_diff:+.4f} (p = {res.p_value:.2g}) |  |" in out
    assert "| sys | 0.6625 | 0.6625 | 0.6625 | 0.6625 | 0.6625 |" in out


# ---------------------------------------------------------------- stop 40: another backbone, early refusals


def tiny_backbone(folder: Path) -> Path:
    """A 2-layer random BERT saved as a plain backbone folder (no download; not MiniLM's 6 layers)."""
    from conftest import make_tiny_encoder, make_tokenizer

    make_tiny_encoder().backbone.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def test_soup_builds_on_its_members_backbone_and_refuses_another(tmp_path: Path) -> None:
    """A soup of jobs on another backbone than MiniLM is built on theirs (bge's CLS pooling), never on MiniLM."""
    from gpu_lora import LORA_R, _job_encoder
    from wise_ft import soup

    from kl_retrievers.training import merge_lora
    from kl_retrievers.training.trainer import apply_freezing

    folder = str(tiny_backbone(tmp_path / "backbone"))
    start = GaussianEncoder.from_backbone(
        folder, pooling="cls", normalize_pooled=True, var_token=False, beta=1.0,
        max_length=256, query_max_length=64, seed=0,
    )  # fmt: skip
    apply_freezing(start, lora_r=LORA_R)
    adapters: dict[str, torch.Tensor] = {}
    for i in range(2):
        gen = torch.Generator().manual_seed(i + 1)
        adapters |= {
            f"job{i}/{n}": p.detach() + 0.05 * torch.randn(p.shape, generator=gen)
            for n, p in start.named_parameters()
            if p.requires_grad
        }
    jobs = [{"name": f"job{i}", "beta": 1.0, "seed": 0, "backbone": "bge"} for i in range(2)]
    members = [_job_encoder(job, adapters, folder) for job in jobs]
    mixed = soup(members, jobs[0], folder)
    assert mixed.config.pooling == "cls"
    assert {p.shape[0] for n, p in mixed.named_parameters() if "lora_A" in n} == {2 * LORA_R}
    for enc in (*members, mixed):
        merge_lora(enc)
    states = [dict(e.state_dict()) for e in members]
    for key, value in mixed.state_dict().items():
        torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2, atol=1e-6, rtol=1e-5)

    fresh = [_job_encoder(job, adapters, folder) for job in jobs]
    with pytest.raises(ValueError, match=r"soup: the encoders' trainable tensors do not match those of .*MiniLM"):
        soup(fresh)  # no job: MiniLM, whose 6 layers of adapters are not these
    # the folder without the job: the members' own pooling (CLS), not MiniLM's mean pooling
    assert soup([_job_encoder(job, adapters, folder) for job in jobs], backbone=folder).config.pooling == "cls"


def _wise_args(tmp_path: Path, job: list[str], alphas: list[float]) -> Any:
    import argparse

    return argparse.Namespace(job=job, alphas=alphas, out=str(tmp_path / "out"), source=str(tmp_path), smoke=False)


def test_gpu_wise_refuses_a_bad_alpha_or_job_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked first: a bad last alpha must not cost the device time of the ones before it."""
    import json

    import gpu_lora

    monkeypatch.setattr(gpu_lora, "PACK", tmp_path / "no-pack")  # nothing to load: only the checks can run
    rows = [{"name": "job", "beta": 1.0}, {"name": "broken", "error": "x"}]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"--alphas must be in \[0, 1\]; got \[1.5\]"):
        gpu_lora.cmd_wise(_wise_args(tmp_path, ["job"], [0.5, 1.5]))
    with pytest.raises(
        SystemExit, match=r"--job \['broken', 'nope'\]: not finished jobs of .* \(finished: \['job'\]\)"
    ):
        gpu_lora.cmd_wise(_wise_args(tmp_path, ["job", "broken", "nope"], [0.5]))
    assert not (tmp_path / "out").exists()


def _report_log(tmp_path: Path, systems: dict[str, int]) -> Path:
    """A collected log and per-query files: each system (-> its steps) on the dev and test splits."""
    import json

    import gpu_lora

    from kl_retrievers.evaluation import save_per_query

    per = {f"q{i}": {"ndcg@10": v} for i, v in enumerate([0.5, 0.6, 0.7, 0.8])}
    with open(tmp_path / "log.jsonl", "w", encoding="utf-8") as fh:
        for system, steps in systems.items():
            for key, (_, _, protocol) in gpu_lora.ZS_EVALS.items():
                save_per_query(tmp_path / f"{system}.{key.replace(':', '.')}.json", per)
                row = {"system": system, "eval": key, "ndcg@10": 0.3, "steps": steps, "protocol": protocol}
                fh.write(json.dumps(row) + "\n")
    return tmp_path / "log.jsonl"


def test_gpu_report_refuses_a_reference_without_a_dev_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    import gpu_lora

    log = _report_log(tmp_path, {"ref": 0, "sys": 240})
    args = argparse.Namespace(log=str(log), per_query_dir=str(tmp_path), reference="bge-untrained")
    with pytest.raises(SystemExit, match=r"--reference 'bge-untrained' has no scifact:train row .*\['ref', 'sys'\]"):
        gpu_lora.cmd_report(args)
    assert capsys.readouterr().out == ""  # no half-printed table


def test_gpu_report_marks_the_test_splits_a_job_trained_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NFCorpus test is in-domain for a job trained on NFCorpus train, not for the untrained model (steps 0)."""
    import argparse

    import gpu_lora

    log = _report_log(tmp_path, {"ref": 0, "sys": 240})
    gpu_lora.cmd_report(argparse.Namespace(log=str(log), per_query_dir=str(tmp_path), reference="ref"))
    out = capsys.readouterr().out
    assert "| ref | 0.3000 | 0.3000 | 0.3000 | 0.3000 | 0.3000 |" in out  # logged "in-domain", but untrained
    assert "| sys | 0.3000 | 0.3000 | 0.3000 | 0.3000 (in-domain) | 0.3000 |" in out
    assert list(gpu_lora.ZS_EVALS)[-1] == f"{gpu_lora.NFC}:test"  # the marked column is NFCorpus's


def test_gpu_collect_logs_nfcorpus_as_zero_shot_for_an_untrained_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import gzip
    import json

    import gpu_lora

    nfc = tmp_path / "datasets" / gpu_lora.NFC
    (nfc / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "", "text": "a"}, {"_id": "d2", "title": "", "text": "b"}]
    (nfc / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    queries = [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}]
    (nfc / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (nfc / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    pack = tmp_path / "pack"
    pack.mkdir()
    key = f"{gpu_lora.NFC}:test"
    data = {
        "train": {"zs": {"sources": [f"{gpu_lora.NFC}:train", "squad:test"]}},
        "corpora": {"c": {"ids": ["d1", "d2"], "texts": ["a", "b"]}},
        "evals": {key: {"corpus": "c", "qids": ["q1", "q2"], "queries": ["a", "b"]}},
    }
    with gzip.open(pack / "data.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(data, fh)
    monkeypatch.setattr(gpu_lora, "PACK", pack)
    monkeypatch.setattr(gpu_lora, "DATASETS", tmp_path / "datasets")
    src = tmp_path / "run"
    src.mkdir()
    jobs = [{"name": name, "data": "zs", "steps": steps} for name, steps in (("untrained", 0), ("trained", 240))]
    (src / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    idx, score = np.array([[0, 1], [1, 0]], dtype=np.int32), np.array([[2.0, 1.0], [2.0, 1.0]], dtype=np.float32)
    runs: dict[str, Any] = {
        f"{j['name']}|{key}|{part}": arr for j in jobs for part, arr in (("idx", idx), ("score", score))
    }
    np.savez_compressed(src / "runs.npz", **runs)
    log = tmp_path / "log.jsonl"
    args = argparse.Namespace(source=str(src), log=str(log), per_query_dir=str(tmp_path / "per"), export=None)
    gpu_lora.cmd_collect(args)
    rows = {r["system"]: r for r in map(json.loads, log.read_text(encoding="utf-8").splitlines())}
    assert rows["untrained"]["protocol"] == "zero-shot" and rows["untrained"]["ndcg@10"] == 1.0
    assert rows["trained"]["protocol"] == "in-domain (NFCorpus train used)"


def test_gpu_report_pairs_each_gaussian_with_its_dot_twin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    import gpu_lora

    from kl_retrievers.evaluation import paired_test, save_per_query

    values = {"ref": [0.5, 0.6, 0.7, 0.8], "j-negkl": [0.6, 0.6, 0.9, 0.8], "j-dot": [0.5, 0.7, 0.8, 0.6]}
    per = {s: {f"q{i}": {"ndcg@10": v} for i, v in enumerate(vals)} for s, vals in values.items()}
    tests = [k for k, v in gpu_lora.ZS_EVALS.items() if v[1] == "test" and k != "squad-dev"]
    with open(tmp_path / "log.jsonl", "w", encoding="utf-8") as fh:
        for system, test_value in (("ref", 0.5), ("j-negkl", 0.45), ("j-dot", 0.4)):
            save_per_query(tmp_path / f"{system}.scifact.train.json", per[system])
            for key in ["scifact:train", *tests]:
                value = sum(values[system]) / 4 if key == "scifact:train" else test_value
                fh.write(json.dumps({"system": system, "eval": key, "ndcg@10": value, "steps": 1}) + "\n")
    gpu_lora.cmd_report(
        argparse.Namespace(log=str(tmp_path / "log.jsonl"), per_query_dir=str(tmp_path), reference="ref")
    )
    out = capsys.readouterr().out
    res = paired_test(per["j-negkl"], per["j-dot"])
    assert f"| j-negkl | j-dot | {res.mean_diff:+.4f} (p = {res.p_value:.2g}) | +0.0500 |" in out
    assert out.count("| j-negkl | j-dot |") == 1  # one row per pair, none for the reference
