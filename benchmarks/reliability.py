"""Reliability probe: drive kl-retrievers as a hostile user would and count what goes wrong.

    python benchmarks/reliability.py --quick          # under two minutes
    python benchmarks/reliability.py                  # a few minutes: the figures in docs/reliability.md
    python benchmarks/reliability.py --json out.json  # also write every count (and each failure) as JSON

Six categories, each a list of probes:

* bad API inputs: wrong types, out-of-range and extreme-but-finite values for KLStore (constructor,
  add, search, get, delete, save, load), Gaussians and GaussianEncoder;
* damaged store files: saved stores (flat, HNSW, IVF-PQ) with files deleted, truncated, flipped or
  extended, config.json fields removed / retyped / set to absurd values, and arrays rewritten with
  invalid values *with their checksums updated* (so only validation can catch them);
* kill -9 during saves: a child process saves a store in a loop and is killed at a random moment;
* concurrency: searches against adds / upserts / deletes / saves / rebuilds on every index type,
  and callable filters that read or modify the store during a search;
* CLI calls: every subcommand with missing files, malformed input, bad flags, damaged stores and
  unwritable outputs (in-process, plus two real subprocesses);
* sharded encodings: damaged shard folders and manifests, then reading and resuming them.

Outcomes. A probe passes when it either gives the right result or is refused with a package
error: an exception of an expected type (ValueError incl. StoreFormatError, TypeError, KeyError,
RuntimeError) raised by kl_retrievers' own code with a message, or an OSError naming a path.
Anything else is counted:

* traceback: any other exception (raised inside numpy, FAISS, torch, json, ... or of another
  type), or, for the CLI, an exception escaping ``main``, an "internal error", a "Traceback" or
  more than one error line on stderr;
* silent wrong result: accepted, but the result is wrong (a coerced id, a missing hit, a wrong
  score, a damaged store that loads and ranks differently, a bad CLI call that exits 0);
* hang: a probe that did not finish within its timeout (it runs on a daemon thread);
* data lost: after a kill -9 the store at the path loads as neither the last confirmed save nor
  the one in progress; temporary folders that survive the next save are reported beside it.

The exit status is 1 when any of tracebacks, silent wrong results, hangs or data lost is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kl_retrievers  # noqa: E402
from kl_retrievers import Gaussians, KLStore  # noqa: E402

PACKAGE = str(Path(kl_retrievers.__file__).resolve().parent)
EXPECTED = (ValueError, TypeError, KeyError, RuntimeError)
K = 8


# ================================================================== bookkeeping
@dataclass
class Tally:
    """Counts for one category."""

    category: str
    inputs: int = 0
    faults: int = 0
    tracebacks: int = 0
    silent_wrong: int = 0
    hangs: int = 0
    data_lost: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, kind: str, name: str, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.failures.append(f"[{kind}] {name}: {detail[:300]}")

    @property
    def bad(self) -> int:
        return self.tracebacks + self.silent_wrong + self.hangs + self.data_lost


def _innermost_file(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return "" if last is None else str(Path(last.tb_frame.f_code.co_filename).resolve())


def is_package_error(exc: BaseException) -> bool:
    """An error the package meant to raise: an expected type raised in kl_retrievers' code, with a message."""
    if isinstance(exc, OSError):
        return bool(str(exc).strip())
    return isinstance(exc, EXPECTED) and _innermost_file(exc).startswith(PACKAGE) and bool(str(exc).strip())


def run_timed(fn: Callable[[], Any], timeout: float) -> tuple[str, Any]:
    """``("ok", value)``, ``("raised", exception)`` or ``("hang", None)``; ``fn`` runs on a daemon thread."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "hang", None
    if "exc" in box:
        return "raised", box["exc"]
    return "ok", box.get("value")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc} (raised in {_innermost_file(exc).replace(str(REPO) + '/', '')})"


def probe(
    tally: Tally,
    name: str,
    fn: Callable[[], Any],
    *,
    check: Callable[[Any], bool] | None = None,
    refuse: bool = False,
    timeout: float = 60.0,
    fault: bool = False,
) -> str:
    """Run one probe: a package error always passes; a hang or any other exception is counted.

    ``refuse``: only a package error is right (an accepted call is a silent wrong result).
    ``check``: when the call returns, its value must pass this (else silent wrong).

    Returns:
        ``"returned"``, ``"refused"`` (a package error), ``"traceback"`` or ``"hang"``.
    """
    tally.inputs += 1
    tally.faults += int(fault)
    status, value = run_timed(fn, timeout)
    if status == "hang":
        tally.fail("hangs", name, f"no answer within {timeout:.0f} s")
        return "hang"
    if status == "raised":
        if not is_package_error(value):
            tally.fail("tracebacks", name, _describe(value))
            return "traceback"
        return "refused"
    if refuse:
        tally.fail("silent_wrong", name, f"accepted; returned {value!r:.200}")
    elif check is not None:
        try:
            ok = bool(check(value))
        except Exception as exc:  # a check that cannot even run on the value: the value is wrong
            ok = False
            value = f"{value!r:.150} ({type(exc).__name__} in the check: {exc})"
        if not ok:
            tally.fail("silent_wrong", name, f"wrong result: {value!r:.200}")
    return "returned"


# ================================================================== shared helpers
Damage = tuple[str, Callable[[Path], None]]


def damaged_copies(source: Path, folder: Path, damages: list[Damage]) -> Iterator[tuple[str, Path]]:
    """Per damage, ``(name, folder)``: ``folder`` freshly copied from ``source``, then damaged."""
    for name, damage in damages:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        damage(folder)
        yield name, folder


def gaussians(n: int, k: int = K, seed: int = 0, scale: float = 1.0) -> Gaussians:
    rng = np.random.default_rng(seed)
    mean = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    var = np.exp(rng.normal(scale=0.5, size=(n, k))).astype(np.float32)
    return Gaussians(mean, var)


def exact_scores(q: Gaussians, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    qm, qv = np.asarray(q.mean, np.float64)[0], np.asarray(q.var, np.float64)[0]
    m, v = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    return -0.5 * (np.log(v) - np.log(qv) - 1.0 + qv / v + (qm - m) ** 2 / v).sum(axis=1)


def small_store(n: int = 20, **kwargs: Any) -> KLStore:
    store = KLStore(**kwargs)
    store.add(
        [f"text {i}" for i in range(n)],
        gaussians=gaussians(n),
        ids=[f"d{i}" for i in range(n)],
        metadatas=[{"g": i % 3} for i in range(n)],
    )
    return store


def results_are_exact(store: KLStore, q: Gaussians, hits: list[Any], k: int) -> bool:
    """Hits = the exact top-k of the whole store (scores within 1e-6 relative)."""
    ids = store.ids
    g = store.get_gaussians(ids)
    scores = exact_scores(q, g.mean, g.var)
    best = np.sort(scores)[::-1][: min(k, len(ids))]
    got = np.array([h.score for h in hits])
    return len(hits) == len(best) and bool(np.all(np.isfinite(got))) and np.allclose(got, best, rtol=1e-6)


def tiny_encoder(seed: int = 0) -> Any:
    """A 2-layer BERT (hidden 32, 128 positions) with random weights: no download."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from kl_retrievers import GaussianEncoder, GaussianEncoderConfig

    words = "the a of and to in is it cat dog sat mat hello world tea green black sun moon rock water".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    config = GaussianEncoderConfig(dim=K, max_length=64, query_max_length=32)
    enc = GaussianEncoder(BertModel(cfg, add_pooling_layer=False), tokenizer, config, name_or_path="tiny-random")
    torch.nn.init.normal_(enc.mean_head.weight, std=0.3)
    torch.nn.init.normal_(enc.var_head.weight, std=0.3)
    return enc.eval()


# ================================================================== 1. bad API inputs
def api_inputs(tmp: Path, quick: bool, rng: random.Random) -> Tally:
    t = Tally("bad API inputs")
    nan, inf = math.nan, math.inf
    # ---- constructor
    positive = ["hnsw_m", "ef_search", "ef_construction", "nlist", "nprobe", "pq_m", "pq_nbits"]
    positive += ["rescore_pool", "rescore_factor", "batch_size"]
    for name in positive:
        for bad in (0, -1, 2.5, "8", None, True):
            probe(t, f"KLStore({name}={bad!r})", lambda n=name, b=bad: KLStore(**{n: b}), refuse=True)
    for name, bads in {
        "exact_threshold": (-1, 2.5, "5", None, nan),
        "seed": (-1, 1.5, "0", None),
        "norm_headroom": (0.5, -1.0, nan, inf, "1.1", None),
        "compact_threshold": (nan, -0.1, 1.5, inf, "0.3", None),
        "index_type": ("FLAT", "", None, 3, "ivfpq"),
        "dim": (0, -3, 2.5, "4", True),
    }.items():
        for bad in bads:
            probe(t, f"KLStore({name}={bad!r})", lambda n=name, b=bad: KLStore(**{n: b}), refuse=True)
    for kwargs in (
        {"index_type": "hnsw", "compression": "pq4"},
        {"index_type": "hnsw", "compression": ""},
        {"index_type": "flat", "compression": "pq"},
        {"index_type": "hnsw", "refine": "sq8"},
        {"index_type": "ivf", "compression": "pq", "refine": "pq"},
    ):
        probe(t, f"KLStore(**{kwargs})", lambda kw=kwargs: KLStore(**kw), refuse=True)

    # ---- add: every refusal must leave the store as it was
    def refused_add(name: str, **kwargs: Any) -> None:
        store = small_store()
        outcome = probe(t, name, lambda: store.add(**kwargs), refuse=True)
        changed = len(store) != 20 or sorted(store.ids) != sorted(f"d{i}" for i in range(20))
        if outcome == "refused" and changed:
            t.fail("silent_wrong", name, f"refused, but the store changed: {len(store)} documents")

    two = gaussians(2, seed=7)
    for ids in ([None, "b"], ["a", 1], b"ab", [b"a", b"b"], {"a": 1, "b": 2}, "ab", ["a", "a"], ["a"], [1.5, 2.5]):
        refused_add(f"add(ids={ids!r})", gaussians=two, ids=ids)
    for texts in ("ab", [5, 6], ["a"], [b"a", b"b"]):
        refused_add(f"add(texts={texts!r})", texts=texts, gaussians=two)
    refused_add("add(texts=[None], no gaussians)", texts=[None])
    refused_add("add(no texts, no gaussians)")
    for metas in (["x", "y"], [{"x": nan}, {}], [{"x": {1, 2}}, {}], [{(1, 2): "x"}, {}], [{}], {"a": 1}):
        refused_add(f"add(metadatas={metas!r:.40})", gaussians=two, metadatas=metas)
    for what, mean, var in (
        ("NaN mean", np.full((2, K), nan), np.ones((2, K))),
        ("inf mean", np.full((2, K), inf), np.ones((2, K))),
        ("zero variance", np.zeros((2, K)), np.zeros((2, K))),
        ("negative variance", np.zeros((2, K)), -np.ones((2, K))),
        ("inf variance", np.zeros((2, K)), np.full((2, K), inf)),
        ("NaN variance", np.zeros((2, K)), np.full((2, K), nan)),
        ("wrong dimension", np.zeros((2, K + 1)), np.ones((2, K + 1))),
    ):

        def bad_gaussians(m: np.ndarray = mean, v: np.ndarray = var) -> Any:
            return small_store().add(gaussians=Gaussians(m, v, validate=False), ids=["x", "y"])

        probe(t, f"add(gaussians with {what})", bad_gaussians, refuse=True)

    # extreme but finite values: refused, or stored and ranked exactly
    normal = gaussians(1, seed=3)
    for what, mean_value, var_value in (
        ("mean 1e20", 1e20, 1.0),
        ("mean -1e20", -1e20, 1.0),
        ("mean 1e39 (beyond float32)", 1e39, 1.0),
        ("variance 1e-45 (float32 underflow)", 0.0, 1e-45),
        ("variance 1e39 (beyond float32)", 0.0, 1e39),
        ("variance 1e-30", 0.0, 1e-30),
        ("mean 1e6", 1e6, 1.0),
    ):

        def extreme(m: float = mean_value, v: float = var_value) -> Any:
            store = KLStore()
            store.add(gaussians=normal, ids=["normal"])
            store.add(gaussians=Gaussians(np.full((1, K), m), np.full((1, K), v)), ids=["extreme"])
            return store, store.search(gaussians(1, seed=4), k=2)

        probe(t, f"add(one document with {what}) then search(k=2)", extreme, check=lambda r: len(r[1]) == 2)
    accepted = small_store()
    probe(
        t,
        "add(texts=['x', None] with gaussians)",
        lambda: accepted.add(["x", None], gaussians=two, ids=["x", "y"]),
        check=lambda r: r == ["x", "y"] and accepted.get_by_ids("y")[0].text is None,
    )
    probe(
        t,
        "add(metadatas=[{1: 'a'}])",
        lambda: small_store().add(gaussians=gaussians(1), ids=["m"], metadatas=[{1: "a"}]),
        check=lambda r: r == ["m"],
    )

    # ---- search
    store = small_store()
    query = gaussians(1, seed=11)
    for k in (0, -1, 2.5, True, "3", None, np.int64(0)):
        probe(t, f"search(k={k!r})", lambda k=k: store.search(query, k=k), refuse=True)
    probe(
        t,
        "search(k=10**9)",
        lambda: store.search(query, k=10**9),
        check=lambda h: results_are_exact(store, query, h, 20),
    )
    probe(t, "search(k=np.int64(3))", lambda: store.search(query, k=np.int64(3)), check=lambda h: len(h) == 3)
    for what, q in (
        ("NaN query mean", Gaussians(np.full((1, K), nan), np.ones((1, K)), validate=False)),
        ("inf query variance", Gaussians(np.zeros((1, K)), np.full((1, K), inf), validate=False)),
        ("zero query variance", Gaussians(np.zeros((1, K)), np.zeros((1, K)), validate=False)),
        ("query of the wrong dimension", gaussians(1, k=K + 2)),
        ("two queries to search()", gaussians(2)),
        ("a text query without an encoder", "hello"),
        ("an int query", 5),
        ("a None query", None),
    ):
        probe(t, f"search({what})", lambda q=q: store.search(q, k=3), refuse=True)
    for what, q in (
        ("query mean 1e200", Gaussians(np.full((1, K), 1e200), np.ones((1, K)))),
        ("query mean 1e20", Gaussians(np.full((1, K), 1e20), np.ones((1, K)))),
        ("query variance 1e-300", Gaussians(np.zeros((1, K)), np.full((1, K), 1e-300))),
        ("query variance 1e300", Gaussians(np.zeros((1, K)), np.full((1, K), 1e300))),
    ):
        probe(
            t,
            f"search({what}, k=3)",
            lambda q=q: store.search(q, k=3),
            check=lambda h, q=q: results_are_exact(store, q, h, 3),
        )
    for flt in ({"$foo": 1}, {"g": {"$bogus": 1}}, [1], 5, "g", {"g": {"$in": 3}}):
        probe(t, f"search(filter={flt!r})", lambda f=flt: store.search(query, k=3, filter=f), refuse=True)
    probe(
        t,
        "search(filter reading the store)",
        lambda: store.search(query, k=3, filter=lambda m: len(store.ids) > 0),
        check=lambda h: len(h) == 3,
    )
    victim = small_store()
    probe(
        t,
        "search(filter deleting from the store)",
        lambda: victim.search(query, k=3, filter=lambda m: bool(victim.delete(["d1"]))),
        refuse=True,
        timeout=20,
    )
    probe(
        t,
        "search_batch(no queries)",
        lambda: store.search_batch(Gaussians(np.zeros((0, K)), np.ones((0, K)))),
        check=lambda r: r == [],
    )
    probe(t, "search on an empty store", lambda: KLStore().search(query, k=3), check=lambda r: r == [])

    # ---- get / delete: a bare string is one id; anything but str refused
    def fresh() -> KLStore:
        return small_store(5)

    probe(t, "get_gaussians('d1')", lambda: fresh().get_gaussians("d1"), check=lambda g: len(g) == 1)
    probe(t, "get_by_ids('d1')", lambda: fresh().get_by_ids("d1"), check=lambda d: [x.id for x in d] == ["d1"])
    probe(t, "delete('d1')", lambda: fresh().delete("d1"), check=lambda r: r.deleted == ["d1"])
    probe(t, "delete([])", lambda: fresh().delete([]), check=lambda r: r.deleted == [] and r.missing == [])
    probe(t, "get_gaussians(['d1', 'nope'])", lambda: fresh().get_gaussians(["d1", "nope"]), refuse=True)
    for method in ("get_gaussians", "get_by_ids", "delete"):
        for bad in (b"d1", [None], 5, [1], None):
            probe(t, f"{method}({bad!r})", lambda m=method, b=bad: getattr(fresh(), m)(b), refuse=True)

    # ---- Gaussians
    for what, args in (
        ("shape mismatch", (np.zeros((2, 3)), np.ones((2, 4)))),
        ("3-D arrays", (np.zeros((1, 2, 3)), np.ones((1, 2, 3)))),
        ("NaN mean", (np.full((1, 3), nan), np.ones((1, 3)))),
        ("zero variance", (np.zeros((1, 3)), np.zeros((1, 3)))),
        ("negative variance", (np.zeros((1, 3)), -np.ones((1, 3)))),
        ("strings", (np.array([["a"]]), np.array([["b"]]))),
    ):
        probe(t, f"Gaussians({what})", lambda a=args: Gaussians(*a), refuse=True)

    # ---- save / load paths
    (tmp / "a-file").write_text("keep me")
    (tmp / "not-a-store").mkdir(exist_ok=True)
    (tmp / "not-a-store" / "precious.txt").write_text("keep me")
    probe(t, "save(onto a file)", lambda: small_store(3).save(tmp / "a-file"), refuse=True)
    probe(t, "save(into a non-store folder)", lambda: small_store(3).save(tmp / "not-a-store"), refuse=True)
    probe(t, "save(under a file)", lambda: small_store(3).save(tmp / "a-file" / "s"), refuse=True)
    probe(t, "save(to /proc)", lambda: small_store(3).save("/proc/kl-retrievers-probe/s"), refuse=True)
    t.notes["files kept"] = (tmp / "a-file").read_text() == "keep me" and (
        tmp / "not-a-store" / "precious.txt"
    ).is_file()
    if not t.notes["files kept"]:
        t.fail("data_lost", "save onto a file or folder", "an existing file or folder was overwritten")
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "cfg-only").mkdir(exist_ok=True)
    (tmp / "cfg-only" / "config.json").write_text("{}")
    for what, path in (
        ("a missing path", tmp / "nope"),
        ("a file", tmp / "a-file"),
        ("an empty folder", tmp / "empty"),
        ("a folder with an empty config", tmp / "cfg-only"),
    ):
        probe(t, f"KLStore.load({what})", lambda p=path: KLStore.load(p), refuse=True)

    # ---- encoder
    enc = tiny_encoder()
    for bad in (0, 2, -5, 2.5, "64", True):
        probe(
            t,
            f"encode_documents(max_length={bad!r})",
            lambda b=bad: enc.encode_documents(["hi"], max_length=b),
            refuse=True,
        )
    for bad in (0, -1, 2.5):
        probe(
            t,
            f"encode_documents(batch_size={bad!r})",
            lambda b=bad: enc.encode_documents(["hi"], batch_size=b),
            refuse=True,
        )
    for bad in (None, [None], 5, [b"x"]):
        probe(t, f"encode_documents({bad!r})", lambda b=bad: enc.encode_documents(b), refuse=True)
    long_text = ["the cat sat on the mat " * 100]
    probe(
        t,
        "encode_documents(max_length=10000, beyond 128 positions)",
        lambda: enc.encode_documents(long_text, max_length=10_000),
        check=lambda g: np.allclose(g.mean, enc.encode_documents(long_text, max_length=128).mean, rtol=1e-5),
    )
    probe(t, "encode_queries('one string')", lambda: enc.encode_queries("hello world"), check=lambda g: len(g) == 1)
    probe(t, "encode_documents([''])", lambda: enc.encode_documents([""]), check=lambda g: len(g) == 1)
    return t


# ================================================================== 2. damaged store files
FILES = ("mean.npy", "var.npy", "documents.jsonl", "index.faiss", "config.json")
STORE_TYPES: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"index_type": "hnsw", "hnsw_m": 8, "rescore_pool": 8, "rescore_factor": 1},
    "ivf-pq": {"index_type": "ivf", "nlist": 4, "compression": "pq", "pq_m": 6, "pq_nbits": 4, "rescore_pool": 8},
}


def _rechecksum(folder: Path) -> None:
    from kl_retrievers.hub import sha256_file

    cfg = json.loads((folder / "config.json").read_text())
    for name, info in cfg["files"].items():
        p = folder / name
        if p.is_file():
            info["bytes"], info["sha256"] = p.stat().st_size, sha256_file(p)
    (folder / "config.json").write_text(json.dumps(cfg))


def _file_damages() -> list[tuple[str, Callable[[Path], None]]]:
    out: list[tuple[str, Callable[[Path], None]]] = []
    for name in FILES:

        def delete(p: Path, n: str = name) -> None:
            (p / n).unlink()

        def empty(p: Path, n: str = name) -> None:
            (p / n).write_bytes(b"")

        def half(p: Path, n: str = name) -> None:
            data = (p / n).read_bytes()
            (p / n).write_bytes(data[: len(data) // 2])

        def drop_last(p: Path, n: str = name) -> None:
            (p / n).write_bytes((p / n).read_bytes()[:-1])

        def flip(p: Path, n: str = name) -> None:
            data = bytearray((p / n).read_bytes())
            data[len(data) // 2] ^= 0xFF
            (p / n).write_bytes(bytes(data))

        def append(p: Path, n: str = name) -> None:
            with open(p / n, "ab") as f:
                f.write(b"\x00garbage\n")

        out += [(f"{name}: {f.__name__}", f) for f in (delete, empty, half, drop_last, flip, append)]
    return out


def _config_damages(config: dict[str, Any]) -> list[tuple[str, Callable[[Path], None]]]:
    out: list[tuple[str, Callable[[Path], None]]] = []

    def edit(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
        def apply(p: Path) -> None:
            cfg = json.loads((p / "config.json").read_text())
            new = change(cfg)
            (p / "config.json").write_text(json.dumps(cfg if new is None else new))

        return apply

    absurd: dict[str, Any] = {"None": None, "'x'": "x", "[]": [], "10**9": 10**9, "-1": -1}
    for key in sorted(config):
        out.append((f"config: del {key}", edit(lambda c, k=key: c.pop(k) and None)))
        for label, value in absurd.items():
            out.append((f"config: {key} = {label}", edit(lambda c, k=key, v=value: c.update({k: v}))))
    for key in sorted(config["index_params"]):
        out.append((f"config: index_params.{key} = 'x'", edit(lambda c, k=key: c["index_params"].update({k: "x"}))))
    out += [
        ("config: a JSON list", edit(lambda c: [c])),
        ("config: a JSON string", edit(lambda c: "config")),
        ("config: newer format_version", edit(lambda c: c.update(format_version=99))),
        ("config: unknown index_params key", edit(lambda c: c["index_params"].update(future_option=1))),
        ("config: files entry a string", edit(lambda c: c["files"].update({"mean.npy": "x"}))),
        ("config: files entry without sha256", edit(lambda c: c["files"]["var.npy"].pop("sha256") and None)),
        ("config: encoder a string", edit(lambda c: c.update(encoder="tiny"))),
        ("config: norm_bound 0", edit(lambda c: c.update(norm_bound=0.0))),
        ("config: norm_bound 1e-3", edit(lambda c: c.update(norm_bound=1e-3))),
        ("config: norm_bound 1e308", edit(lambda c: c.update(norm_bound=1e308))),
        ("config: index_offset 1e6", edit(lambda c: c.update(index_offset=1e6))),
        ("config: dim + 1", edit(lambda c: c.update(dim=(c.get("dim") or 0) + 1))),
        ("config: count - 1", edit(lambda c: c.update(count=c["count"] - 1))),
    ]
    return out


def _content_damages() -> list[tuple[str, Callable[[Path], None]]]:
    """Invalid values written with the checksums updated: only validation can catch them."""

    def array(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
        def apply(p: Path) -> None:
            a = np.load(p / name)
            np.save(p / name, change(a.copy()), allow_pickle=False)
            _rechecksum(p)

        return apply

    def set_rows(value: float) -> Callable[[np.ndarray], np.ndarray]:
        def change(a: np.ndarray) -> np.ndarray:
            a[3] = value
            return a

        return change

    def docs(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Callable[[Path], None]:
        def apply(p: Path) -> None:
            rows = [json.loads(line) for line in (p / "documents.jsonl").read_text().splitlines()]
            (p / "documents.jsonl").write_text("".join(json.dumps(r) + "\n" for r in change(rows)))
            _rechecksum(p)

        return apply

    def dup(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[1]["id"] = rows[0]["id"]
        return rows

    def no_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[2].pop("id")
        return rows

    def int_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[2]["id"] = 7
        return rows

    def meta_list(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[2]["metadata"] = [1, 2]
        return rows

    def text_int(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows[2]["text"] = 5
        return rows

    return [
        ("var.npy: a row of 0 (rechecksummed)", array("var.npy", set_rows(0.0))),
        ("var.npy: a row of -1 (rechecksummed)", array("var.npy", set_rows(-1.0))),
        ("var.npy: a row of inf (rechecksummed)", array("var.npy", set_rows(math.inf))),
        ("var.npy: a row of NaN (rechecksummed)", array("var.npy", set_rows(math.nan))),
        ("mean.npy: a row of NaN (rechecksummed)", array("mean.npy", set_rows(math.nan))),
        ("mean.npy: a row of inf (rechecksummed)", array("mean.npy", set_rows(math.inf))),
        ("mean.npy: float64 (rechecksummed)", array("mean.npy", lambda a: a.astype(np.float64))),
        ("var.npy: one column fewer (rechecksummed)", array("var.npy", lambda a: a[:, :-1].copy())),
        ("documents.jsonl: duplicate id (rechecksummed)", docs(dup)),
        ("documents.jsonl: a row without id (rechecksummed)", docs(no_id)),
        ("documents.jsonl: an integer id (rechecksummed)", docs(int_id)),
        ("documents.jsonl: metadata a list (rechecksummed)", docs(meta_list)),
        ("documents.jsonl: text a number (rechecksummed)", docs(text_int)),
        ("documents.jsonl: one row fewer (rechecksummed)", docs(lambda rows: rows[:-1])),
    ]


def damaged_stores(tmp: Path, quick: bool, rng: random.Random) -> Tally:
    t = Tally("damaged store files")
    queries = gaussians(6, seed=99)
    for type_name, kwargs in STORE_TYPES.items():
        if quick and type_name != "hnsw":
            continue
        source = tmp / f"store-{type_name}"
        store = KLStore(**kwargs)
        store.add(
            [f"doc {i}" for i in range(300)],
            gaussians=gaussians(300),
            ids=[f"d{i}" for i in range(300)],
            metadatas=[{"g": i % 3} for i in range(300)],
        )
        store.save(source)
        baseline = [[(h.id, round(h.score, 6)) for h in hits] for hits in store.search_batch(queries, k=5)]
        config = json.loads((source / "config.json").read_text())
        damages = _file_damages() + _config_damages(config) + _content_damages()
        if quick:
            damages = damages[::3]
        if not (source / "index.faiss").exists():  # a flat store: nothing to damage there
            damages = [(name, damage) for name, damage in damages if not name.startswith("index.faiss")]
        for name, folder in damaged_copies(source, tmp / "damaged", damages):

            def load_and_search(f: Path = folder) -> Any:
                with contextlib.redirect_stderr(io.StringIO()):  # FAISS may print to stderr
                    loaded = KLStore.load(f)
                    return [[(h.id, round(h.score, 6)) for h in hits] for hits in loaded.search_batch(queries, k=5)]

            probe(t, f"{type_name} / {name}", load_and_search, check=lambda r, b=baseline: r == b, fault=True)
    return t


# ================================================================== 3. kill -9 during saves
CHILD = r"""
import sys, numpy as np
from kl_retrievers.index import KLStore
from kl_retrievers.gaussian import Gaussians
path, kind, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
kw = {} if kind == "flat" else {"index_type": "hnsw", "hnsw_m": 8}
s = KLStore(**kw)
mean = rng.normal(size=(n, 32)).astype("float32")
var = np.exp(rng.normal(0, .5, (n, 32))).astype("float32")
s.add(gaussians=Gaussians(mean, var), ids=[f"d{i}" for i in range(n)])
v = start
print("ready", flush=True)
while True:
    v += 1
    s.add(gaussians=Gaussians(np.zeros((1, 32)), np.ones((1, 32))), ids=["version"], metadatas=[{"v": v}])
    s.save(path)
    print(v, flush=True)
"""


def _version(path: Path) -> int:
    loaded = KLStore.load(path)
    return int(loaded.get_by_ids("version")[0].metadata["v"])


def kill_during_saves(tmp: Path, quick: bool, rng: random.Random) -> Tally:
    t = Tally("kill -9 during saves")
    kills = 4 if quick else 26
    # documents per store: a save then takes 30-100 ms, so a random kill often lands inside one
    sizes = {"flat": 12000 if not quick else 6000, "hnsw": 4000 if not quick else 2000}
    leaked = interrupted = 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last_saved = {"flat": 0, "hnsw": 0}
    for i in range(kills):
        kind = ("flat", "hnsw")[i % 2]
        path = tmp / f"killed-{kind}"
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), kind, str(sizes[kind]), str(last_saved[kind])],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda p=proc, out=lines: out.extend(iter(p.stdout.readline, "")), daemon=True)
        reader.start()

        def wait_saves(count: int, out: list[str] = lines) -> float:
            """Wait until ``count`` saves are confirmed; the time it took."""
            t0, deadline = time.monotonic(), time.monotonic() + 120
            while sum(x.strip().isdigit() for x in out) < count and time.monotonic() < deadline:
                time.sleep(0.002)
            return time.monotonic() - t0

        wait_saves(1)
        cycle = wait_saves(3) / 2  # one add + save
        wait_saves(4)
        time.sleep(rng.uniform(0.0, cycle))  # a random moment of the next add + save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        confirmed = max([int(x) for x in lines if x.strip().isdigit()], default=last_saved[kind])
        t.inputs += 1
        t.faults += 1
        siblings = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
        interrupted += any(".tmp" in name or ".old" in name for name in siblings) or not path.exists()
        status, value = run_timed(lambda p=path: _version(p), 60)
        if status != "ok" or value not in (confirmed, confirmed + 1):
            detail = _describe(value) if status == "raised" else f"loaded version {value}, last confirmed {confirmed}"
            t.fail("data_lost", f"kill {i + 1} ({kind})", detail)
            continue
        last_saved[kind] = value
        # the next successful save must leave no temporary folder behind
        KLStore.load(path).save(path)
        leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
        leaked += len([p for p in leftovers if ".tmp" in p or ".old" in p])
    t.notes["kills that interrupted a save (temporary folder found)"] = interrupted
    t.notes["temporary folders left after the next save"] = leaked
    if leaked:
        t.fail("data_lost", "temporary folders", f"{leaked} .tmp/.old folders survived the next save")
    return t


# ================================================================== 4. concurrency
def _doc(doc_id: str) -> tuple[np.ndarray, np.ndarray]:
    seed = int(doc_id[1:])
    g = gaussians(1, seed=10_000 + seed)
    return g.mean, g.var


def _concurrent(t: Tally, name: str, store: KLStore, seconds: float, *, saves: Path | None = None) -> None:
    stop = threading.Event()
    added: set[str] = set()
    counts = {"searches": 0, "writes": 0}
    lock = threading.Lock()
    problems: list[tuple[str, str]] = []

    def add_some(rng: random.Random, count: int) -> None:
        ids = [f"d{rng.randrange(3000)}" for _ in range(count)]
        ids = list(dict.fromkeys(ids))
        mean = np.concatenate([_doc(i)[0] for i in ids])
        var = np.concatenate([_doc(i)[1] for i in ids])
        with lock:
            added.update(ids)
        store.add(gaussians=Gaussians(mean, var), ids=ids, metadatas=[{"g": int(i[1:]) % 3} for i in ids])

    add_some(random.Random(0), 400)

    def writer() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            op = rng.random()
            if op < 0.5:
                add_some(rng, rng.randint(1, 40))
            elif op < 0.8:
                live = store.ids
                store.delete(rng.sample(live, min(len(live), rng.randint(1, 20))))
            elif op < 0.9 and store.index_type != "flat":
                store.rebuild()
            elif saves is not None:
                store.save(saves)
            else:
                store.compact()
            counts["writes"] += 1

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            q = Gaussians(rng.normal(size=(1, K)), np.exp(rng.normal(0, 0.5, (1, K))))
            flt = {"g": int(rng.integers(3))} if rng.random() < 0.3 else None
            hits = store.search(q, k=10, filter=flt)
            counts["searches"] += 1
            ids = [h.id for h in hits]
            if len(set(ids)) != len(ids):
                problems.append(("silent_wrong", f"duplicate ids {ids}"))
            scores = np.array([h.score for h in hits])
            if np.any(np.diff(scores) > 1e-9):
                problems.append(("silent_wrong", f"unsorted scores {scores}"))
            for h in hits:
                if h.id not in added:
                    problems.append(("silent_wrong", f"unknown id {h.id}"))
                    continue
                m, v = _doc(h.id)
                if not math.isclose(h.score, float(exact_scores(q, m, v)[0]), rel_tol=1e-6, abs_tol=1e-6):
                    problems.append(("silent_wrong", f"{h.id}: score {h.score} is not its -KL"))
                if flt is not None and h.metadata.get("g") != flt["g"]:
                    problems.append(("silent_wrong", f"{h.id} does not pass the filter {flt}"))

    def guarded(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                problems.append(("tracebacks", _describe(exc)))
                stop.set()

        return run

    threads = [threading.Thread(target=guarded(writer), daemon=True)]
    threads += [threading.Thread(target=guarded(searcher, s), daemon=True) for s in range(3)]
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join(seconds + 60)
    t.inputs += counts["searches"] + counts["writes"]
    t.notes[name] = counts
    if any(th.is_alive() for th in threads):
        t.fail("hangs", name, "a thread is still blocked")
    for kind, detail in problems[:20]:
        t.fail(kind, name, detail)
    if saves is not None and not problems:
        probe(t, f"{name}: the last save loads", lambda: len(KLStore.load(saves)), check=lambda n: n > 0)


def _filter_reads_while_writer_waits(t: Tally, rounds: int) -> None:
    for r in range(rounds):
        store = small_store()
        query = gaussians(1, seed=r)
        in_filter = threading.Event()

        def predicate(meta: dict[str, Any], s: KLStore = store, e: threading.Event = in_filter) -> bool:
            if not e.is_set():
                e.set()
                deadline = time.monotonic() + 2
                while not s._lock._waiting_writers and time.monotonic() < deadline:
                    time.sleep(0.001)
            return len(s.ids) > 0

        def write(s: KLStore = store, e: threading.Event = in_filter) -> None:
            e.wait(5)
            s.add(gaussians=gaussians(1, seed=500), ids=["new"])

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        probe(
            t,
            f"filter reads the store while a writer waits ({r + 1})",
            lambda s=store, q=query, p=predicate: s.search(q, k=3, filter=p),
            check=lambda h: len(h) == 3,
            timeout=20,
        )
        writer.join(20)
        if writer.is_alive():
            t.fail("hangs", f"writer of round {r + 1}", "still blocked")


def concurrency(tmp: Path, quick: bool, rng: random.Random) -> Tally:
    t = Tally("concurrency")
    seconds = 2.0 if quick else 8.0
    approx = {"rescore_pool": 20, "rescore_factor": 1}
    _concurrent(t, "flat: searches vs writes", KLStore(), seconds)
    _concurrent(t, "hnsw: searches vs writes and rebuilds", KLStore(index_type="hnsw", hnsw_m=8, **approx), seconds)
    _concurrent(
        t, "ivf: searches vs writes and rebuilds", KLStore(index_type="ivf", nlist=8, nprobe=2, **approx), seconds
    )
    _concurrent(
        t,
        "ivf-pq+refine: searches vs writes",
        KLStore(index_type="ivf", nlist=4, compression="pq", pq_m=6, pq_nbits=4, refine="sq8", **approx),
        seconds,
    )
    _concurrent(t, "flat: searches vs writes and saves", KLStore(), seconds, saves=tmp / "concurrent-save")
    _filter_reads_while_writer_waits(t, 5 if quick else 20)
    victim = small_store()
    probe(
        t,
        "filter deleting from the store during its search",
        lambda: victim.search(gaussians(1), k=3, filter=lambda m: bool(victim.delete(["d2"]))),
        refuse=True,
        timeout=20,
    )
    return t


# ================================================================== 5. CLI calls
LOG_LINE = r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "


class _Swallow(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:  # log records are not error lines
        pass


def cli_calls(tmp: Path, quick: bool, rng: random.Random) -> Tally:
    import re

    from kl_retrievers.cli import main

    t = Tally("CLI calls")
    root = logging.getLogger()
    root.addHandler(_Swallow())  # main's logging.basicConfig is then a no-op: logs never reach stderr
    model = tiny_encoder().save_pretrained(tmp / "model")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"the cat sat {i}"}) + "\n" for i in range(6)))
    store = tmp / "cli-store"
    beir = tmp / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(corpus.read_text())
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "cat"}\n{"_id": "q2", "text": "sun"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    (tmp / "file").write_text("x")
    (tmp / "folder.safetensors").mkdir()
    (tmp / "keep").mkdir()
    (tmp / "keep" / "a.txt").write_text("keep me")
    (tmp / "bin-only").mkdir()
    (tmp / "bin-only" / "x.bin").write_bytes(b"\x00")

    def inp(name: str, text: str | bytes) -> str:
        p = tmp / "inputs" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(p)

    def damaged(name: str, damage: Callable[[Path], None]) -> str:
        p = tmp / "damaged-stores" / name
        shutil.copytree(store, p)
        damage(p)
        return str(p)

    def model_with(name: str, change: Callable[[dict[str, Any]], None]) -> str:
        p = tmp / "models" / name
        shutil.copytree(model, p)
        cfg = json.loads((p / "config.json").read_text())
        change(cfg)
        (p / "config.json").write_text(json.dumps(cfg))
        return str(p)

    m, c, s, o = str(model), str(corpus), str(store), str(tmp / "out")
    enc = ["encode", "--model", m, "--no-progress"]
    idx = ["index", "--model", m, "--no-progress"]
    ev = ["evaluate", str(beir), "--model", m, "--no-progress", "--no-cache"]
    good: list[list[str]] = [
        ["index", c, "--out", s, "--model", m, "--no-progress"],
        [*enc, "hello", "--out", o + ".safetensors"],
        ["search", s, "cat", "-k", "2", "--json"],
        [*enc, "--input", c, "--out", o + "-shards", "--shard-size", "2"],
        [*ev, "--depth", "5"],
    ]
    bad: list[list[str]] = [
        ["frobnicate"],
        ["encode", "--nope"],
        [*enc, "--input", str(tmp / "missing.jsonl"), "--out", o],
        [*enc, "--input", inp("bad.jsonl", '{"text": "a"}\n{oops\n'), "--out", o],
        [*enc, "--input", inp("list.jsonl", "[1]\n"), "--out", o],
        [*enc, "--input", inp("null.jsonl", '{"text": null}\n'), "--out", o],
        [*enc, "--input", inp("num.jsonl", '{"text": 5}\n'), "--out", o],
        [*enc, "--input", inp("idlist.jsonl", '{"_id": [1], "text": "a"}\n'), "--out", o],
        [*enc, "--input", inp("latin1.txt", "caf\xe9\n".encode("latin-1")), "--out", o],
        [*enc, "--input", inp("empty.txt", "\n"), "--out", o],
        [*enc, "--out", o],
        [*enc, "x", "--input", c, "--out", o],
        [*enc, "x", "--out", o, "--batch-size", "0"],
        [*enc, "x", "--out", o, "--batch-size", "many"],
        [*enc, "x", "--out", o, "--max-length", "0"],
        [*enc, "x", "--out", o, "--max-length", "-3"],
        [*enc, "--input", c, "--out", o, "--shard-size", "0"],
        [*enc, "x", "--out", str(tmp / "file" / "g.safetensors")],
        [*enc, "x", "--out", "/proc/kl-retrievers-probe/g"],
        [*enc, "x", "--out", str(tmp / "folder.safetensors")],
        ["encode", "x", "--out", o, "--model", str(tmp / "no-model")],
        ["encode", "x", "--out", o, "--model", model_with("empty-enc", lambda cfg: cfg.update(encoder={}))],
        ["encode", "x", "--out", o, "--model", model_with("str-enc", lambda cfg: cfg.update(encoder="x"))],
        ["encode", "x", "--out", o, "--model", model_with("dim0", lambda cfg: cfg["encoder"].update(dim=0))],
        ["encode", "x", "--out", o, "--model", model_with("no-backbone", lambda cfg: cfg.pop("backbone_config"))],
        [
            "encode",
            "x",
            "--out",
            o,
            "--model",
            model_with("abs-weights", lambda cfg: cfg.update(weights="/etc/passwd")),
        ],
        ["encode", "x", "--out", o, "--model", model_with("up-weights", lambda cfg: cfg.update(weights="../../w"))],
        ["encode", "x", "--out", o, "--model", model_with("newer", lambda cfg: cfg.update(format_version=99))],
        [*idx, str(tmp / "none.jsonl"), "--out", o],
        [*idx, inp("empty.jsonl", "\n"), "--out", o],
        [*idx, inp("dup.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n'), "--out", o],
        [*idx, inp("null2.jsonl", '{"_id": "a", "text": null}\n'), "--out", o],
        [*idx, inp("bad2.jsonl", "{\n"), "--out", o],
        [*idx, str(tmp / "bin-only"), "--out", o],
        [*idx, c, "--out", str(tmp / "keep")],
        [*idx, c, "--out", str(tmp / "file")],
        [*idx, c, "--out", o, "--nlist", "0"],
        [*idx, c, "--out", o, "--pool", "-5"],
        [*idx, c, "--out", o, "--pq-m", "x"],
        [*idx, c, "--out", o, "--compression", "pq"],
        [*idx, c, "--out", o, "--index-type", "hnsw", "--refine", "sq8"],
        [*idx, c, "--out", o, "--index-type", "annoy"],
        ["search", str(tmp / "no-store"), "cat"],
        ["search", s, "cat", "-k", "0"],
        ["search", s, "cat", "-k", "ten"],
        ["search", s, "cat", "--filter", "{year"],
        ["search", s, "cat", "--filter", "[1]"],
        ["search", s, "cat", "--filter", '{"y": {"$near": 1}}'],
        ["search", s, "cat", "--model", str(tmp / "no-model")],
        ["evaluate", str(tmp / "no-beir"), "--no-progress"],
        [*ev, "--split", "dev"],
        [*ev, "--depth", "0"],
        [*ev, "--depth", "-5"],
        [*ev, "--batch-size", "0"],
        [*ev, "--max-length", "1"],
        [*ev, "--query-max-length", "x"],
        [*ev, "--compare", str(tmp / "none.json")],
        [*ev, "--compare", inp("pq.json", "{not json")],
        ["evaluate", str(beir), "--baseline", "bm25", "--means-only", "--no-progress"],
        [*ev, "--per-query", str(tmp / "file" / "pq.json")],
        [*ev, "--save-run", str(tmp / "file" / "run.trec")],
        ["train", "--data", str(tmp / "no-data"), "--out", o, "--no-progress"],
        ["train", "--data", str(beir), "--out", o, "--steps", "0"],
        ["train", "--data", str(beir), "--out", o, "--batch-size", "x"],
        ["train", "--data", str(beir), "--out", o, "--max-length", "2"],
        ["train", "--data", str(beir), "--out", str(tmp / "file" / "m"), "--base", m, "--no-progress"],
        ["train", "--data", inp("train.jsonl", "{oops\n"), "--out", o, "--no-progress"],
        ["demo", "-k", "0"],
        ["demo", "--model", str(tmp / "no-model")],
    ]
    store_damages: list[tuple[str, Callable[[Path], None]]] = [
        ("config not JSON", lambda p: (p / "config.json").write_text("{")),
        ("config a list", lambda p: (p / "config.json").write_text("[1]")),
        ("mean.npy truncated", lambda p: (p / "mean.npy").write_bytes((p / "mean.npy").read_bytes()[:-8])),
        ("documents.jsonl missing", lambda p: (p / "documents.jsonl").unlink()),
        (
            "index.faiss flipped",
            lambda p: (p / "index.faiss").write_bytes(b"\xff" + (p / "index.faiss").read_bytes()[1:]),
        ),
        (
            "config unknown index param",
            lambda p: _edit_json(p / "config.json", lambda cfg: cfg["index_params"].update(x=1)),
        ),
        ("config newer format", lambda p: _edit_json(p / "config.json", lambda cfg: cfg.update(format_version=99))),
        ("config encoder a string", lambda p: _edit_json(p / "config.json", lambda cfg: cfg.update(encoder="x"))),
        (
            "config without sha256",
            lambda p: _edit_json(p / "config.json", lambda cfg: cfg["files"]["var.npy"].pop("sha256")),
        ),
        ("config files a string", lambda p: _edit_json(p / "config.json", lambda cfg: cfg.update(files="x"))),
    ]
    if quick:
        bad = bad[::2]
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        for argv in good:
            code, err, escaped = _run_cli(main, argv)
            t.inputs += 1
            if escaped or code != 0:
                t.fail(
                    "tracebacks" if escaped else "silent_wrong",
                    " ".join(argv[:2]),
                    f"a valid call failed ({code}): {err[-300:]}",
                )
        for name, damage in store_damages:
            bad.append(["search", damaged(name.replace(" ", "-"), damage), "cat", "--model", m])
        for argv in bad:
            code, err, escaped = _run_cli(main, argv)
            t.inputs += 1
            t.faults += 1
            lines = [line for line in err.splitlines() if line.strip() and not re.match(LOG_LINE, line)]
            name = " ".join(a.replace(str(tmp) + "/", "") for a in argv[:6])
            if escaped or "Traceback" in err or "internal error" in err:
                t.fail("tracebacks", name, escaped or err[-300:])
            elif code == 0:
                t.fail("silent_wrong", name, "bad input accepted (exit 0)")
            elif len(lines) != 1 or not lines[0].startswith("kl-retrievers"):
                t.fail("tracebacks", name, f"{len(lines)} error lines: {err[-300:]}")
        # two real processes: logging on the real stderr, exit status from sys.exit(main())
        for argv in (bad[2], bad[-1]):
            proc = subprocess.run(
                [sys.executable, "-m", "kl_retrievers.cli", *argv],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                timeout=300,
            )
            t.inputs += 1
            t.faults += 1
            lines = [line for line in proc.stderr.splitlines() if line.strip() and not re.match(LOG_LINE, line)]
            if "Traceback" in proc.stderr or proc.returncode == 0 or len(lines) != 1:
                t.fail(
                    "tracebacks", "subprocess " + " ".join(argv[:2]), f"exit {proc.returncode}: {proc.stderr[-300:]}"
                )
    finally:
        os.chdir(cwd)
        root.handlers = [h for h in root.handlers if not isinstance(h, _Swallow)]
    return t


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _run_cli(main: Callable[[list[str]], int], argv: list[str]) -> tuple[object, str, str]:
    err, out = io.StringIO(), io.StringIO()
    escaped = ""
    code: object = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        escaped = _describe(exc)
    return code, err.getvalue(), escaped


# ================================================================== 6. sharded encodings
def sharded(tmp: Path, quick: bool, rng: random.Random) -> Tally:
    from kl_retrievers.sharded import encode_corpus, load_encoded

    t = Tally("sharded encodings")
    enc = tiny_encoder()
    corpus = tmp / "shard-corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"the cat sat on mat {i}"}) + "\n" for i in range(60))
    )
    source = tmp / "shards-source"
    encode_corpus(corpus, source, encoder=enc, shard_size=10, show_progress_bar=False)
    fresh, fresh_ids = load_encoded(source)

    def same(result: Any) -> bool:
        g, ids = result
        return ids == fresh_ids and np.array_equal(g.mean, fresh.mean) and np.array_equal(g.var, fresh.var)

    def shard_file(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
        return lambda p: change(p / "shard-00002" / name)

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def shard_json(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
        return lambda p: _edit_json(p / "shard-00002" / "shard.json", change)

    def manifest(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
        return lambda p: _edit_json(p / "manifest.json", change)

    damages: list[Damage] = [
        ("mean.npy deleted", shard_file("mean.npy", lambda f: f.unlink())),
        ("var.npy truncated", shard_file("var.npy", lambda f: f.write_bytes(f.read_bytes()[:-5]))),
        ("mean.npy flipped", shard_file("mean.npy", flip)),
        ("ids.json rewritten", shard_file("ids.json", lambda f: f.write_text('["x"]'))),
        ("shard.json deleted", shard_file("shard.json", lambda f: f.unlink())),
        ("shard.json not JSON", shard_file("shard.json", lambda f: f.write_text("{"))),
        ("shard.json empty checksum table", shard_json(lambda m: m.update(sha256={}))),
        ("shard.json checksums a list", shard_json(lambda m: m.update(sha256=[]))),
        ("shard.json spec changed", shard_json(lambda m: m["spec"].update(rows=3))),
        ("whole shard deleted", lambda p: shutil.rmtree(p / "shard-00002")),
        ("manifest deleted", lambda p: (p / "manifest.json").unlink()),
        ("manifest a JSON list", lambda p: (p / "manifest.json").write_text("[1]")),
        ("manifest not JSON", lambda p: (p / "manifest.json").write_text("{")),
        ("manifest without shards", manifest(lambda m: m.pop("shards"))),
        ("manifest shards 'x'", manifest(lambda m: m.update(shards="x"))),
        ("manifest shards 999", manifest(lambda m: m.update(shards=999))),
        ("manifest newer format", manifest(lambda m: m.update(format_version=99))),
    ]
    if quick:
        damages = damages[::2]
    for name, folder in damaged_copies(source, tmp / "shards-damaged", damages):
        probe(t, f"load_encoded after: {name}", lambda f=folder: load_encoded(f), check=same, fault=True)

        def resume(f: Path = folder) -> Any:
            encode_corpus(corpus, f, encoder=enc, shard_size=10, show_progress_bar=False)
            return load_encoded(f)

        probe(t, f"resume, then load, after: {name}", resume, check=same, fault=True)
    return t


# ================================================================== main
@contextlib.contextmanager
def quiet_native_stderr() -> Any:
    """FAISS prints k-means warnings from C++ straight to file descriptor 2: hide them."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


CATEGORIES = {
    "api": api_inputs,
    "stores": damaged_stores,
    "kill": kill_during_saves,
    "concurrency": concurrency,
    "cli": cli_calls,
    "sharded": sharded,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer probes per category (under two minutes)")
    parser.add_argument(
        "--only",
        choices=sorted(CATEGORIES),
        nargs="+",
        action="extend",
        metavar="CATEGORY",
        help=f"run only these categories (several after one --only, or --only repeated): {', '.join(CATEGORIES)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--json", type=Path, default=None, help="also write the counts and failures here")
    parser.add_argument("--verbose", action="store_true", help="print every failure (default: the first 10 each)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.ERROR)  # warnings of refused inputs are expected; keep the report readable
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(args.seed)
    tallies: list[Tally] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kl-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["KL_RETRIEVERS_CACHE"] = str(tmp / "cache")
        for key, run in CATEGORIES.items():
            if args.only and key not in args.only:
                continue
            t0 = time.perf_counter()
            folder = tmp / key
            folder.mkdir()
            with quiet_native_stderr() if key in ("stores", "kill", "concurrency") else contextlib.nullcontext():
                tally = run(folder, args.quick, rng)
            tally.notes["seconds"] = round(time.perf_counter() - t0, 1)
            tallies.append(tally)
            print(
                f"{tally.category}: {tally.inputs} inputs, {tally.bad} problems ({tally.notes['seconds']} s)",
                flush=True,
            )
    total = Tally("total")
    for tally in tallies:
        for name in ("inputs", "faults", "tracebacks", "silent_wrong", "hangs", "data_lost"):
            setattr(total, name, getattr(total, name) + getattr(tally, name))
    header = (
        f"{'category':<24} {'inputs':>7} {'faults':>7} {'tracebacks':>10} {'silent wrong':>12} {'hangs':>6} "
        f"{'data lost':>9}"
    )
    print()
    print(header)
    print("-" * len(header))
    for tally in [*tallies, total]:
        print(
            f"{tally.category:<24} {tally.inputs:>7} {tally.faults:>7} {tally.tracebacks:>10} "
            f"{tally.silent_wrong:>12} {tally.hangs:>6} {tally.data_lost:>9}"
        )
    print(f"\n{'quick' if args.quick else 'full'} run, {time.perf_counter() - start:.0f} s, seed {args.seed}")
    for tally in tallies:
        extra = {k: v for k, v in tally.notes.items() if k != "seconds"}
        if extra:
            print(f"{tally.category}: {json.dumps(extra, default=str)}")
        shown = tally.failures if args.verbose else tally.failures[:10]
        for line in shown:
            print(f"  {line}")
        if len(tally.failures) > len(shown):
            print(f"  ... {len(tally.failures) - len(shown)} more (--verbose)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"quick": args.quick, "categories": [asdict(t) for t in [*tallies, total]]}, indent=2, default=str
            )
        )
    return 1 if total.bad else 0


if __name__ == "__main__":
    sys.exit(main())
