"""Rebuild the bundled placeholder default model (kl_retrievers/pretrained/minilm-unit-variance).

The placeholder is all-MiniLM-L6-v2 with an identity mean head over the L2-normalised
mean-pooled embedding and a constant unit variance (no [VAR] token), saved as a delta on top
of the pinned backbone.  Run: ``python scripts/build_placeholder.py`` (``--out FOLDER`` to write elsewhere).

Only the model's own files (config, weights, tokenizer) are rewritten: every other file in the
folder (the model card, anything added beside the model) is kept as it is, with its
permission bits. ``--out`` takes a saved model folder or a new or empty one, holding regular files only (a
symbolic link or a sub-folder is refused before anything is built).
"""

from __future__ import annotations

from pathlib import Path

from _common import parse_out, save_keeping_files  # scripts/_common.py

from kl_retrievers.encoder import GaussianEncoder

OUT = Path(__file__).resolve().parents[1] / "kl_retrievers" / "pretrained" / "minilm-unit-variance"


def main(argv: list[str] | None = None) -> None:
    out, names = parse_out(argv, description=__doc__, default=OUT)  # before anything is built or read
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
    kept = save_keeping_files(encoder, out, names)
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())} (kept as they were: {kept})")


if __name__ == "__main__":
    main()
