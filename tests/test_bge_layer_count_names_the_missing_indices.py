"""A graph whose encoder layers skip an index is refused naming the missing and the unexpected indices.

Layers 0-10 and 12 of a 12-layer model were reported as "12 encoder layers (indices 0-12) ... expected 12 layers",
naming neither the missing 11 nor the unexpected 12.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from test_bge import TINY, assert_nothing_written, convert_tiny, int8_bert_graph, save_graph

from kl_retrievers.backbones.bge import BackboneConversionError


def _renamed_layer(model: Any, old: int, new: int) -> Any:
    """``model`` with every tensor and node of encoder layer ``old`` renamed to layer ``new``."""
    doctored = onnx.ModelProto()
    doctored.CopyFrom(model)
    a, b = f".layer.{old}.", f".layer.{new}."
    for tensor in doctored.graph.initializer:
        tensor.name = tensor.name.replace(a, b)
    for node in doctored.graph.node:
        node.name = node.name.replace(a, b)
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = name.replace(a, b)
    return doctored


def test_a_skipped_layer_index_is_named(tmp_path: Path) -> None:
    config = {**TINY, "num_hidden_layers": 4}
    model, _ = int8_bert_graph(config)
    target = tmp_path / "out"
    with pytest.raises(BackboneConversionError) as caught:
        convert_tiny(save_graph(_renamed_layer(model, 2, 4), tmp_path / "src"), target, config)
    message = str(caught.value)
    assert "4 encoder layers (indices 0-1, 3-4)" in message
    assert "expected 4 layers (indices 0-3); missing index(es) 2; unexpected index(es) 4" in message
    assert_nothing_written(target)


def test_a_missing_last_layer_is_named_without_unexpected_ones(tmp_path: Path) -> None:
    model, _ = int8_bert_graph({**TINY, "num_hidden_layers": 2})
    target = tmp_path / "out"
    with pytest.raises(BackboneConversionError, match=r"expected 3 layers \(indices 0-2\); missing index\(es\) 2$"):
        convert_tiny(save_graph(model, tmp_path / "src"), target, {**TINY, "num_hidden_layers": 3})
    assert_nothing_written(target)
