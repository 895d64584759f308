"""``KL_RETRIEVERS_DATA`` (``LOCAL_COPY_ENV``) set to an empty or blank value counts as unset.

Every other variable of the package reads a blank value (only spaces) as unset (``_io.env_value``); ``fetch_beir``
took a blank ``KL_RETRIEVERS_DATA`` as set, so it looked for the collection in a folder named ``" "`` in the working
folder, and used one found there instead of the download (or the offline error).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_beir
from kl_retrievers.datasets import LOCAL_COPY_ENV, DatasetError, fetch_beir


@pytest.mark.parametrize("value", ["", " ", "   ", " \t "])
def test_a_blank_local_copy_variable_counts_as_unset(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # a collection where the value, read as a folder relative to the working folder, would point
    write_beir(tmp_path / value / "scifact", [{"_id": "d1", "text": "x"}], [{"_id": "q1", "text": "x"}], "q1\td1\t1\n")
    monkeypatch.setenv(LOCAL_COPY_ENV, value)
    monkeypatch.setenv("KL_RETRIEVERS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(
        DatasetError, match=r"KL_RETRIEVERS_OFFLINE is set, so .* is not downloaded.*KL_RETRIEVERS_DATA"
    ):
        fetch_beir("scifact", tmp_path / "data")
    # a folder named by the variable is still used
    mirror = write_beir(tmp_path / "mirror" / "scifact", [{"_id": "d1", "text": "x"}], [{"_id": "q1"}], "q1\td1\t1\n")
    monkeypatch.setenv(LOCAL_COPY_ENV, str(tmp_path / "mirror"))
    assert fetch_beir("scifact", tmp_path / "data") == mirror
