"""Write (and optionally execute) the notebooks in notebooks/ from the cell lists below.

    python scripts/build_notebooks.py            # write the .ipynb files without outputs
    python scripts/build_notebooks.py --execute  # also run them and keep their (small) outputs

CI runs every notebook top to bottom with nbmake (`pytest --nbmake notebooks`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks"

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

NOTEBOOKS["01_quick_start.ipynb"] = [
    (
        "md",
        "# 01 · Quick start\n\nEncode texts into diagonal Gaussians, look at their means and variances, "
        "check -KL against brute force, and build and query a KL store. The score is always "
        "**-KL(query || document), higher is better**.",
    ),
    (
        "code",
        "import numpy as np\nfrom kl_retrievers import (KLStore, kl_document_vectors, kl_query_constant,\n"
        "                           kl_query_vectors, load_default_model, neg_kl_matrix)\n\n"
        "encoder = load_default_model()\nencoder",
    ),
    (
        "md",
        "The default model is all-MiniLM-L6-v2 with **unit variances** (its model card says so): "
        "-KL equals cosine minus one. A trained Gaussian model gives text-dependent variances.",
    ),
    (
        "code",
        "docs = [\n    'Honey bees communicate where food is with a waggle dance.',\n"
        "    'Yeast releases carbon dioxide, which makes bread rise.',\n"
        "    'Railway signals keep trains apart by dividing the line into blocks.',\n"
        "    'Astronomers find exoplanets by the dip in a star\\'s brightness.',\n]\n"
        "queries = ['how do bees share information?', 'why does dough rise?']\n"
        "D = encoder.encode_documents(docs)\nQ = encoder.encode_queries(queries)\n"
        "print('means', D.mean.shape, 'variances', D.var.shape)\n"
        "print('variance range', float(D.var.min()), float(D.var.max()))\n"
        "print('query uncertainty (mean log-variance):', Q.uncertainty())",
    ),
    (
        "md",
        "## -KL, brute force and through the inner-product rewrite\n\n"
        "`<q~, d~> + c(q)` equals -KL exactly, which is what lets an inner-product index serve it.",
    ),
    (
        "code",
        "exact = neg_kl_matrix(Q.astype(np.float64), D.astype(np.float64))\n"
        "rewrite = kl_query_vectors(Q.astype(np.float64)) @ kl_document_vectors(D.astype(np.float64)).T \\\n"
        "    + kl_query_constant(Q.astype(np.float64))[:, None]\n"
        "print(np.round(exact, 4))\nprint('max |rewrite - exact| =', float(np.abs(rewrite - exact).max()))\n"
        "assert np.allclose(rewrite, exact, rtol=1e-10)",
    ),
    ("md", "## A KL store\n\nFlat (exact) by default; `hnsw` and `ivf` use the L2 reduction plus exact re-scoring."),
    (
        "code",
        "store = KLStore(encoder)\nstore.add(docs, ids=['bees', 'bread', 'rail', 'space'],\n"
        "          metadatas=[{'topic': t} for t in ['nature', 'food', 'transport', 'science']])\n"
        "for hit in store.search('how do bees share information?', k=2):\n"
        "    print(f'{hit.score:8.4f}  {hit.id}  {hit.text[:50]}')\n"
        "hits = store.search('how do bees share information?', k=2, filter={'topic': {'$ne': 'nature'}})\n"
        "print([h.id for h in hits])",
    ),
    (
        "code",
        "import tempfile, pathlib\nfolder = pathlib.Path(tempfile.mkdtemp()) / 'store'\nstore.save(folder)\n"
        "print(sorted(p.name for p in folder.iterdir()))\n"
        "again = KLStore.load(folder, encoder=encoder)\n"
        "assert [h.id for h in again.search('trains', k=1)] == [h.id for h in store.search('trains', k=1)]",
    ),
]


def build(execute: bool) -> None:
    OUT.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(
            cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells],
            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        )
        if execute:
            from nbclient import NotebookClient

            NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}).execute()
        nbformat.write(nb, OUT / name)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--execute", action="store_true")
    build(parser.parse_args().execute)
