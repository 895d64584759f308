"""Untrusted model folders, training checkpoints and encoded-shards folders are refused with the package's errors.

A folder whose ``tokenizer_config.json`` or ``config.json`` has an ``auto_map`` (Python code of its own) is refused
without transformers asking whether to run it, and its code never runs; a named pipe in place of a folder's JSON
file is never opened; JSON nested too deep for the parser, a damaged checkpoint, shard links leading out of the
encoding folder, ids repeated across shards and model weights linked from outside the model folder are refused with
messages naming the file (and the field). A harmless ``auto_map`` is not blamed for another fault, and a checkpoint
of another torch version resumes.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import fed_if_opened, make_tiny_encoder, make_tokenizer
from kl_retrievers import GaussianEncoder, KLStore
from kl_retrievers._config import NotAnEncoderError
from kl_retrievers.hub import sha256_file

DEEP = "[" * 100_000 + "]" * 100_000


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved Gaussian encoder folder (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("model") / "enc"
    make_tiny_encoder().save_pretrained(folder)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _evil_code(folder: Path, module: str, marker: Path, base: str) -> None:
    """A ``module.py`` in ``folder`` that writes ``marker`` when imported, defining ``Evil`` from ``base``."""
    (folder / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import {base}\nclass Evil({base}):\n    pass\n"
    )


def _add_tokenizer_auto_map(folder: Path, marker: Path) -> None:
    """Point ``folder``'s tokenizer at its own code (and record the edited file, as an attacker would)."""
    _evil_code(folder, "evil_tok", marker, "PreTrainedTokenizerFast")
    tc_file = folder / "tokenizer_config.json"
    tc = json.loads(tc_file.read_text())
    tc["auto_map"] = {"AutoTokenizer": [None, "evil_tok.Evil"]}
    tc["tokenizer_class"] = "Evil"
    tc_file.write_text(json.dumps(tc))
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if isinstance(cfg.get("tokenizer_sha256"), dict):
        cfg["tokenizer_sha256"]["tokenizer_config.json"] = sha256_file(tc_file)
        cfg_file.write_text(json.dumps(cfg))


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every question asked on stdin (``input``); each is answered "no"."""
    asked: list[tuple[Any, ...]] = []

    def fake_input(*args: Any) -> str:
        asked.append(args)
        return "n"

    monkeypatch.setattr(builtins, "input", fake_input)
    return asked


def _plain_backbone(folder: Path) -> Path:
    """A plain Hugging Face folder (tiny BERT and its tokenizer), as ``from_backbone`` and MiniLM read."""
    enc = make_tiny_encoder()
    enc.backbone.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# ------------------------------------------------------------------ auto_map: never run, never asked


def test_saved_encoder_with_tokenizer_auto_map_is_refused_without_a_prompt(
    saved_model: Path, tmp_path: Path, prompts: list[tuple[Any, ...]]
) -> None:
    folder = _copy(saved_model, tmp_path / "enc")
    marker = tmp_path / "RAN"
    _add_tokenizer_auto_map(folder, marker)
    with pytest.raises(NotAnEncoderError, match=r"tokenizer_config\.json: field 'auto_map'.*evil_tok\.py"):
        GaussianEncoder.from_pretrained(folder)
    assert prompts == []
    assert not marker.exists()


def test_plain_backbone_whose_config_names_its_own_model_code_is_refused(
    tmp_path: Path, prompts: list[tuple[Any, ...]]
) -> None:
    """``from_backbone`` and the MiniLM baseline read plain Hugging Face folders (a tokenizer ``auto_map`` beside a
    ``config.json`` of a type transformers knows is ignored by transformers: nothing runs)."""
    folder = _plain_backbone(tmp_path / "bert")
    marker = tmp_path / "RAN"
    _evil_code(folder, "evil_model", marker, "BertConfig")
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_type"] = "evilbert"  # no class of transformers' own: only the folder's code could load it
    cfg["auto_map"] = {"AutoConfig": "evil_model.Evil", "AutoModel": "evil_model.Evil"}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(NotAnEncoderError, match=r"config\.json: field 'auto_map'.*evil_model\.py"):
        GaussianEncoder.from_backbone(folder)
    from kl_retrievers.baselines import MiniLMEncoder

    with pytest.raises(ValueError, match=r"config\.json: field 'auto_map'.*trust_remote_code=False"):
        MiniLMEncoder(model_path=folder, show_progress=False)
    assert prompts == []
    assert not marker.exists()


def test_store_naming_a_folder_with_auto_map_refuses_a_text_search(
    saved_model: Path, tmp_path: Path, prompts: list[tuple[Any, ...]]
) -> None:
    enc = GaussianEncoder.from_pretrained(saved_model)
    store = KLStore(encoder=enc)
    store.add(["the cat sat on the mat", "a dog is black"], ids=["a", "b"])
    store.save(tmp_path / "store")
    evil = _copy(saved_model, tmp_path / "evil")
    marker = tmp_path / "RAN"
    _add_tokenizer_auto_map(evil, marker)
    cfg_file = tmp_path / "store" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["encoder"]["name_or_path"] = str(evil)
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"auto_map"):
        KLStore.load(tmp_path / "store").search("cat", k=1)
    assert prompts == []
    assert not marker.exists()


# ------------------------------------------------------------------ named pipes are never opened


def test_named_pipe_as_model_config_is_refused_unopened(saved_model: Path, tmp_path: Path) -> None:
    folder = _copy(saved_model, tmp_path / "enc")
    _make_fifo(folder / "config.json")
    with (
        fed_if_opened(folder / "config.json", b"{}") as opened,
        pytest.raises(NotAnEncoderError, match=r"config\.json is not a regular file"),
    ):
        GaussianEncoder.from_pretrained(folder)
    assert opened == []


def test_named_pipe_as_recorded_tokenizer_file_is_refused_unopened(saved_model: Path, tmp_path: Path) -> None:
    folder = _copy(saved_model, tmp_path / "enc")
    _make_fifo(folder / "tokenizer_config.json")
    with (
        fed_if_opened(folder / "tokenizer_config.json", b"{}") as opened,
        pytest.raises(NotAnEncoderError, match=r"tokenizer_config\.json is not a regular file"),
    ):
        GaussianEncoder.from_pretrained(folder)
    assert opened == []


def test_named_pipe_as_calibrator_is_refused_unopened(tmp_path: Path) -> None:
    from kl_retrievers.calibration import ConfidenceCalibrator

    path = tmp_path / "cal.json"
    os.mkfifo(path)
    with fed_if_opened(path, b"{}") as opened, pytest.raises(ValueError, match=r"cal\.json is not a regular file"):
        ConfidenceCalibrator.load(path)
    assert opened == []


# ------------------------------------------------------------------ JSON nested too deep


def test_deeply_nested_model_config_is_a_format_error(saved_model: Path, tmp_path: Path) -> None:
    folder = _copy(saved_model, tmp_path / "enc")
    (folder / "config.json").write_text(DEEP)
    with pytest.raises(NotAnEncoderError, match=r"config\.json is not a JSON file kl_retrievers wrote"):
        GaussianEncoder.from_pretrained(folder)


def test_deeply_nested_calibrator_is_a_value_error(tmp_path: Path) -> None:
    from kl_retrievers.calibration import ConfidenceCalibrator

    (tmp_path / "cal.json").write_text(DEEP)
    with pytest.raises(ValueError, match=r"cal\.json is not a calibrator: RecursionError"):
        ConfidenceCalibrator.load(tmp_path / "cal.json")


# ------------------------------------------------------------------ model weights linked from outside


def test_weights_linked_from_outside_the_model_folder_are_refused(saved_model: Path, tmp_path: Path) -> None:
    folder = _copy(saved_model, tmp_path / "enc")
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(NotAnEncoderError, match=r"model\.safetensors resolves to .*not to a file directly in the"):
        GaussianEncoder.from_pretrained(folder)


def test_hub_cache_snapshot_links_to_its_blobs_still_load(saved_model: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models--someone--enc"
    snapshot = _copy(saved_model, repo / "snapshots" / "0123abcd")
    (repo / "blobs").mkdir()
    blob = repo / "blobs" / sha256_file(snapshot / "model.safetensors")
    (snapshot / "model.safetensors").rename(blob)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    enc = GaussianEncoder.from_pretrained(snapshot)
    assert enc.config.dim == 8


# ------------------------------------------------------------------ encoded shards


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, saved_model: Path) -> Path:
    """An encoded-shards folder of 6 documents in 3 shards (copy it before changing it)."""
    from kl_retrievers.sharded import encode_corpus

    root = tmp_path_factory.mktemp("shards")
    corpus = root / "corpus.jsonl"
    words = ["cat mat", "dog black", "sun moon", "tea bread", "sea water", "star rock"]
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": w}) + "\n" for i, w in enumerate(words)))
    encode_corpus(corpus, root / "out", model=str(saved_model), shard_size=2, show_progress_bar=False)
    return root / "out"


def _fix_checksums(shard: Path) -> None:
    meta = json.loads((shard / "shard.json").read_text())
    for name in meta["sha256"]:
        meta["sha256"][name] = sha256_file(shard / name)
    (shard / "shard.json").write_text(json.dumps(meta))


def test_encoded_shards_load_as_saved(encoded: Path) -> None:
    from kl_retrievers.sharded import load_encoded

    g, ids = load_encoded(encoded)
    assert ids == [f"d{i}" for i in range(6)] and g.mean.shape == (6, 8)


def test_id_repeated_across_shards_is_refused_naming_both(encoded: Path, tmp_path: Path) -> None:
    from kl_retrievers.sharded import load_encoded

    out = _copy(encoded, tmp_path / "out")
    shard = out / "shard-00002"
    (shard / "ids.json").write_text(json.dumps(["d5", "d1"]))
    _fix_checksums(shard)
    with pytest.raises(ValueError, match=r"id 'd1' is in both shard-00000 and shard-00002"):
        load_encoded(out)


def test_shard_folder_linked_from_outside_is_refused(encoded: Path, tmp_path: Path) -> None:
    from kl_retrievers.sharded import load_encoded

    out = _copy(encoded, tmp_path / "out")
    outside = tmp_path / "outside_shard"
    (out / "shard-00001").rename(outside)
    (out / "shard-00001").symlink_to(outside)
    with pytest.raises(ValueError, match=r"shard-00001 resolves to .*outside the encoding folder"):
        load_encoded(out)


def test_shard_array_linked_from_outside_is_refused(encoded: Path, tmp_path: Path) -> None:
    from kl_retrievers.sharded import load_encoded

    out = _copy(encoded, tmp_path / "out")
    outside = tmp_path / "mean.npy"
    (out / "shard-00001" / "mean.npy").rename(outside)
    (out / "shard-00001" / "mean.npy").symlink_to(outside)
    with pytest.raises(ValueError, match=r"mean\.npy resolves to .*outside its shard folder"):
        load_encoded(out)


def test_deeply_nested_manifest_is_a_value_error(encoded: Path, tmp_path: Path) -> None:
    from kl_retrievers.sharded import load_encoded

    out = _copy(encoded, tmp_path / "out")
    (out / "manifest.json").write_text(DEEP)
    with pytest.raises(ValueError, match=r"manifest\.json is not valid JSON: RecursionError"):
        load_encoded(out)


def test_named_pipe_as_shard_json_is_refused_unopened(encoded: Path, tmp_path: Path) -> None:
    from kl_retrievers.sharded import load_encoded

    out = _copy(encoded, tmp_path / "out")
    _make_fifo(out / "shard-00001" / "shard.json")
    with (
        fed_if_opened(out / "shard-00001" / "shard.json", b"{}") as opened,
        pytest.raises(ValueError, match=r"shard-00001"),
    ):
        load_encoded(out)
    assert opened == []


# ------------------------------------------------------------------ damaged training checkpoints

_ROWS = [
    {"query": "cat mat", "positives": ["the cat sat on the mat"], "negatives": ["a dog", "sun"]},
    {"query": "dog black", "positives": ["a dog is black"], "negatives": ["the moon", "tea"]},
    {"query": "sun moon", "positives": ["the sun and the moon"], "negatives": ["rock", "bread"]},
    {"query": "sea water", "positives": ["green sea water"], "negatives": ["star", "bee"]},
]


def _train(checkpoint_dir: Path, **kw: Any) -> Any:
    from kl_retrievers.training import TrainConfig, TrainingSet, train_encoder

    cfg = TrainConfig(steps=3, batch_size=2, negatives=2, lr=1e-3, show_progress=False, device="cpu", **kw)
    return train_encoder(make_tiny_encoder(), TrainingSet.from_rows(_ROWS), cfg, checkpoint_dir=checkpoint_dir)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after step 1 of 3 (copy it before changing it)."""
    folder = tmp_path_factory.mktemp("ckpt") / "orig"
    _train(folder, time_budget_s=0.0)
    return folder


def _resume(folder: Path) -> Any:
    from kl_retrievers.training import TrainConfig, TrainingSet, train_encoder

    cfg = TrainConfig(steps=3, batch_size=2, negatives=2, lr=1e-3, show_progress=False, device="cpu")
    ts = TrainingSet.from_rows(_ROWS)
    return train_encoder(make_tiny_encoder(), ts, cfg, checkpoint_dir=folder, resume=True)


def _edit_state(folder: Path, edit: Any) -> None:
    meta = json.loads((folder / "state.json").read_text())
    edit(meta)
    (folder / "state.json").write_text(json.dumps(meta))


def _edit_tensors(file: Path, edit: Any) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {k: v.clone() for k, v in load_file(os.fspath(file)).items()}
    edit(tensors)
    save_file(tensors, os.fspath(file))


def test_intact_checkpoint_resumes(checkpoint: Path, tmp_path: Path) -> None:
    result = _resume(_copy(checkpoint, tmp_path / "ck"))
    assert (result.resumed_from, result.steps_done) == (1, 3)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "state.json").write_text("{not json"), r"state\.json cannot be read as JSON"),
        (lambda f: (f / "state.json").write_text("[]"), r"state\.json must hold a JSON object"),
        (lambda f: (f / "state.json").write_text(DEEP), r"state\.json cannot be read as JSON \(RecursionError"),
        (
            lambda f: _edit_state(f, lambda m: m.pop("optimizer_scalars")),
            r"state\.json lacks the field 'optimizer_scalars'",
        ),
        (lambda f: _edit_state(f, lambda m: m.update(step="1")), r"state\.json: field 'step' must be"),
        (lambda f: _edit_state(f, lambda m: m.update(recipe=[1])), r"state\.json: field 'recipe' must be"),
        (
            lambda f: _edit_state(f, lambda m: m.update(param_groups=[{"params": "x"}])),
            r"state\.json: field 'param_groups' must be",
        ),
        (
            lambda f: _edit_state(f, lambda m: m["scheduler"].pop("last_epoch")),
            r"state\.json lacks the field 'scheduler\.last_epoch'",
        ),
        (
            lambda f: _edit_state(f, lambda m: m["scheduler"].update(base_lrs="x")),
            r"state\.json: field 'scheduler\.base_lrs' must be a list of 1 finite numbers",
        ),
        (
            lambda f: _edit_tensors(f / "trainable.safetensors", lambda t: t.pop(next(iter(t)))),
            r"trainable\.safetensors lacks the tensor '",
        ),
        (
            lambda f: _edit_tensors(
                f / "trainable.safetensors", lambda t: t.update({k: t[k][:3] for k in list(t)[:1]})
            ),
            r"trainable\.safetensors: tensor '.*' has shape \(3,\)",
        ),
        (
            lambda f: _edit_tensors(
                f / "trainable.safetensors", lambda t: t.update({k: t[k] * float("nan") for k in list(t)[:1]})
            ),
            r"trainable\.safetensors: tensor '.*' holds NaN",
        ),
        (
            lambda f: _edit_tensors(f / "optimizer.safetensors", lambda t: t.update(garbage=t[next(iter(t))].clone())),
            r"optimizer\.safetensors: tensor 'garbage' is not named PARAMETER_INDEX\.NAME",
        ),
        (
            lambda f: _edit_tensors(f / "optimizer.safetensors", lambda t: t.update({"0.exp_avg": t["0.exp_avg"][:1]})),
            r"optimizer\.safetensors: tensor '0\.exp_avg' has shape",
        ),
        (lambda f: (f / "optimizer.safetensors").write_bytes(b"\x00" * 3), r"optimizer\.safetensors cannot be read"),
        (
            lambda f: _edit_state(f, lambda m: m["optimizer_scalars"].update({"\u00b2": {}})),
            r"state\.json: field 'optimizer_scalars' must be",
        ),
        (
            lambda f: _edit_tensors(
                f / "optimizer.safetensors", lambda t: t.update({"\u00b2.exp_avg": t["0.exp_avg"].clone()})
            ),
            r"optimizer\.safetensors: tensor '\u00b2\.exp_avg' is not named PARAMETER_INDEX\.NAME",
        ),
    ],
    ids=[
        "not-json",
        "a-list",
        "deep",
        "no-optimizer-scalars",
        "step-a-string",
        "recipe-a-list",
        "param-groups",
        "scheduler-no-last-epoch",
        "scheduler-base-lrs",
        "weights-missing-tensor",
        "weights-wrong-shape",
        "weights-nan",
        "optimizer-key-without-index",
        "optimizer-moment-wrong-shape",
        "optimizer-file-truncated",
        "optimizer-scalars-superscript-index",
        "optimizer-tensor-superscript-index",
    ],
)
def test_damaged_checkpoint_is_a_value_error_naming_file_and_field(
    checkpoint: Path, tmp_path: Path, damage: Any, message: str
) -> None:
    folder = _copy(checkpoint, tmp_path / "ck")
    damage(folder)
    with pytest.raises(ValueError, match=message) as caught:
        _resume(folder)
    assert str(folder) in str(caught.value)


# ------------------------------------------------------------------ a harmless auto_map is not blamed


def _harmless_auto_map(folder: Path) -> None:
    """An ``auto_map`` beside a ``model_type`` transformers ships (it loads its own class, nothing runs), naming
    code in another hub repository, as some published configs do."""
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["auto_map"] = {"AutoModel": "org/impl--modeling_bert.BertModel"}
    cfg_file.write_text(json.dumps(cfg))


def test_harmless_auto_map_loads_and_is_not_blamed_for_missing_weights(
    tmp_path: Path, prompts: list[tuple[Any, ...]]
) -> None:
    from kl_retrievers.baselines import MiniLMEncoder

    folder = _plain_backbone(tmp_path / "bert")
    _harmless_auto_map(folder)
    assert GaussianEncoder.from_backbone(folder, dim=8).config.dim == 8
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match=r"model\.safetensors") as caught:
        GaussianEncoder.from_backbone(folder, dim=8)
    assert "field 'auto_map'" not in str(caught.value)
    with pytest.raises(OSError, match=r"model\.safetensors") as caught:
        MiniLMEncoder(model_path=folder, show_progress=False)
    assert "field 'auto_map'" not in str(caught.value)
    assert prompts == []


def test_harmless_auto_map_is_not_blamed_for_a_damaged_tokenizer(tmp_path: Path) -> None:
    from kl_retrievers.encoder import _load_tokenizer

    folder = _plain_backbone(tmp_path / "bert")
    _harmless_auto_map(folder)
    tc_file = folder / "tokenizer_config.json"
    tc = json.loads(tc_file.read_text())
    tc["auto_map"] = {"AutoTokenizer": [None, "org/impl--tok.Tok"]}
    tc_file.write_text(json.dumps(tc))
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(NotAnEncoderError, match=r"tokenizer\.json is not valid JSON") as caught:
        _load_tokenizer(folder)
    assert "field 'auto_map'" not in str(caught.value)


# ------------------------------------------------------------------ links, FIFOs and other torch versions


def test_weights_linked_into_a_sub_folder_are_refused_naming_the_rule(saved_model: Path, tmp_path: Path) -> None:
    folder = _copy(saved_model, tmp_path / "enc")
    (folder / "versions").mkdir()
    (folder / "model.safetensors").rename(folder / "versions" / "model.safetensors")
    (folder / "model.safetensors").symlink_to(Path("versions") / "model.safetensors")
    with pytest.raises(NotAnEncoderError, match=r"not to a file directly in the model folder") as caught:
        GaussianEncoder.from_pretrained(folder)
    assert "outside" not in str(caught.value)


def test_resume_over_a_shard_linked_out_of_the_folder_is_refused_before_encoding(
    encoded: Path, saved_model: Path, tmp_path: Path
) -> None:
    from kl_retrievers.sharded import encode_corpus

    out = _copy(encoded, tmp_path / "out")
    outside = tmp_path / "elsewhere"
    (out / "shard-00001").rename(outside)
    (out / "shard-00001").symlink_to(outside)
    (outside / "shard.json").write_text("{}")  # damaged: a resume would encode this shard again
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    with pytest.raises(ValueError, match=r"shard-00001 resolves to .*outside the encoding folder.*nothing was"):
        encode_corpus(
            encoded.parent / "corpus.jsonl", out, model=str(saved_model), shard_size=2, show_progress_bar=False
        )
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before  # nothing written through the link
    assert (out / "shard-00001").is_symlink()


@contextmanager
def _fed_by_a_process_if_opened(fifo: Path, content: bytes, opened: Path) -> Iterator[None]:
    """As :func:`fed_if_opened`, from another process (a reader that blocks in C holding the GIL, as safetensors'
    ``load_file`` does, would stop a thread from feeding it); ``opened`` is created once a reader has opened it."""
    import subprocess
    import sys

    code = (
        "import os, sys, time\n"
        "fifo, opened, content = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])\n"
        "for _ in range(2400):\n"
        "    try:\n"
        "        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "        continue\n"
        "    open(opened, 'w').close()\n"
        "    os.write(fd, content)\n"
        "    os.close(fd)\n"
        "    break\n"
    )
    feeder = subprocess.Popen([sys.executable, "-c", code, str(fifo), str(opened), content.hex()])
    try:
        yield
    finally:
        feeder.kill()
        feeder.wait(10)


@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.safetensors"])
def test_named_pipe_as_checkpoint_tensors_is_refused_unopened(checkpoint: Path, tmp_path: Path, name: str) -> None:
    folder = _copy(checkpoint, tmp_path / "ck")
    _make_fifo(folder / name)
    opened = tmp_path / "OPENED"
    with (
        _fed_by_a_process_if_opened(folder / name, b"\x00" * 8, opened),
        pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')} is a FIFO"),
    ):
        _resume(folder)
    assert not opened.exists()


def test_named_pipe_as_checkpoint_state_is_refused_not_a_fresh_start(checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(checkpoint, tmp_path / "ck")
    _make_fifo(folder / "state.json")
    with (
        fed_if_opened(folder / "state.json", b"{}") as opened,
        pytest.raises(ValueError, match=r"state\.json is a FIFO"),
    ):
        _resume(folder)
    assert opened == []


def test_checkpoint_of_another_torch_version_resumes(checkpoint: Path, tmp_path: Path) -> None:
    """LambdaLR's state has ``verbose`` in torch 2.3 to 2.x and ``_is_initial`` in later versions."""
    folder = _copy(checkpoint, tmp_path / "ck")
    _edit_state(folder, lambda m: m["scheduler"].update(verbose=False))
    _edit_state(folder, lambda m: m["scheduler"].pop("_is_initial", None))
    result = _resume(folder)
    assert (result.resumed_from, result.steps_done) == (1, 3)


def test_deeply_nested_state_json_does_not_crash_a_fresh_run(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kl_retrievers.training.trainer import _record_evaluations

    folder = _copy(checkpoint, tmp_path / "ck")
    (folder / "state.json").write_text(DEEP)
    with caplog.at_level("WARNING", logger="kl_retrievers.training.trainer"):
        _record_evaluations(folder, [{"step": 1}])  # nothing readable to record in: a warning
        result = _train(folder)
    assert result.steps_done == 3
    assert "step unknown" in caplog.text


def test_model_card_is_utf8_under_a_c_locale(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        f"import sys; sys.path.insert(0, {str(root)!r})\n"
        "from kl_retrievers.training.cli import write_model_card\n"
        f"write_model_card({str(tmp_path)!r}, {{'command': 'train --data donn\\u00e9es.jsonl', 'data': []}})\n"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "donn\u00e9es.jsonl" in (tmp_path / "README.md").read_text(encoding="utf-8")
