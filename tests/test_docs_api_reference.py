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

import pytest

from conftest import RecordingEncoder, block_modules
from kl_retrievers.datasets import BeirDataset

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


def test_a_bare_name_does_not_link_to_a_member_of_another_class() -> None:
    """A bare name matches by its ending only a module-level object (Sphinx searches suffixes for ``.name``)."""
    page = (
        '<div class="doc doc-object doc-module"><h2 id="pkg.a" class="doc doc-heading">a</h2>'
        '<div class="doc doc-object doc-class"><h3 id="pkg.a.Store" class="doc doc-heading">Store</h3>'
        '<div class="doc doc-object doc-function"><h4 id="pkg.a.Store.load" class="doc doc-heading">load</h4>'
        "<p>Sets :attr:<code>saved_encoder</code>; see :func:<code>helper</code>.</p></div></div></div>"
        '<div class="doc doc-object doc-module"><h2 id="pkg.b" class="doc doc-heading">b</h2>'
        '<div class="doc doc-object doc-class"><h3 id="pkg.b.Other" class="doc doc-heading">Other</h3>'
        '<div class="doc doc-object doc-attribute">'
        '<h4 id="pkg.b.Other.saved_encoder" class="doc doc-heading">saved_encoder</h4></div></div>'
        '<div class="doc doc-object doc-function"><h3 id="pkg.b.helper" class="doc doc-heading">helper</h3></div>'
        "</div>"
    )
    out = _hooks().sphinx_roles(page)
    # another class's attribute of that name is not what Store.load means: plain code, as Sphinx shows it
    assert "<code>saved_encoder</code>" in out and 'identifier="pkg.b.Other.saved_encoder"' not in out, out
    # a module-level object of another documented module is still found by its name
    assert '<autoref identifier="pkg.b.helper" optional><code>helper</code></autoref>' in out, out


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

#: Public modules the API reference need not cover, and why. Every other module of ``kl_retrievers._SUBMODULES``
#: (and the store backends) is checked, so a new public module needs an entry or a reason here.
EXEMPT_MODULES = {
    "kl_retrievers.cli": "the command line; docs/cli.md documents it",
    "kl_retrievers.cli_common": "argument helpers shared by the command line's subcommands",
    "kl_retrievers.evaluate_cli": "the evaluate subcommand (docs/cli.md)",
    "kl_retrievers.onnx_cli": "the kl-retrievers-onnx command (docs/onnx.md)",
    "kl_retrievers.training.cli": "the train subcommand (docs/cli.md, docs/training.md)",
}
#: Public submodules of the public packages (not in ``kl_retrievers._SUBMODULES``) whose own ``__all__`` is checked too.
SUBPACKAGE_MODULES = [
    "kl_retrievers.backbones.bge",
    "kl_retrievers.training.cli",
    "kl_retrievers.training.features",
    "kl_retrievers.training.losses",
    "kl_retrievers.training.teacher",
    "kl_retrievers.training.trainer",
]


def _public_modules() -> list[Any]:
    """``kl_retrievers``, its public submodules and the store backends, as parameters; a module whose optional
    extra is not installed (langchain, llama-index, torch) is a skipped parameter, as ``importorskip`` would."""
    import kl_retrievers

    names = ["kl_retrievers", *(f"kl_retrievers.{name}" for name in sorted(kl_retrievers._SUBMODULES))]
    names += ["kl_retrievers.store.faiss", "kl_retrievers.store.milvus", *SUBPACKAGE_MODULES]
    params: list[Any] = []
    for module in names:
        if module in EXEMPT_MODULES:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            if err.name is not None and err.name.split(".")[0] == "kl_retrievers":
                raise  # a broken module of this package, not a missing extra
            reason = f"an optional extra is not installed: {err}"
            params.append(pytest.param(module, marks=pytest.mark.skip(reason=reason)))
            continue
        params.append(module)
    return params


def _constants_table(api: str) -> dict[str, set[str]]:
    """Module -> the names the "Constants and type aliases" table of ``api`` lists under it (its Module column)."""
    table = api.split("## Constants and type aliases", 1)[-1].split(":::", 1)[0]
    listed: dict[str, set[str]] = {}
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for module in re.findall(r"`([^`]+)`", cells[1]):
            listed.setdefault(module, set()).update(re.findall(r"`([^`]+)`", cells[0]))
    return listed


CONSTANTS = _constants_table(API)


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


@pytest.mark.parametrize("module", _public_modules())
def test_every_public_name_has_an_api_reference_entry(module: str) -> None:
    """Each name in a public module's ``__all__`` is rendered by a ``:::`` directive or is a row of the constants
    table whose Module column names that module."""
    mod = importlib.import_module(module)
    listed = CONSTANTS.get(module, set())
    missing = [name for name in mod.__all__ if not (_rendered(module, name, getattr(mod, name)) or name in listed)]
    assert not missing, f"{module}.__all__ names with no entry in docs/api.md: {missing}"


def test_a_name_in_prose_or_under_another_module_is_not_an_entry() -> None:
    api = (
        "Use `kl_retrievers.x.LIMIT` with care.\n\n## Constants and type aliases\n\n| Name | Module | What |\n"
        "| --- | --- | --- |\n| `A`, `B` | `pkg.one`, `pkg.two` | Two (`C` in the text). |\n| `D` | `pkg.two` | d |\n\n"
        "::: pkg.one\n\n| `E` | `pkg.one` | after the reference: not the table |\n"
    )
    assert _constants_table(api) == {"pkg.one": {"A", "B"}, "pkg.two": {"A", "B", "D"}}


def test_the_module_list_comes_from_the_package_and_skips_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every public submodule is checked (not only those with a directive), and the file still collects on an
    install without the langchain / llama-index extras: their modules become skipped parameters."""
    import kl_retrievers

    for extra in [m for m in sys.modules if m.split(".")[0] in ("langchain_core", "llama_index")] + ["langchain_core"]:
        monkeypatch.setitem(sys.modules, extra, None)  # the extras and their imported submodules: not installed
    for module in ("kl_retrievers.langchain", "kl_retrievers.llama_index"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    params = _public_modules()
    skipped = {p.values[0]: p.marks[0].kwargs["reason"] for p in params if not isinstance(p, str)}
    assert set(skipped) == {"kl_retrievers.langchain", "kl_retrievers.llama_index"}, skipped
    assert "langchain" in skipped["kl_retrievers.langchain"], skipped
    checked = {p for p in params if isinstance(p, str)} | set(skipped) | set(EXEMPT_MODULES)
    assert {f"kl_retrievers.{name}" for name in kl_retrievers._SUBMODULES} <= checked
    assert {"kl_retrievers.training", "kl_retrievers.runs", "kl_retrievers.store.milvus"} <= checked


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


def test_getting_started_identity_block_runs_where_the_default_backend_is_torch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The block printing the identities runs on a CUDA machine too, where ``load_default_model()`` is torch."""
    import kl_retrievers.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_cuda_available", lambda: True)
    assert pretrained.default_backend() == "torch"  # as on a machine with a CUDA GPU (torch installed)
    text = (REPO / "docs" / "getting-started.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "backbone_sha256" in b)
    namespace: dict[str, Any] = {}
    exec(compile("from kl_retrievers import load_default_model\n" + block, "getting-started.md", "exec"), namespace)
    assert re.fullmatch(r"[0-9a-f]{64}", namespace["encoder"].config.encoder["backbone_sha256"])


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
