"""``benchmarks/wise_ft.py``: weight-space interpolation between MiniLM and a LoRA job (real backbone)."""

from __future__ import annotations

import sys
from pathlib import Path

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
