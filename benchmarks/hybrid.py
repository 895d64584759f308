"""Hybrid retrieval (BM25 + -KL, :mod:`kl_retrievers.hybrid`) on the four dev collections.

Two jobs:

``--fit`` fits the adaptive fusion weight on training queries only: SciFact TRAIN, NFCorpus
train and a seeded sample of 3,000 SQuAD queries of the train articles (every 10th article held
out, as the default model's training split them; the sample ``benchmarks/calibration.py`` uses).
The score normalisation (min-max or z-score) is chosen by leave-one-collection-out
cross-validation on those three sets; the final parameters, fitted on all three, are written
(readable JSON) to ``--params-out``, by default the file a ``KLHybridStore`` of that model and
stemmer reads (:func:`default_params_out`): the default model's ``kl_retrievers/data/hybrid_adaptive.json``
(``--stemmer none``: ``hybrid_adaptive.unstemmed.json`` beside it), another model's
``hybrid_adaptive.json`` (or ``hybrid_adaptive.unstemmed.json``) in its folder; another stemmer (or a
hub model) needs ``--params-out``. A ``hybrid-fit`` line is logged.

Without ``--fit`` it evaluates the test splits of scifact, nfcorpus-preprocessed, cranfield and
trec-dl21-passage-pooled with ``--model`` (default: the default model; encodings from the shared evaluation
cache) and the adaptive parameters of ``--params``, by default the file a ``KLHybridStore`` of that model and
stemmer reads (:func:`default_params`: the model folder's own, else the default model's; logged runs without
``--params`` from before this default read the default model's, whatever the model). It compares
BM25 alone, the dense ``-KL`` alone, RRF (k = 60), the best fixed convex weight (weight and
normalisation chosen on SciFact TRAIN) and the adaptive fusion, with paired t-tests (scipy) of
the adaptive fusion against the better single retriever, RRF and the fixed convex fusion, and
the query time of the hybrid store against the dense store alone (same corpus, same queries,
side by side, one query at a time): text in, results out (the query encoded by each), and the
search alone (query Gaussians given). Last it prints one line::

    hybrid_gain=X worst_drop=Y latency_ratio=Z

X: the adaptive fusion's nDCG@10 minus the better of BM25 and dense alone, averaged over the four
collections; Y: its largest drop below the better single retriever on any one (0 if none); Z: the
hybrid store's query time over the dense store's, text in and results out, summed over the four
collections. Every run appends a JSON line to ``runs/eval/hybrid.jsonl`` (the command included).

Examples:
    python benchmarks/hybrid.py --fit
    python benchmarks/hybrid.py --quick
    python benchmarks/hybrid.py --quick --model bge-small-unit-variance   # bge's own hybrid_adaptive.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kl_retrievers.datasets import BeirDataset, load_beir
from kl_retrievers.hybrid import (
    ADAPTIVE_PARAMS_FILE,
    ADAPTIVE_PARAMS_PATH,
    DEFAULT_STEMMER,
    SIGNALS,
    AdaptiveParams,
    Candidates,
    FusionConfig,
    KLHybridStore,
    fit_adaptive,
    fuse,
    ndcg_curves,
)

logger = logging.getLogger("benchmarks.hybrid")
ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
LOG = ROOT / "runs" / "eval" / "hybrid.jsonl"
COLLECTIONS = ("scifact", "nfcorpus-preprocessed", "cranfield", "trec-dl21-passage-pooled")
SHORT = {"nfcorpus-preprocessed": "nfcorpus", "trec-dl21-passage-pooled": "trec-dl21"}
MODEL = "minilm-gauss-soup"
SQUAD = "squad-v1.1-dev-retrieval"
SQUAD_QUERIES = 3000
TRAIN_SETS = ("scifact:train", "nfcorpus-preprocessed:train", "squad:train")
WEIGHT_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)
DEPTH = 100
GRID_SIZE = 21
#: Signal sets compared by --fit (the query uncertainty with the list statistics, and without it).
SIGNAL_SETS = {"all": SIGNALS, "no-uncertainty": tuple(s for s in SIGNALS if s != "uncertainty")}
ALPHA = 0.05
#: A folder's parameters fitted on unstemmed BM25, which a store with ``stemmer=None`` reads (kl_retrievers.hybrid).
UNSTEMMED_PARAMS_FILE = "hybrid_adaptive.unstemmed.json"


def default_params_out(model: str, stemmer: str | None) -> Path | None:
    """Where ``--fit`` writes by default: the file a ``KLHybridStore`` of ``model`` and ``stemmer`` reads.

    The default model's go to the package's ``data`` folder (``hybrid_adaptive.json``, with ``stemmer=None``
    ``hybrid_adaptive.unstemmed.json``), another model's to its own folder under the same names. ``None``
    for a stemmer other than :data:`DEFAULT_STEMMER` and ``None`` (no store reads such a file by default), and
    for a model that is neither bundled nor a local folder (a hub id).

    Examples:
        >>> default_params_out(MODEL, DEFAULT_STEMMER) == ADAPTIVE_PARAMS_PATH
        True
        >>> default_params_out("bge-small-unit-variance", None).parts[-2:]
        ('bge-small-unit-variance', 'hybrid_adaptive.unstemmed.json')
        >>> default_params_out(MODEL, "porter") is None
        True
        >>> default_params_out("kl_retrievers:bge-small-unit-variance", None) == default_params_out(
        ...     "bge-small-unit-variance", None)
        True
    """
    from kl_retrievers.pretrained import bundled_model_path, bundled_models

    model = model.removeprefix("kl_retrievers:")  # a bundled name as load_model takes it too
    if stemmer not in (DEFAULT_STEMMER, None):
        return None
    name = ADAPTIVE_PARAMS_FILE if stemmer is not None else UNSTEMMED_PARAMS_FILE
    if model == MODEL:
        return ADAPTIVE_PARAMS_PATH.with_name(name)
    folder = bundled_model_path(model) if model in bundled_models() else Path(model).expanduser()
    return folder / name if folder.is_dir() else None


def default_params(model: str, stemmer: str | None) -> Path:
    """What evaluation reads without ``--params``: the file a ``KLHybridStore`` of ``model`` and ``stemmer`` reads.

    As :meth:`KLHybridStore.adaptive_params` finds it for a store given no parameters: the model folder's
    ``hybrid_adaptive.unstemmed.json`` (``stemmer=None`` only) or ``hybrid_adaptive.json``
    (:func:`kl_retrievers.pretrained.model_file`, for a bundled name or a local folder), else the default model's
    (:meth:`AdaptiveParams.default`: ``hybrid_adaptive.unstemmed.json`` beside ``kl_retrievers/data/
    hybrid_adaptive.json`` for ``stemmer=None``, when it is there, else the latter).

    Examples:
        >>> default_params(MODEL, DEFAULT_STEMMER) == ADAPTIVE_PARAMS_PATH
        True
        >>> default_params("bge-small-unit-variance", DEFAULT_STEMMER).parts[-2:]
        ('bge-small-unit-variance', 'hybrid_adaptive.json')
        >>> default_params("minilm-gauss-lora", DEFAULT_STEMMER) == ADAPTIVE_PARAMS_PATH  # ships none
        True
    """
    from kl_retrievers.pretrained import model_file

    own = model_file(model, UNSTEMMED_PARAMS_FILE) if stemmer is None else None
    own = own or model_file(model, ADAPTIVE_PARAMS_FILE)
    if own is not None:
        return own
    unstemmed = ADAPTIVE_PARAMS_PATH.with_name(UNSTEMMED_PARAMS_FILE)
    return unstemmed if stemmer is None and unstemmed.is_file() else ADAPTIVE_PARAMS_PATH


def git_commit() -> str | None:
    """The repository's HEAD commit (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def squad_train_split(seed: int = 0, n: int = SQUAD_QUERIES) -> BeirDataset:
    """A seeded sample of SQuAD queries of the train articles, against the whole SQuAD corpus.

    Every 10th article (sorted by id) is held out (the abstention test uses those); the same sample
    as ``benchmarks/calibration.py``'s ``squad:train`` (same seed and size), so the encodings are shared.
    """
    squad = load_beir(DATASETS / SQUAD, "test")
    articles = sorted({d.split("-")[0] for d in squad.doc_ids})
    held = set(articles[::10])
    keep = [q for q, rel in squad.qrels.items() if not any(d.split("-")[0] in held for d in rel)]
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(keep, size=min(n, len(keep)), replace=False).tolist())
    return squad.subset(keep, squad.doc_ids)


def load_split(spec: str) -> BeirDataset:
    """``collection:split``; ``squad:train`` is :func:`squad_train_split`; no test split is training data."""
    name, _, split = spec.partition(":")
    split = split or "test"
    if name == "squad":
        if split != "train":
            raise ValueError(f"only squad:train is defined; got {spec!r}")
        return squad_train_split()
    return load_beir(DATASETS / name, split, unknown_docs="drop" if split == "train" else "error")


def load_encoder(name: str, threads: int) -> Any:
    import torch

    from kl_retrievers.pretrained import load_model

    torch.set_num_threads(threads)
    return load_model(name, backend="torch")


class Prepared:
    """A split's hybrid store (over its corpus), its query Gaussians and every query's candidates."""

    def __init__(
        self,
        encoder: Any,
        ds: BeirDataset,
        *,
        adaptive: AdaptiveParams | None,
        store: Any = None,
        stemmer: str | None = DEFAULT_STEMMER,
    ) -> None:
        from kl_retrievers.evaluation import encode_dataset

        t0 = time.perf_counter()
        q, d = encode_dataset(encoder, ds, show_progress=False)
        self.encode_s = time.perf_counter() - t0
        self.ds, self.q = ds, q
        if store is None:
            fusion = "adaptive" if adaptive else "rrf"
            store = KLHybridStore(encoder, fusion=fusion, adaptive_params=adaptive, stemmer=stemmer)
            store.add(ds.document_texts(), gaussians=d, ids=ds.doc_ids)
        self.store = store
        t0 = time.perf_counter()
        judged = [i for i, qid in enumerate(ds.query_ids) if qid in ds.qrels]  # as evaluate_run counts them
        self.query_ids = [ds.query_ids[i] for i in judged]
        texts = ds.query_texts(self.query_ids)
        self.candidates = store.candidates(texts, query_gaussians=q[np.asarray(judged, dtype=np.int64)], depth=DEPTH)
        self.qrels = [ds.qrels[qid] for qid in self.query_ids]
        self.candidates_s = time.perf_counter() - t0
        logger.info(
            "%s:%s: %d judged queries, %d documents (encodings %.1f s, candidates %.1f s)",
            Path(ds.path).name,
            ds.split,
            len(self.query_ids),
            len(ds.doc_ids),
            self.encode_s,
            self.candidates_s,
        )


def single_run(c: Candidates, side: str) -> dict[str, float]:
    """One retriever's own top-``DEPTH`` list (scores as it gave them)."""
    rank = c.dense_rank if side == "dense" else c.bm25_rank
    scores = c.neg_kl if side == "dense" else c.bm25
    return {c.ids[j]: float(scores[j]) for j in np.flatnonzero(rank > 0)}


def fused_run(c: Candidates, config: FusionConfig, params: AdaptiveParams | None) -> tuple[dict[str, float], float]:
    """The fused ranking of one query as a run (scores strictly decreasing) and its dense weight."""
    scores, w = fuse(c, config, params)
    order = np.lexsort((-c.neg_kl, -scores))[:DEPTH]
    n = len(order)
    return {c.ids[j]: float(n - r) for r, j in enumerate(order)}, (np.nan if w is None else w)


def evaluate_systems(
    prep: Prepared, systems: Mapping[str, tuple[FusionConfig | None, AdaptiveParams | None]]
) -> dict[str, Any]:
    """Aggregate and per-query nDCG@10 / Recall@100 of each system on a prepared split."""
    from kl_retrievers.evaluation import evaluate_run

    qrels = {qid: prep.ds.qrels[qid] for qid in prep.query_ids}
    out: dict[str, Any] = {}
    for name, (config, params) in systems.items():
        run: dict[str, dict[str, float]] = {}
        weights = []
        for qid, c in zip(prep.query_ids, prep.candidates, strict=True):
            if config is None:
                run[qid] = single_run(c, name)
            else:
                run[qid], w = fused_run(c, config, params)
                weights.append(w)
        agg, per_query = evaluate_run(qrels, run, ["ndcg@10", "recall@100"])
        out[name] = {"aggregate": agg, "per_query": per_query}
        if weights and not np.isnan(weights).all():
            out[name]["mean_dense_weight"] = float(np.nanmean(weights))
            out[name]["dense_weight_quartiles"] = [float(v) for v in np.nanpercentile(weights, [25, 50, 75])]
    return out


def best_fixed_convex(prep: Prepared) -> dict[str, Any]:
    """The convex weight and normalisation with the best mean nDCG@10 on a (training) split."""
    best: dict[str, Any] = {}
    table: dict[str, list[float]] = {}
    for norm in ("minmax", "zscore"):
        curves = ndcg_curves(prep.candidates, prep.qrels, WEIGHT_GRID, norm)
        means = curves.mean(axis=0)
        table[norm] = [round(float(v), 6) for v in means]
        j = int(np.argmax(means))
        if not best or means[j] > best["ndcg@10"]:
            best = {"weight": float(WEIGHT_GRID[j]), "normalization": norm, "ndcg@10": float(means[j])}
    best["grid"] = [float(w) for w in WEIGHT_GRID]
    best["ndcg@10_by_weight"] = table
    return best


# --------------------------------------------------------------------------------------
# --fit
# --------------------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> None:
    from kl_retrievers.evaluation import model_fingerprint

    started = dt.datetime.now().isoformat(timespec="seconds")
    t_all = time.perf_counter()
    encoder = load_encoder(args.model, args.threads)
    groups: dict[str, tuple[list[Candidates], list[dict[str, int]]]] = {}
    for spec in TRAIN_SETS:
        prep = Prepared(encoder, load_split(spec), adaptive=None, stemmer=args.stemmer)
        groups[spec] = (prep.candidates, prep.qrels)
    grid = np.linspace(0.0, 1.0, GRID_SIZE)
    curves = {
        norm: {spec: ndcg_curves(*groups[spec], grid, norm) for spec in TRAIN_SETS} for norm in ("minmax", "zscore")
    }
    # the variant (normalisation, signals): leave one training collection out, on training data only
    variants = {f"{norm}/{name}": (norm, sig) for norm in ("minmax", "zscore") for name, sig in SIGNAL_SETS.items()}
    cv: dict[str, dict[str, Any]] = {}
    for label, (norm, sig) in variants.items():
        cv[label] = {}
        for held in TRAIN_SETS:
            rest = {k: v for k, v in groups.items() if k != held}
            pre = {k: v for k, v in curves[norm].items() if k != held}
            p = fit_adaptive(rest, normalization=norm, signals=sig, restarts=args.restarts, l2=args.l2, precomputed=pre)
            cands, rels = groups[held]
            adaptive = float(np.mean(ndcg_curves_at(cands, rels, p)))
            fixed_w = p.info["best_fixed_weight"]  # the fixed weight the other two prefer, for reference
            fixed = float(curves[norm][held][:, round(fixed_w * (GRID_SIZE - 1))].mean())
            cv[label][held] = {"adaptive": round(adaptive, 6), "fixed": round(fixed, 6), "fixed_weight": fixed_w}
            print(f"cv {label:20s} held out {held:28s} adaptive {adaptive:.4f}  fixed w={fixed_w:.2f} {fixed:.4f}")
        cv[label]["mean_adaptive"] = round(float(np.mean([cv[label][h]["adaptive"] for h in TRAIN_SETS])), 6)
        cv[label]["mean_fixed"] = round(float(np.mean([cv[label][h]["fixed"] for h in TRAIN_SETS])), 6)
        print(f"cv {label:20s} mean adaptive {cv[label]['mean_adaptive']:.4f}  fixed {cv[label]['mean_fixed']:.4f}")
    chosen = max(variants, key=lambda v: cv[v]["mean_adaptive"])
    norm, sig = variants[chosen]
    command = shlex.join(["python", "benchmarks/hybrid.py", *sys.argv[1:]])
    info = {
        "command": command,
        "fitted_on": {spec: len(groups[spec][0]) for spec in TRAIN_SETS},
        "model_fingerprint": model_fingerprint(encoder),
        "variant": chosen,
        "variant_choice": "best leave-one-collection-out mean nDCG@10 on the three training sets",
        "bm25_stemmer": args.stemmer,  # AdaptiveParams.bm25_stemmer: the store checks it against its own
        "cv": cv,
        "commit": git_commit(),
        "date": started,
    }
    params = fit_adaptive(
        groups,
        normalization=norm,
        signals=sig,
        restarts=args.restarts,
        l2=args.l2,
        model=args.model,
        candidates=DEPTH,
        info=info,
        precomputed=curves[norm],
    )
    out = Path(args.params_out)
    params.save(out)
    print(json.dumps({k: v for k, v in params.to_dict().items() if k in ("bias", "coef", "normalization")}, indent=1))
    print(
        f"fitted on {sum(len(g[0]) for g in groups.values())} training queries; variant {chosen}; "
        f"train nDCG@10 adaptive {params.info['train_ndcg@10_adaptive']:.4f} vs best fixed "
        f"{params.info['train_ndcg@10_best_fixed']:.4f} (w={params.info['best_fixed_weight']:.2f}); wrote {out}"
    )
    record = {
        "benchmark": "hybrid-fit",
        "model": args.model,
        "params_file": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
        "params_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "normalization": norm,
        "variant": chosen,
        "stemmer": args.stemmer,
        "cv": cv,
        "train": {
            k: params.info[k] for k in ("train_ndcg@10_adaptive", "train_ndcg@10_best_fixed", "best_fixed_weight")
        },
        "fitted_on": info["fitted_on"],
        "seconds": round(time.perf_counter() - t_all, 1),
        "started": started,
        "command": command,
        "commit": git_commit(),
    }
    append_log(args, record)


def ndcg_curves_at(cands: Sequence[Candidates], rels: Sequence[Mapping[str, int]], p: AdaptiveParams) -> list[float]:
    """nDCG@10 of each query under the adaptive weight of ``p``."""
    from kl_retrievers.hybrid import ndcg_at_k

    config = FusionConfig("adaptive")
    out = []
    for c, rel in zip(cands, rels, strict=True):
        run, _ = fused_run(c, config, p)
        out.append(ndcg_at_k(list(run), rel, 10))
    return out


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


def measure_latency(prep: Prepared, n: int, n_text: int) -> dict[str, Any]:
    """Per-query time of the hybrid store and of its KL half alone, side by side, one query at a time."""
    store, q = prep.store, prep.q
    index = {qid: i for i, qid in enumerate(prep.ds.query_ids)}
    rows = [index[qid] for qid in prep.query_ids]
    texts = prep.ds.query_texts(prep.query_ids)
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False).tolist())
    for i in pick[:3]:  # warm-up
        store.kl.search(q[rows[i]], k=10)
        store.search(texts[i], k=10, query_gaussians=q[rows[i]])

    def side_by_side(picked: Sequence[int], text_in: bool) -> tuple[list[float], list[float]]:
        """Seconds per query of the dense store and the hybrid store, alternating which goes first."""
        dense: list[float] = []
        hybrid: list[float] = []
        for j, i in enumerate(picked):
            g = None if text_in else q[rows[i]]
            for side in ("dense", "hybrid") if j % 2 == 0 else ("hybrid", "dense"):
                t0 = time.perf_counter()
                if side == "dense":
                    store.kl.search(texts[i] if g is None else g, k=10)
                else:
                    store.search(texts[i], k=10, query_gaussians=g)
                (dense if side == "dense" else hybrid).append(time.perf_counter() - t0)
        return dense, hybrid

    dense_s, hybrid_s = side_by_side(pick, text_in=False)
    dense_t, hybrid_t = side_by_side(pick[:n_text], text_in=True)
    return {
        "queries_search": len(dense_s),
        "dense_search_ms": 1000 * float(np.mean(dense_s)),
        "hybrid_search_ms": 1000 * float(np.mean(hybrid_s)),
        "search_ratio": float(np.sum(hybrid_s) / np.sum(dense_s)),
        "queries_text": len(dense_t),
        "dense_text_ms": 1000 * float(np.mean(dense_t)),
        "hybrid_text_ms": 1000 * float(np.mean(hybrid_t)),
        "text_ratio": float(np.sum(hybrid_t) / np.sum(dense_t)),
        "dense_text_s_total": float(np.sum(dense_t)),
        "hybrid_text_s_total": float(np.sum(hybrid_t)),
        "dense_search_s_total": float(np.sum(dense_s)),
        "hybrid_search_s_total": float(np.sum(hybrid_s)),
    }


def cmd_eval(args: argparse.Namespace) -> None:
    from kl_retrievers.evaluation import model_fingerprint, paired_test

    started = dt.datetime.now().isoformat(timespec="seconds")
    t_all = time.perf_counter()
    params = AdaptiveParams.load(args.params)
    encoder = load_encoder(args.model, args.threads)
    if params.model and params.model != args.model:
        logger.warning("adaptive parameters fitted for %s, evaluated with %s", params.model, args.model)
    # the fixed convex weight, chosen on SciFact TRAIN
    sci_train = Prepared(encoder, load_split("scifact:train"), adaptive=params, stemmer=args.stemmer)
    fixed = best_fixed_convex(sci_train)
    print(
        f"best fixed convex on scifact:train: weight {fixed['weight']:.2f}, {fixed['normalization']} "
        f"(nDCG@10 {fixed['ndcg@10']:.4f})"
    )
    systems: dict[str, tuple[FusionConfig | None, AdaptiveParams | None]] = {
        "bm25": (None, None),
        "dense": (None, None),
        "rrf": (FusionConfig("rrf"), None),
        "convex": (FusionConfig("convex", weight=fixed["weight"], normalization=fixed["normalization"]), None),
        "adaptive": (FusionConfig("adaptive"), params),
    }
    rows: dict[str, Any] = {}
    header = f"{'collection':12s} {'n':>4s} {'BM25':>7s} {'dense':>7s} {'RRF':>7s} {'convex':>7s} {'adapt':>7s}"
    header += f" {'better':>6s} {'diff':>8s} {'p':>8s} {'p(rrf)':>8s} {'p(cvx)':>8s} {'w_mean':>6s}"
    lines = [header]
    n_latency = args.latency_queries if args.latency_queries is not None else (100 if args.quick else 1000)
    n_text = args.text_queries if args.text_queries is not None else (40 if args.quick else 200)
    for name in args.collections:
        ds = load_split(f"{name}:test")
        if name == "scifact":  # the same corpus: reuse the store built for the train queries
            prep = Prepared(encoder, ds, adaptive=params, store=sci_train.store)
        else:
            prep = Prepared(encoder, ds, adaptive=params, stemmer=args.stemmer)
        res = evaluate_systems(prep, systems)
        nd = {s: res[s]["aggregate"]["ndcg@10"] for s in systems}
        better = "bm25" if nd["bm25"] >= nd["dense"] else "dense"
        t_better = paired_test(res["adaptive"]["per_query"], res[better]["per_query"], "ndcg@10")
        t_rrf = paired_test(res["adaptive"]["per_query"], res["rrf"]["per_query"], "ndcg@10")
        t_cvx = paired_test(res["adaptive"]["per_query"], res["convex"]["per_query"], "ndcg@10")
        latency = measure_latency(prep, n_latency, n_text)
        rows[name] = {
            "queries": len(prep.query_ids),
            "documents": len(ds.doc_ids),
            **{s: {m: round(v, 6) for m, v in res[s]["aggregate"].items()} for s in systems},
            "better_single": better,
            "adaptive_minus_better": round(nd["adaptive"] - nd[better], 6),
            "p_adaptive_vs_better": t_better.p_value,
            "p_adaptive_vs_rrf": t_rrf.p_value,
            "p_adaptive_vs_convex": t_cvx.p_value,
            "test_method": t_better.method,
            "adaptive_dense_weight": {
                "mean": res["adaptive"].get("mean_dense_weight"),
                "quartiles": res["adaptive"].get("dense_weight_quartiles"),
            },
            "latency": latency,
        }
        lines.append(
            f"{SHORT.get(name, name):12s} {len(prep.query_ids):4d} {nd['bm25']:7.4f} {nd['dense']:7.4f} "
            f"{nd['rrf']:7.4f} {nd['convex']:7.4f} {nd['adaptive']:7.4f} {better:>6s} "
            f"{nd['adaptive'] - nd[better]:+8.4f} {t_better.p_value:8.2g} {t_rrf.p_value:8.2g} {t_cvx.p_value:8.2g} "
            f"{res['adaptive'].get('mean_dense_weight', float('nan')):6.3f}"
        )
        print(lines[-1], flush=True)
        print(
            f"  latency ({latency['queries_text']} text queries): dense {latency['dense_text_ms']:.2f} ms, hybrid "
            f"{latency['hybrid_text_ms']:.2f} ms (x{latency['text_ratio']:.3f}); search alone "
            f"({latency['queries_search']} queries): dense {latency['dense_search_ms']:.2f} ms, hybrid "
            f"{latency['hybrid_search_ms']:.2f} ms (x{latency['search_ratio']:.3f})",
            flush=True,
        )
    means = {s: float(np.mean([rows[c][s]["ndcg@10"] for c in rows])) for s in systems}
    gains = [rows[c]["adaptive_minus_better"] for c in rows]
    hybrid_gain = float(np.mean(gains))
    worst_drop = float(max(0.0, -min(gains)))
    text_ratio = sum(rows[c]["latency"]["hybrid_text_s_total"] for c in rows) / sum(
        rows[c]["latency"]["dense_text_s_total"] for c in rows
    )
    search_ratio = sum(rows[c]["latency"]["hybrid_search_s_total"] for c in rows) / sum(
        rows[c]["latency"]["dense_search_s_total"] for c in rows
    )
    lines.append(
        f"{'mean':12s} {'':4s} {means['bm25']:7.4f} {means['dense']:7.4f} {means['rrf']:7.4f} "
        f"{means['convex']:7.4f} {means['adaptive']:7.4f}"
    )
    print()
    print("\n".join(lines))
    targets = {
        "adaptive_not_significantly_below_better_single": {
            c: not (rows[c]["adaptive_minus_better"] < 0 and rows[c]["p_adaptive_vs_better"] < ALPHA) for c in rows
        },
        "adaptive_beats_rrf_on_mean": means["adaptive"] > means["rrf"],
        "adaptive_beats_fixed_convex_on_mean": means["adaptive"] > means["convex"],
        "scifact_test_at_least_0.72": rows["scifact"]["adaptive"]["ndcg@10"] >= 0.72 if "scifact" in rows else None,
        "latency_at_most_1.3x_dense": text_ratio <= 1.3,
        "latency_search_alone_at_most_1.3x_dense": search_ratio <= 1.3,
    }
    print(
        "\ntargets: "
        + "; ".join(f"{k}={v}" for k, v in targets.items() if not isinstance(v, dict))
        + "; not significantly below the better single: "
        + ", ".join(
            f"{SHORT.get(c, c)}={v}" for c, v in targets["adaptive_not_significantly_below_better_single"].items()
        )
    )
    print(f"search alone (query Gaussians given): hybrid / dense time = {search_ratio:.3f}")
    command = shlex.join(["python", "benchmarks/hybrid.py", *sys.argv[1:]])
    record = {
        "benchmark": "hybrid",
        "model": args.model,
        "model_fingerprint": model_fingerprint(encoder),
        "split": "test",
        "quick": bool(args.quick),
        "adaptive_params": {
            "file": str(Path(args.params).resolve().relative_to(ROOT))
            if Path(args.params).resolve().is_relative_to(ROOT)
            else str(args.params),
            "sha256": hashlib.sha256(Path(args.params).read_bytes()).hexdigest(),
            "normalization": params.normalization,
            "signals": list(params.signals),
        },
        "fixed_convex_scifact_train": {k: v for k, v in fixed.items() if k != "ndcg@10_by_weight"},
        "rrf_k": 60,
        "candidates": DEPTH,
        "stemmer": args.stemmer,
        "collections": rows,
        "mean_ndcg@10": {s: round(v, 6) for s, v in means.items()},
        "summary": {
            "hybrid_gain": round(hybrid_gain, 6),
            "worst_drop": round(worst_drop, 6),
            "latency_ratio": round(text_ratio, 4),
            "latency_ratio_search_alone": round(search_ratio, 4),
        },
        "targets": targets,
        "seconds": round(time.perf_counter() - t_all, 1),
        "started": started,
        "command": command,
        "commit": git_commit(),
    }
    append_log(args, record)
    print(f"hybrid_gain={hybrid_gain:.4f} worst_drop={worst_drop:.4f} latency_ratio={text_ratio:.3f}")


def append_log(args: argparse.Namespace, record: Mapping[str, Any]) -> None:
    if args.no_log:
        return
    path = Path(args.log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=False) + "\n")
    logger.info("logged to %s", path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fit", action="store_true", help="fit the adaptive weight on the training splits and write it")
    p.add_argument("--quick", action="store_true", help="time fewer queries (quality is always on every test query)")
    p.add_argument("--model", default=MODEL, help=f"bundled Gaussian model (default {MODEL})")
    p.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=COLLECTIONS)
    p.add_argument(
        "--params",
        default=None,
        help="adaptive parameters to evaluate (default: the file a KLHybridStore of --model and --stemmer reads: "
        "the model folder's hybrid_adaptive.json, with --stemmer none its hybrid_adaptive.unstemmed.json first, "
        "else the default model's kl_retrievers/data/hybrid_adaptive.json, or with --stemmer none "
        "hybrid_adaptive.unstemmed.json beside it; logged runs without --params from before this default read "
        "the default model's file, whatever --model was)",
    )
    p.add_argument(
        "--params-out",
        default=None,
        help="where --fit writes them (default: the file a KLHybridStore of --model and --stemmer reads: "
        "kl_retrievers/data/hybrid_adaptive.json for the default model, hybrid_adaptive.json in another model's "
        "folder; with --stemmer none, hybrid_adaptive.unstemmed.json there; another stemmer or a hub model needs "
        "--params-out)",
    )
    p.add_argument(
        "--stemmer",
        type=lambda v: None if v.strip().lower() == "none" else v,
        default=DEFAULT_STEMMER,
        help=f"PyStemmer language of the BM25 half, or none (KLHybridStore's stemmer; default {DEFAULT_STEMMER}; "
        "log lines without a stemmer, before stop 42, were not stemmed)",
    )
    p.add_argument("--restarts", type=int, default=8, help="optimiser starts of --fit")
    p.add_argument("--l2", type=float, default=1e-3, help="penalty on the coefficients of --fit")
    p.add_argument("--latency-queries", type=int, default=None, help="queries timed per collection, search alone")
    p.add_argument("--text-queries", type=int, default=None, help="queries timed per collection, text in")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the encoder")
    p.add_argument("--log", default=str(LOG), help="JSON lines log")
    p.add_argument("--no-log", action="store_true", help="do not append to the log")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fit and args.params_out is None:
        args.params_out = default_params_out(args.model, args.stemmer)
        if args.params_out is None:
            parser.error(
                f"--fit --model {args.model} --stemmer {args.stemmer} needs --params-out: by default the parameters "
                f"go where a store reads them, a bundled model's or a local model folder, for --stemmer "
                f"{DEFAULT_STEMMER} or none"
            )
    if not args.fit and args.params is None:
        args.params = str(default_params(args.model, args.stemmer))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    if args.fit:
        cmd_fit(args)
    else:
        cmd_eval(args)


if __name__ == "__main__":
    main()
