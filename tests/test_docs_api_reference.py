"""The docs as a contract: the API reference renders Sphinx roles and names every public name, the pages name
attributes that exist, and ``evaluate_model`` says what to install before it encodes anything."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from conftest import block_modules
from kl_retrievers.datasets import BeirDataset
from kl_retrievers.gaussian import Gaussians

REPO = Path(__file__).resolve().parents[1]
API = (REPO / "docs" / "api.md").read_text()


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", REPO / "scripts" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ Sphinx roles in the rendered reference
PAGE = (
    '<h2 id="pkg.mod" class="doc doc-heading">mod</h2>'
    '<h3 id="pkg.mod.Thing" class="doc doc-heading">Thing</h3>'
    "<p>See :class:<code>~pkg.mod.Thing</code>, :meth:<code>run</code>, :func:<code>helper</code>, "
    ":attr:<code>Thing.size &lt;pkg.mod.Thing.size&gt;</code>, :mod:<code>other.place</code> and "
    ":exc:<code>ValueError</code>.</p>"
    '<h4 id="pkg.mod.Thing.run" class="doc doc-heading">run</h4>'
    '<h4 id="pkg.mod.Thing.size" class="doc doc-heading">size</h4>'
    '<h3 id="pkg.mod.helper" class="doc doc-heading">helper</h3>'
)


def test_roles_become_code_linked_to_documented_targets() -> None:
    out = _hooks().sphinx_roles(PAGE)
    assert not re.search(r":(class|meth|func|attr|mod|exc|data):", out), out
    # "~" keeps the last name; a documented target is an autorefs reference (linked by autorefs later)
    assert '<autoref identifier="pkg.mod.Thing" optional><code>Thing</code></autoref>' in out
    # a bare name is looked up from the object it is documented under (Thing), then its parents (the module)
    assert '<autoref identifier="pkg.mod.Thing.run" optional><code>run</code></autoref>' in out
    assert '<autoref identifier="pkg.mod.helper" optional><code>helper</code></autoref>' in out
    # "Title <target>" shows the title and links the target
    assert '<autoref identifier="pkg.mod.Thing.size" optional><code>Thing.size</code></autoref>' in out
    # a dotted target documented elsewhere (or nowhere) is an optional reference: no strict-mode warning
    assert '<autoref identifier="other.place" optional><code>other.place</code></autoref>' in out
    # an unknown bare name stays plain code
    assert "<code>ValueError</code>" in out and 'identifier="ValueError"' not in out


def test_the_hook_leaves_other_html_alone_and_is_registered() -> None:
    hooks = _hooks()
    plain = "<p>ratio: 3:1 and <code>a:b:</code>, :class: without code</p><pre><code>:class:`X`</code></pre>"
    assert hooks.sphinx_roles(plain) == plain
    assert hooks.on_page_content(":func:<code>!f</code>", page=None) == "<code>f</code>"
    config = (REPO / "mkdocs.yml").read_text()
    assert re.search(r"^hooks:\s*\n\s*-\s*scripts/mkdocs_hooks\.py\s*$", config, re.M), "mkdocs.yml hooks:"


# ------------------------------------------------------------------ every public name has a reference entry
def _directives() -> dict[str, list[str] | None]:
    """``::: path`` of docs/api.md -> its ``members:`` list (``None``: all public members)."""
    found: dict[str, list[str] | None] = {}
    for m in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", API, re.M):
        members = re.search(r"members:\s*\[([^\]]*)\]", m.group(2))
        found[m.group(1)] = [x.strip() for x in members.group(1).split(",")] if members else None
    return found


DIRECTIVES = _directives()


def _public_modules() -> list[str]:
    modules = ["kl_retrievers"]
    for path in DIRECTIVES:
        try:
            if isinstance(importlib.import_module(path), ModuleType):
                modules.append(path)
        except ModuleNotFoundError as err:
            if err.name is not None and err.name.startswith("kl_retrievers"):
                continue  # kl_retrievers.save_gaussians: a function's directive, not a module
            raise
    return modules


def _rendered(module: str, name: str, obj: Any) -> bool:
    """Whether a ``:::`` directive renders ``obj`` (a documented class or function) as an entry of its own."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not inspect.getdoc(obj):
        return False  # mkdocstrings shows neither constants (no docstring it can read) nor undocumented objects
    canonical = f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', name)}"
    if f"{module}.{name}" in DIRECTIVES or canonical in DIRECTIVES:
        return True
    for path, members in DIRECTIVES.items():  # a module directive showing it (under any module exporting it)
        directive = sys.modules.get(path)
        if directive is None or not isinstance(directive, ModuleType):
            continue
        shown = getattr(directive, "__all__", []) if members is None else members
        if any(getattr(directive, member, None) is obj for member in shown):
            return True
    return False


def _mentioned(name: str) -> bool:
    return re.search(rf"`[^`\n]*(?<![\w.]){re.escape(name)}(?!\w)[^`\n]*`", API) is not None


@pytest.mark.parametrize("module", _public_modules())
def test_every_public_name_has_an_api_reference_entry(module: str) -> None:
    """Each name in a public module's ``__all__`` is rendered by a ``:::`` directive or named in docs/api.md."""
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not (_rendered(module, name, getattr(mod, name)) or _mentioned(name))]
    assert not missing, f"{module}.__all__ names with no entry in docs/api.md: {missing}"


def test_the_constants_named_by_the_probe_are_listed() -> None:
    table = API.split("## Constants and type aliases", 1)[-1].split(":::", 1)[0]
    for name in ("SCORE_NAME", "SCORE_DIRECTION", "CONFIDENCE_KEY", "ABSTENTION_EVENT", "EMPTY_QUERY_REASON"):
        assert f"`{name}`" in table, name
    for name in ("QUERY_UNCERTAINTY_KEY", "RELEVANCE_FUNCTIONS", "SUPPORTED_FILTER_CONDITIONS"):
        assert f"`{name}`" in table, name
    assert "`SUPPORTED_FILTER_OPERATORS`" in table and "`SUPPORTED_QUERY_MODES`" in table


# ------------------------------------------------------------------ the pages name what exists
def test_getting_started_names_encoder_attributes_that_exist() -> None:
    """Every ``encoder.NAME`` in getting-started.md is an attribute of the ONNX (default) or torch encoder."""
    from kl_retrievers.encoder import GaussianEncoder, GaussianEncoderConfig
    from kl_retrievers.onnx import OnnxEncoderConfig, OnnxGaussianEncoder

    text = (REPO / "docs" / "getting-started.md").read_text()
    named = set(re.findall(r"`encoder\.(\w+)", text)) | set(re.findall(r"^[^#`]*\bencoder\.(\w+)", text, re.M))
    set_in_init = set(re.findall(r"self\.(\w+)\s*[:=]", inspect.getsource(OnnxGaussianEncoder)))
    missing = sorted(
        n for n in named if not (hasattr(OnnxGaussianEncoder, n) or hasattr(GaussianEncoder, n) or n in set_in_init)
    )
    assert not missing, f"getting-started.md names encoder attributes no encoder has: {missing}"
    # what the page says instead: the ONNX config's source torch config holds the backbone's SHA-256
    assert 'encoder.config.encoder["backbone_sha256"]' in text and "encoder" in OnnxEncoderConfig.__dataclass_fields__
    assert "backbone_sha256" in GaussianEncoderConfig.__dataclass_fields__  # torch: config.backbone_sha256
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_onnx_path

    folder = bundled_onnx_path(DEFAULT_MODEL)
    assert folder is not None
    onnx_config = json.loads((folder / "config.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", onnx_config["onnx"]["encoder"]["backbone_sha256"])


def test_concepts_describe_the_default_architecture() -> None:
    from kl_retrievers.pretrained import DEFAULT_MODEL, bundled_model_path

    config = json.loads((bundled_model_path(DEFAULT_MODEL) / "config.json").read_text())
    encoder = config.get("encoder", config)
    assert encoder["var_token"] is False and encoder["pooling"] == "mean"
    text = (REPO / "docs" / "concepts.md").read_text()
    representation = text.split("## The representation", 1)[1].split("##", 1)[0]
    assert '"var_token": false' in representation and '"pooling": "mean"' in representation
    assert "minilm-gauss-zs" in representation  # the [VAR] variant, as an option


# ------------------------------------------------------------------ evaluate_model without the eval extra
class RecordingEncoder:
    """A tiny duck-typed encoder that records whether it was asked to encode."""

    name_or_path = "recording"
    config: Any = None
    weights_sha256 = None

    def __init__(self) -> None:
        self.calls: list[int] = []

    def _encode(self, texts: Any, **_: Any) -> Gaussians:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append(len(texts))
        rng = np.random.default_rng(len(texts))
        return Gaussians(rng.normal(size=(len(texts), 4)).astype(np.float32), np.ones((len(texts), 4), np.float32))

    encode_queries = _encode
    encode_documents = _encode


DATASET = BeirDataset(
    Path("."),
    "test",
    {"d1": {"title": "", "text": "Cats purr."}, "d2": {"title": "", "text": "Dogs bark."}},
    {"q1": "why do cats purr"},
    {"q1": {"d1": 1}},
)


def test_evaluate_model_without_ir_measures_says_what_to_install_before_encoding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kl_retrievers.evaluation import evaluate_model

    block_modules(monkeypatch, "ir_measures")
    encoder = RecordingEncoder()
    with pytest.raises(ImportError, match=r'pip install "kl-retrievers\[eval\]"') as err:
        evaluate_model(encoder, DATASET, show_progress=False, cache_dir=tmp_path, use_cache=False)
    assert "ir-measures" in str(err.value) and err.value.name == "ir_measures"
    assert encoder.calls == [], "the corpus was encoded before the missing package was noticed"


def test_evaluate_model_with_ir_measures_still_scores(tmp_path: Path) -> None:
    pytest.importorskip("ir_measures")
    from kl_retrievers.evaluation import evaluate_model

    encoder = RecordingEncoder()
    result = evaluate_model(encoder, DATASET, k=2, show_progress=False, cache_dir=tmp_path, use_cache=False)
    assert encoder.calls and set(result.aggregate) and 0.0 <= result.aggregate["ndcg@10"] <= 1.0
    assert "ir_measures" in sys.modules
