"""Rebuild the bundled placeholder default model (kl_retrievers/pretrained/minilm-unit-variance).

The placeholder is all-MiniLM-L6-v2 with an identity mean head over the L2-normalised
mean-pooled embedding and a constant unit variance (no [VAR] token), saved as a delta on top
of the pinned backbone.  Run: ``python scripts/build_placeholder.py``.
"""

from __future__ import annotations

from pathlib import Path

from kl_retrievers.encoder import GaussianEncoder

OUT = Path(__file__).resolve().parents[1] / "kl_retrievers" / "pretrained" / "minilm-unit-variance"


def main() -> None:
    card = (OUT / "README.md").read_text() if (OUT / "README.md").is_file() else None
    encoder = GaussianEncoder.from_backbone(
        "sentence-transformers/all-MiniLM-L6-v2",
        pooling="mean",
        var_token=False,
        normalize_pooled=True,
        init_variance=1.0,
        identity_mean=True,
        max_length=256,
        query_max_length=64,
    )
    encoder.save_pretrained(OUT, include_backbone=False)
    if card is not None:
        (OUT / "README.md").write_text(card)
    print(f"wrote {OUT}: {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
