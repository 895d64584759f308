"""The ONNX session flags' help per subcommand, the LangChain manifest's score direction,
``add_texts`` with iterables of metadata, dict views refused with an accurate message, the torch call
forms of ``OnnxGaussianEncoder.to`` and the FAQ's cache table."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import make_tiny_encoder
from kl_retrievers import SCORE_DIRECTION, SCORE_NAME
from kl_retrievers._encoding import check_texts
from kl_retrievers.cli import build_parser
from kl_retrievers.cli_common import add_model_session_arguments
from kl_retrievers.langchain import KLEmbeddings, KLVectorStore

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- 1. --model-threads / --model-spinning help
def _session_help(command: str) -> dict[str, str]:
    """The help text of the session flags of ``kl-retrievers COMMAND``, whitespace collapsed."""
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert isinstance(choices, dict)
    sub = choices[command]
    return {
        action.dest: " ".join(str(action.help).split())
        for action in sub._actions
        if action.dest in ("model_threads", "model_spinning")
    }


@pytest.mark.parametrize("command", ["demo", "search", "evaluate"])
def test_session_flags_help_names_device_only_where_the_command_has_one(command: str) -> None:
    helps = _session_help(command)
    assert set(helps) == {"model_threads", "model_spinning"}
    for flag, text in helps.items():
        assert "--device" not in text, (command, flag, text)


@pytest.mark.parametrize("command", ["encode", "index"])
def test_session_flags_help_names_device_where_the_command_has_one(command: str) -> None:
    for flag, text in _session_help(command).items():
        assert "a --device other than cpu is refused" in text, (command, flag, text)


@pytest.mark.parametrize(
    ("command", "note"),
    [
        ("search", "refused when the store's model ran on torch"),
        ("evaluate", "evaluate's default backend is torch: give --model-backend onnx too"),
        ("demo", "without --model-backend, they pick that backend"),
    ],
)
def test_model_spinning_help_follows_the_commands_default_backend(command: str, note: str) -> None:
    """``--model-spinning`` used to say "without --model-backend it picks that backend" everywhere."""
    helps = _session_help(command)
    assert note in helps["model_spinning"] and note in helps["model_threads"]
    if command in ("search", "evaluate"):
        assert (
            "pick that backend" not in helps["model_spinning"] and "picks that backend" not in helps["model_spinning"]
        )


def test_add_model_session_arguments_reads_the_parsers_device_option() -> None:
    plain, with_device = argparse.ArgumentParser(), argparse.ArgumentParser()
    with_device.add_argument("--device")
    for parser in (plain, with_device):
        add_model_session_arguments(parser, default_note="NOTE")
    for parser, has in ((plain, False), (with_device, True)):
        for action in parser._actions:
            if action.dest in ("model_threads", "model_spinning"):
                assert ("--device" in str(action.help)) is has and "NOTE" in str(action.help)


# ---------------------------------------------------------------- 2. the LangChain manifest's score direction
@pytest.fixture(scope="module")
def embeddings() -> KLEmbeddings:
    return KLEmbeddings(make_tiny_encoder())


def test_langchain_manifest_records_the_score_direction(embeddings: KLEmbeddings, tmp_path: Path) -> None:
    store = KLVectorStore.from_texts(["the cat sat", "a dog ran"], embeddings, ids=["a", "b"])
    folder = store.save_local(tmp_path / "db")
    manifest = json.loads((folder / "langchain.json").read_text(encoding="utf-8"))
    assert manifest["score_name"] == SCORE_NAME == "neg_kl"
    assert manifest["score_direction"] == SCORE_DIRECTION == "higher_is_better"


def test_a_manifest_without_the_score_direction_still_loads(embeddings: KLEmbeddings, tmp_path: Path) -> None:
    """Folders saved before the field existed load as before."""
    store = KLVectorStore.from_texts(["the cat sat", "a dog ran"], embeddings, ids=["a", "b"])
    folder = store.save_local(tmp_path / "db")
    path = folder / "langchain.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.pop("score_direction", None)  # as saved before the field existed
    path.write_text(json.dumps(manifest), encoding="utf-8")
    loaded = KLVectorStore.load_local(folder, embeddings)
    assert [d.id for d in loaded.similarity_search("the cat sat", k=2)] == [
        d.id for d in store.similarity_search("the cat sat", k=2)
    ]


# ---------------------------------------------------------------- 3. add_texts / add_embeddings with iterables
def test_add_texts_takes_a_generator_of_metadatas(embeddings: KLEmbeddings) -> None:
    store = KLVectorStore(embeddings)
    ids = store.add_texts(["the cat sat", "a dog ran"], metadatas=(m for m in [{"n": 1}, {"n": 2}]), ids=["a", "b"])
    assert ids == ["a", "b"]
    assert [d.metadata for d in store.get_by_ids(["a", "b"])] == [{"n": 1}, {"n": 2}]
    store.add_texts(["the bird flew"], metadatas=iter([{"n": 3}]), ids=iter(["c"]))
    assert store.get_by_ids(["c"])[0].metadata == {"n": 3}


def test_add_texts_counts_a_generator_of_metadatas_once(embeddings: KLEmbeddings) -> None:
    store = KLVectorStore(embeddings)
    with pytest.raises(ValueError, match="got 1 metadatas for 2 texts"):
        store.add_texts(["the cat sat", "a dog ran"], metadatas=(m for m in [{"n": 1}]))
    assert len(store) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"metadatas": {"n": 1}},
            r"metadatas must be an iterable of dicts, one per text .*got a single dict: \{'n': 1\}",
        ),
        ({"metadatas": 5}, "metadatas must be an iterable of dicts.*got a single int: 5"),
        ({"ids": 7}, "ids must be an iterable of str.*got a single int: 7"),
        ({"ids": "a"}, "ids must be an iterable of str.*got a single str: 'a'"),
    ],
)
def test_add_texts_refuses_one_metadata_or_id_naming_it(
    embeddings: KLEmbeddings, kwargs: dict[str, Any], message: str
) -> None:
    store = KLVectorStore(embeddings)
    with pytest.raises(TypeError, match=message):
        store.add_texts(["the cat sat"], **kwargs)
    assert len(store) == 0


def test_add_embeddings_takes_a_generator_of_metadatas(embeddings: KLEmbeddings) -> None:
    texts = ["the cat sat", "a dog ran"]
    vectors = embeddings.embed_documents(texts)
    store = KLVectorStore(embeddings)
    store.add_embeddings(zip(texts, vectors, strict=True), metadatas=(m for m in [{"n": 1}, {"n": 2}]), ids=["a", "b"])
    assert [d.metadata for d in store.get_by_ids(["a", "b"])] == [{"n": 1}, {"n": 2}]


def test_dict_views_are_refused_without_claiming_their_order_is_undefined() -> None:
    """A dict's keys keep insertion order (Python 3.7+): the message must not say their order is undefined."""
    for view, named in (({"d1": "x"}.keys(), "keys"), ({"d1": "x"}.items(), "(key, value) pairs")):
        with pytest.raises(TypeError) as info:
            check_texts(view)  # type: ignore[arg-type]
        text = str(info.value)
        assert "not defined" not in text and "arbitrary" not in text
        assert named in text and "list(d.values())" in text
    with pytest.raises(TypeError, match=r"iteration order is arbitrary.*sorted\(texts\)"):
        check_texts({"the cat", "a dog"})  # type: ignore[arg-type]


# ---------------------------------------------------------------- 4. OnnxGaussianEncoder.to
@pytest.fixture(scope="module")
def onnx_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx

    root = tmp_path_factory.mktemp("onnx-to")
    enc = make_tiny_encoder()
    return {
        "float32": OnnxGaussianEncoder(export_onnx(enc, root / "f32", quantize=None, verify=False)),
        "int8": OnnxGaussianEncoder(export_onnx(enc, root / "i8", quantize="int8", verify=False)),
    }


def test_onnx_to_takes_torch_call_forms_for_the_cpu(onnx_graphs: dict[str, Any]) -> None:
    import torch

    for enc in onnx_graphs.values():
        assert enc.to("cpu") is enc
        assert enc.to(device="cpu") is enc
        assert enc.to(torch.device("cpu"), non_blocking=True) is enc
        assert enc.to("cpu:0", None, True) is enc
        assert enc.to() is enc


def test_onnx_to_accepts_float32_on_every_graph(onnx_graphs: dict[str, Any]) -> None:
    """float32 is a no-op on a float32 graph and on an int8 one (torch's quantized modules do the same)."""
    import torch

    for enc in onnx_graphs.values():
        assert enc.to(torch.float32) is enc
        assert enc.to("cpu", torch.float32) is enc
        assert enc.to(dtype=torch.float32, device="cpu") is enc
        assert enc.to(torch.zeros(2)) is enc  # to(tensor): a cpu float32 tensor


@pytest.mark.parametrize("graph", ["float32", "int8"])
def test_onnx_to_refuses_other_dtypes_and_devices_with_the_good_messages(
    onnx_graphs: dict[str, Any], graph: str
) -> None:
    """``.to(dtype=torch.float16)`` and ``.to("cpu", torch.float16)`` used to be bare TypeErrors."""
    import torch

    enc = onnx_graphs[graph]
    fixed = r"precision is fixed by its graph .*got torch.float16"
    with pytest.raises(TypeError, match=fixed):
        enc.to(dtype=torch.float16)
    with pytest.raises(TypeError, match=fixed):
        enc.to("cpu", torch.float16)
    with pytest.raises(TypeError, match=fixed):
        enc.to(torch.float16, non_blocking=False)
    with pytest.raises(TypeError, match=fixed):
        enc.to(torch.zeros(2, dtype=torch.float16))
    with pytest.raises(ValueError, match="runs on cpu only; got device='cuda'"):
        enc.to("cuda", torch.float32)
    with pytest.raises(ValueError, match="runs on cpu only; got device='cuda'"):
        enc.to(device="cuda")
    assert enc.to(memory_format=torch.channels_last) is enc  # any torch.memory_format: a no-op
    with pytest.raises(TypeError, match="dtype must be a torch.dtype .*got 'float16'"):
        enc.to(dtype="float16")
    with pytest.raises(TypeError, match="got two devices"):
        enc.to("cpu", device="cpu")


# ---------------------------------------------------------------- 5. the FAQ's cache table
def _cache_rows() -> dict[str, str]:
    text = (REPO / "docs" / "faq.md").read_text(encoding="utf-8")
    section = text.split("## Where are the caches, and how do I clear them?", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): line for line in section.splitlines() if (m := re.match(r"\| `([a-z]+)/` \|", line))}


def test_faq_cache_table_names_the_dataset_and_teacher_folders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kl_retrievers import datasets
    from kl_retrievers.encoding_cache import CACHE_ENV

    rows = _cache_rows()
    assert {"encodings", "onnx", "backbones", "features", "datasets", "teacher"} <= set(rows)
    assert f"`{datasets.DOWNLOAD_ROOT_ENV}`" in rows["datasets"] and "fetch_beir" in rows["datasets"]
    assert f"${CACHE_ENV}/teacher" in rows["teacher"] and "--cache-dir" in rows["teacher"]
    # the folders the code uses are the ones the table names
    monkeypatch.delenv(datasets.DOWNLOAD_ROOT_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets._download_root() == tmp_path / "kl_retrievers" / "datasets"
    monkeypatch.setenv(datasets.DOWNLOAD_ROOT_ENV, str(tmp_path / "mine"))
    assert datasets._download_root() == tmp_path / "mine"
