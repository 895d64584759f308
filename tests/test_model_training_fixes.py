"""Regression tests for the model-loading and training fixes of the December audit.

Each test fails on the code before the fix: damaged or tampered model folders, relative backbone
paths in delta saves, TrainConfig validation, empty or malformed training data, end-of-run and
crash-safe checkpoints, freezing arguments, bundled-name handling and the ONNX CLI's errors.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_tiny_encoder
from kl_retrievers import GaussianEncoder, NotAnEncoderError
from kl_retrievers.hub import ModelNotFoundError
from kl_retrievers.training import (
    TrainConfig,
    TrainingSet,
    apply_freezing,
    load_training_data,
    read_jsonl,
    train_encoder,
)

ROWS = [
    {"query": "cat", "positives": ["the cat sat on the mat"], "negatives": ["a dog in the sun"]},
    {"query": "tea", "positives": ["green tea and bread"], "negatives": ["water on black rock"]},
    {"query": "moon", "positives": ["the moon and the star"], "negatives": ["a train at sea"]},
]


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"steps": 4, "batch_size": 2, "lr": 1e-3, "negatives": 1, "show_progress": False}
    base["device"] = "cpu"
    return TrainConfig(**(base | kw))


def _base_folder(tmp_path: Path) -> Path:
    """The tiny random BERT saved as a plain Hugging Face folder (a backbone for delta saves)."""
    enc = make_tiny_encoder()
    base = tmp_path / "base"
    enc.backbone.save_pretrained(base)
    enc.tokenizer.save_pretrained(base)
    return base


def _delta(tmp_path: Path) -> Path:
    fresh = GaussianEncoder.from_backbone(_base_folder(tmp_path), dim=8, max_length=32, query_max_length=16)
    return fresh.save_pretrained(tmp_path / "delta", include_backbone=False)


def _edit_delta(folder: Path, edit: Any) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "delta.safetensors")
    edit(state)
    save_file(state, folder / "delta.safetensors")


# ------------------------------------------------------------------ 1-3: loading saved folders
def test_delta_without_heads_or_var_row_is_refused(tmp_path: Path) -> None:
    delta = _delta(tmp_path)
    no_head = tmp_path / "no_head"
    shutil.copytree(delta, no_head)
    _edit_delta(no_head, lambda s: [s.pop("mean_head.weight"), s.pop("var_head.bias")])
    with pytest.raises(NotAnEncoderError, match=r"missing tensors.*mean_head\.weight.*var_head\.bias"):
        GaussianEncoder.from_pretrained(no_head)
    no_var = tmp_path / "no_var"
    shutil.copytree(delta, no_var)
    _edit_delta(no_var, lambda s: s.pop("var_token_embedding"))
    with pytest.raises(NotAnEncoderError, match="var_token_embedding"):
        GaussianEncoder.from_pretrained(no_var)
    GaussianEncoder.from_pretrained(delta)  # the untouched save still loads


def _tampered(src: Path, dst: Path, edit: Any) -> Path:
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _edit_config(edit: Any) -> Any:
    def apply(folder: Path) -> None:
        meta = json.loads((folder / "config.json").read_text())
        edit(meta)
        (folder / "config.json").write_text(json.dumps(meta))

    return apply


def test_damaged_full_save_gives_named_errors(tmp_path: Path) -> None:
    full = make_tiny_encoder().save_pretrained(tmp_path / "full")
    dim = _tampered(full, tmp_path / "dim", _edit_config(lambda m: m["encoder"].__setitem__("dim", 16)))
    with pytest.raises(NotAnEncoderError, match=r"mean_head\.\w+ has shape \(8.*encoder\.dim.*expects \(16"):
        GaussianEncoder.from_pretrained(dim)
    hidden = _tampered(
        full, tmp_path / "hidden", _edit_config(lambda m: m["backbone_config"].__setitem__("hidden_size", 64))
    )
    with pytest.raises(NotAnEncoderError, match=r"model\.safetensors: tensor backbone\..*hidden_size.*64"):
        GaussianEncoder.from_pretrained(hidden)

    def truncate(folder: Path) -> None:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    with pytest.raises(NotAnEncoderError, match=r"truncated/model\.safetensors is damaged"):
        GaussianEncoder.from_pretrained(_tampered(full, tmp_path / "truncated", truncate))

    def drop_tokenizer(folder: Path) -> None:
        for file in folder.iterdir():
            if file.name.startswith(("tokenizer", "vocab", "special")):
                file.unlink()

    with pytest.raises(NotAnEncoderError, match=r"notok has no tokenizer files.*vocab\.txt"):
        GaussianEncoder.from_pretrained(_tampered(full, tmp_path / "notok", drop_tokenizer))


def test_delta_tensor_of_the_wrong_shape_is_named(tmp_path: Path) -> None:
    delta = _delta(tmp_path)
    _edit_delta(delta, lambda s: s.__setitem__("mean_head.weight", torch.zeros(4, 32)))
    with pytest.raises(NotAnEncoderError, match=r"mean_head\.weight has shape \(4, 32\).*expects \(8, 32\)"):
        GaussianEncoder.from_pretrained(delta)


def test_delta_records_an_absolute_backbone_and_loads_from_another_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _base_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    enc = GaussianEncoder.from_backbone("base", dim=8, max_length=32, query_max_length=16)  # relative, as --base ./bb
    out = enc.save_pretrained(tmp_path / "model", include_backbone=False)
    recorded = json.loads((out / "config.json").read_text())["encoder"]["backbone"]
    assert recorded == str((tmp_path / "base").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = GaussianEncoder.from_pretrained(out)
    assert torch.equal(loaded.mean_head.weight, enc.mean_head.weight)
    shutil.move(tmp_path / "base", tmp_path / "moved")
    with pytest.raises(ModelNotFoundError, match=r"its backbone .*base.*encoder\.backbone"):
        GaussianEncoder.from_pretrained(out)


# ------------------------------------------------------------------ 4-5: TrainConfig
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_grad_norm", -1.0),
        ("max_grad_norm", 0.0),
        ("lr", -1e-3),
        ("lr", math.nan),
        ("lr", 0.0),
        ("steps", 1.5),
        ("steps", True),
        ("batch_size", 2.5),
        ("grad_accum", 2.0),
        ("warmup_steps", -3),
        ("corpus_sample", -5),
        ("checkpoint_every", -2),
        ("weight_decay", -0.1),
        ("weight_decay", math.inf),
        ("time_budget_s", -1.0),
        ("teacher_temperature", 0.0),
        ("teacher_temperature", -1.0),
    ],
)
def test_train_config_refuses_out_of_range_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be .*; got {value!r}"):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_negative_max_grad_norm_no_longer_trains_backwards() -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        _cfg(max_grad_norm=-1.0)
    assert _cfg(max_grad_norm=1.0).max_grad_norm == 1.0
    assert _cfg(time_budget_s=0.0).time_budget_s == 0.0  # 0: stop after one step (tests rely on it)


def test_cli_checks_the_recipe_before_reading_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kl_retrievers.cli import main

    missing = tmp_path / "missing.jsonl"  # reading it first would report "not found"
    rc = main(["train", "--no-progress", "--data", str(missing), "--out", str(tmp_path / "m"), "--lr=-1e-3"])
    assert rc == 2
    assert "lr must be a finite number > 0; got -0.001" in capsys.readouterr().err


# ------------------------------------------------------------------ 6-7, 13: training data
@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("", "0 rows"),
        ("\n\n  \n", "0 rows"),
        ('{"query": "q", "positives": []}\n\n{"query": "r", "pos": []}\n', "2 rows .* 2 of them without positives"),
    ],
)
def test_empty_training_data_is_a_named_error(tmp_path: Path, text: str, counts: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"train\.jsonl: no training examples: {counts}"):
        load_training_data([path])


def test_training_on_an_empty_set_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no examples"):
        train_encoder(make_tiny_encoder(), TrainingSet.from_rows([]), _cfg())


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ("[1.0, 2.0]", "must be an object"),
        ('{"positive": [1.0]}', r"only the keys 'positives' and 'negatives'; got \['positive'\]"),
        ('{"positives": [NaN], "negatives": [1.0]}', "finite numbers"),
        ('{"positives": [true], "negatives": [1.0]}', "not booleans"),
        ('{"positives": [1.0], "negatives": [Infinity]}', "finite numbers"),
    ],
)
def test_malformed_teacher_scores_are_refused(tmp_path: Path, scores: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    good = '{"query": "a", "positives": ["x"], "negatives": ["y"]}\n'
    path.write_text(
        good + "\n" + f'{{"query": "q", "positives": ["a"], "negatives": ["b"], "teacher_scores": {scores}}}\n'
    )
    with pytest.raises(ValueError, match=rf"t\.jsonl, line 3: .*{message}"):
        read_jsonl(path)


def test_data_errors_give_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"query": "a", "positives": ["x"]}\n\n\n{"query": 5, "positives": ["y"]}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 4: 'query' \(or 'anchor'\) must be a string"):
        read_jsonl(path)


# ------------------------------------------------------------------ 8-9, 13: checkpoints
def _checkpoint_step(folder: Path) -> int:
    return int(json.loads((folder / "state.json").read_text())["step"])


@pytest.mark.parametrize("every", [0, 3])
def test_a_checkpoint_is_written_when_the_run_finishes(tmp_path: Path, every: int) -> None:
    ck = tmp_path / "ck"
    train_encoder(make_tiny_encoder(), TrainingSet.from_rows(ROWS), _cfg(checkpoint_every=every), checkpoint_dir=ck)
    assert _checkpoint_step(ck) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary or .old folder left


def test_resume_uses_the_copy_an_interrupted_swap_left(tmp_path: Path) -> None:
    ts = TrainingSet.from_rows(ROWS)
    ck = tmp_path / "ck"
    train_encoder(make_tiny_encoder(), ts, _cfg(time_budget_s=0.0), checkpoint_dir=ck)
    ck.rename(tmp_path / "ck.old")  # killed between the old swap's two renames
    result = train_encoder(make_tiny_encoder(), ts, _cfg(), checkpoint_dir=ck, resume=True)
    assert result.resumed_from == 1 and result.steps_done == 4


def test_resume_with_another_lr_is_refused_naming_both_values(tmp_path: Path) -> None:
    """A resume continues the checkpoint's recipe: another learning rate is refused (it used to warn
    and then record the ignored value as the recipe's)."""
    ts = TrainingSet.from_rows(ROWS)
    ck = tmp_path / "ck"
    train_encoder(make_tiny_encoder(), ts, _cfg(time_budget_s=0.0), checkpoint_dir=ck)
    with pytest.raises(ValueError, match=r"different recipe: --lr \(config\.lr\): checkpoint 0\.001, now 0\.5"):
        train_encoder(make_tiny_encoder(), ts, _cfg(lr=0.5), checkpoint_dir=ck, resume=True)


# ------------------------------------------------------------------ 10: freezing arguments
def test_negative_freeze_layers_and_lora_rank_are_refused() -> None:
    with pytest.raises(ValueError, match="freeze_layers must be an integer >= 0.*got -1"):
        apply_freezing(make_tiny_encoder(), freeze_layers=-1)
    with pytest.raises(ValueError, match="lora_r must be an integer >= 0.*got -2"):
        apply_freezing(make_tiny_encoder(), lora_r=-2)


@pytest.mark.parametrize("flag", [["--freeze-layers", "-1"], ["--lora-r", "0"], ["--lora-r", "-2"]])
def test_cli_refuses_bad_freezing_flags(tmp_path: Path, flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from kl_retrievers.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-progress", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "m"), *flag])
    assert exc.value.code == 2
    assert f"argument {flag[0]}: must be >=" in capsys.readouterr().err


# ------------------------------------------------------------------ 11, 13: bundled names
def test_unknown_bundled_name_lists_the_bundled_models() -> None:
    from kl_retrievers.pretrained import load_model

    with pytest.raises(ValueError, match=r"no bundled model named 'minilm-gauss-nope'.*minilm-gauss-soup"):
        load_model("kl_retrievers:minilm-gauss-nope", backend="torch")


def test_unknown_name_and_file_paths_are_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kl_retrievers.pretrained import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"Bundled models \(load them by name\): .*minilm-gauss-soup"):
        load_model(str(tmp_path / "no-such-model"), backend="torch")
    file = tmp_path / "afile.txt"
    file.write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model folder"):
        load_model(str(file), backend="torch")


def test_bundled_model_path_takes_a_name_only(tmp_path: Path) -> None:
    from kl_retrievers.pretrained import bundled_model_path, load_default_model

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name in (str(folder), "../pretrained/minilm-gauss-soup"):
        with pytest.raises(ValueError, match="not a bundled model name"):
            bundled_model_path(name)
    with pytest.raises(ValueError, match="not a bundled model name"):
        load_default_model(str(folder), backend="torch")


# ------------------------------------------------------------------ 12: ONNX CLI
def test_onnx_cli_reports_bad_sources_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kl_retrievers.onnx_cli import main

    assert main(["export", str(tmp_path / "no-such-model"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: cannot find model" in err and "Traceback" not in err
    assert main(["export", "kl_retrievers:minilm-gauss-nope", str(tmp_path / "out")]) == 2
    assert "bundled models" in capsys.readouterr().err


def test_onnx_cli_accepts_the_prefixed_bundled_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kl_retrievers.onnx_cli import main
    from kl_retrievers.pretrained import bundled_model_path

    def fake_load(folder: Path, device: str | None = None) -> GaussianEncoder:
        raise ValueError(f"would load {folder}")  # stop before a real export

    monkeypatch.setattr(GaussianEncoder, "from_pretrained", fake_load)
    assert main(["export", "kl_retrievers:minilm-gauss-soup", str(tmp_path / "out")]) == 2
    assert f"would load {bundled_model_path('minilm-gauss-soup')}" in capsys.readouterr().err
