"""A saved encoder's tokenizer files may not be symbolic links leading out of the model folder.

``GaussianEncoder.from_pretrained`` refused a ``model.safetensors`` linked from elsewhere but read a ``tokenizer.json``
(or ``tokenizer_config.json``) linked to any file: the tokenizer files now follow the weights' rule (links to a
Hugging Face cache snapshot's blobs are fine).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import make_tiny_encoder
from kl_retrievers.encoder import GaussianEncoder, NotAnEncoderError


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_tokenizer_file_linked_from_outside_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    folder = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(folder / name, outside)  # the same bytes: only the link is wrong
    (folder / name).symlink_to(outside)
    with pytest.raises(NotAnEncoderError, match="not to a file directly in the model folder") as info:
        GaussianEncoder.from_pretrained(folder)
    assert f"{folder / name} resolves to {outside}" in str(info.value)


def test_a_hugging_face_snapshot_whose_files_link_to_its_blobs_loads(tmp_path: Path) -> None:
    saved = make_tiny_encoder().save_pretrained(tmp_path / "enc")
    repo = tmp_path / "models--me--enc"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, file in enumerate(sorted(saved.iterdir())):
        shutil.copy(file, blobs / f"blob{i}")
        (snapshot / file.name).symlink_to(os.path.relpath(blobs / f"blob{i}", snapshot))
    enc = GaussianEncoder.from_pretrained(snapshot)
    assert enc.encode_queries(["a query"]).mean.shape == (1, 8)
