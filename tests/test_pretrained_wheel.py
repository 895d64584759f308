"""What the wheel ships: only models that run without torch; the research models stay in the repository."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

import kl_retrievers.pretrained as pretrained
from kl_retrievers.onnx_heads import shared_backbone_for
from kl_retrievers.pretrained import RESEARCH_MODELS, bundled_model_path, bundled_models, bundled_onnx_path, load_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _package_data() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(config["tool"]["setuptools"]["package-data"]["kl_retrievers"])


def _shipped(model: str) -> bool:
    """Whether the wheel's package-data patterns take the model's config.json."""
    return any(fnmatch.fnmatch(f"pretrained/{model}/config.json", p) for p in _package_data())


def test_the_sdist_keeps_the_research_models_and_the_wheel_excludes_them() -> None:
    # MANIFEST.in grafts every model folder into the sdist (its tests load them); setuptools then sees each
    # folder as a data package, which exclude-package-data removes from the wheel
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    excluded = config["tool"]["setuptools"]["exclude-package-data"]
    assert excluded == {f"kl_retrievers.pretrained.{m}": ["*"] for m in RESEARCH_MODELS}
    assert "graft kl_retrievers/pretrained" in (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()


def test_the_wheel_ships_every_checkout_model_but_the_research_ones() -> None:
    in_checkout = bundled_models()
    assert set(RESEARCH_MODELS) <= set(in_checkout)
    shipped = sorted(m for m in in_checkout if _shipped(m))
    assert shipped == sorted(set(in_checkout) - set(RESEARCH_MODELS))
    assert "minilm-gauss-soup" in shipped and "bge-small-unit-variance" in shipped


@pytest.mark.parametrize("model", [m for m in bundled_models() if m not in RESEARCH_MODELS])
def test_every_shipped_model_runs_without_torch(model: str) -> None:
    # its own int8 graph (shipped too), or a backbone graph an installed package carries plus numpy heads
    folder = bundled_model_path(model)
    own = bundled_onnx_path(model)
    assert own is not None or shared_backbone_for(folder) is not None, model
    if own is not None:
        rel = own.relative_to(folder.parent.parent).as_posix()
        assert any(fnmatch.fnmatch(f"{rel}/model.onnx", p) for p in _package_data()), rel


@pytest.mark.parametrize("model", RESEARCH_MODELS)
def test_research_models_need_torch(model: str) -> None:
    # the reason they are left out: neither a graph of their own nor a shared backbone graph
    folder = bundled_model_path(model)
    assert bundled_onnx_path(model) is None and shared_backbone_for(folder) is None


def _wheel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the registry at a copy holding only what the wheel ships (config files suffice to list them)."""
    for model in bundled_models():
        if _shipped(model):
            (tmp_path / model).mkdir()
            (tmp_path / model / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(pretrained, "_HERE", tmp_path)


@pytest.mark.parametrize("name", ["minilm-gauss-zs", "kl_retrievers:minilm-gauss-lora"])
def test_a_research_model_from_a_wheel_says_where_it_is(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wheel_layout(tmp_path, monkeypatch)
    assert sorted(bundled_models()) == ["bge-small-unit-variance", "minilm-gauss-soup"]
    with pytest.raises(ValueError, match=r"research model kept in the source repository.*pip install -e"):
        load_model(name, backend="onnx")
    with pytest.raises(ValueError, match="minilm-gauss-soup"):
        bundled_model_path(name.split(":")[-1])


def test_an_unknown_name_from_a_wheel_is_not_called_a_research_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wheel_layout(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="no bundled model named 'minilm-gauss-xx'"):
        bundled_model_path("minilm-gauss-xx")


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "bge-small-en"])
def test_load_model_with_a_backbone_name_says_it_is_a_backbone(name: str) -> None:
    from kl_retrievers.hub import ModelNotFoundError
    from kl_retrievers.pretrained import DEFAULT_MODEL, load_model

    with pytest.raises(ModelNotFoundError, match=r"is a backbone .*not a Gaussian model") as info:
        load_model(name, backend="onnx")
    assert DEFAULT_MODEL in str(info.value) and "GaussianEncoder.from_backbone" in str(info.value)
