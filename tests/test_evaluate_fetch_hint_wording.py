"""``evaluate`` on a missing folder suggests ``fetch_beir`` only as a possibility: the folder may be a typo or a
private collection, which no BEIR download can fill."""

from __future__ import annotations

from pathlib import Path

import pytest

from kl_retrievers.cli import main


@pytest.mark.parametrize("name", ["scifact", "my-private-set"])
def test_the_fetch_hint_is_conditional_on_a_public_beir_name(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert "dataset folder not found; if its name is a public BEIR collection's (scifact, nfcorpus, ...), " in err
    assert f"fetch_beir({name!r}, " in err
    assert "download a public BEIR collection into it first" not in err
