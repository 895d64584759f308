"""``kill -9`` during ``KLStore.save``: a complete save always survives and no leftovers outlive the next save.

A driver process (a fresh interpreter, so importing the package is paid once) builds two
versions of a store, saves one, then forks a child per round that saves and is SIGKILLed: at
random moments while saving in a loop, and at fixed points (inside the writes, after the
writes and before the swap, between the two renames of the fallback swap, after the atomic
exchange and before the previous copy is removed).  After each kill the store must load with
contents byte-identical to one of the two versions' reference saves, and after the next
successful save no ``.store.tmp-*`` / ``.store.old-*`` folder may remain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kl_retrievers import _io
from kl_retrievers.gaussian import Gaussians
from kl_retrievers.index import KLStore

DRIVER = textwrap.dedent(
    r"""
    import hashlib, json, os, random, signal, sys, time
    from pathlib import Path

    import numpy as np

    from kl_retrievers import Gaussians, KLStore, _io
    import kl_retrievers.store._engines as engines_module

    root = Path(sys.argv[1])
    target = root / "store"
    N, K = 6000, 24


    def make(seed):
        rng = np.random.default_rng(seed)
        g = Gaussians(rng.normal(size=(N, K)).astype(np.float32), np.exp(rng.normal(0, 0.5, (N, K))).astype(np.float32))
        store = KLStore()
        store.add(gaussians=g, ids=[f"v{seed}-{i}" for i in range(N)], texts=[f"text {seed} {i}" for i in range(N)],
                  metadatas=[{"seed": seed, "i": i} for i in range(N)])
        return store


    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


    versions = {"a": make(1), "b": make(2)}
    refs = {}
    for name, store in versions.items():
        t0 = time.perf_counter()
        refs[name] = digest(store.save(root / f"ref-{name}"))
    save_s = time.perf_counter() - t0
    versions["a"].save(target)
    current = "a"


    def leftovers():
        return sorted(p.name for p in root.iterdir() if p.name.startswith(".store."))


    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


    def child(point, version):
        other = "b" if version == "a" else "a"
        if point == "random":
            while True:
                versions[other].save(target)
                versions[version].save(target)
        if point == "write":
            engines_module._write_index = die
        elif point == "before-swap":
            real_norm = _io._normalise_permissions
            _io._normalise_permissions = lambda folder: (real_norm(folder), die())
        elif point == "fallback-between-renames":
            _io._exchange = lambda a, b: False
            real_replace = os.replace

            def replace(src, dst):
                real_replace(src, dst)
                if Path(dst).name.startswith(".store.old-"):
                    die()

            os.replace = replace
        elif point == "after-exchange":
            _io._remove_tree = die
        versions[version].save(target)
        os._exit(3)  # the kill point was not reached


    random.seed(0)
    rounds = [("random", random.uniform(0.0, 2.5 * save_s)) for _ in range(5)]
    rounds += [(p, None) for p in ("write", "before-swap", "fallback-between-renames", "after-exchange")]
    report = {"save_s": save_s, "rounds": []}
    for point, delay in rounds:
        version = "b" if current == "a" else "a"
        pid = os.fork()
        if pid == 0:
            try:
                child(point, version)
            finally:
                os._exit(4)
        if delay is not None:
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        rec = {"point": point, "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
               "previous": current, "saving": version, "target_existed": target.exists(),
               "leftovers_after_kill": leftovers()}
        try:
            loaded = KLStore.load(target)
            rec["loaded"] = len(loaded)
            rec["loaded_first_id"] = loaded.ids[0]
        except Exception as exc:
            rec["load_error"] = f"{type(exc).__name__}: {exc}"
        rec["matches"] = [name for name, ref in refs.items() if target.is_dir() and digest(target) == ref]
        current = rec["matches"][0] if rec["matches"] else current
        nxt = "b" if current == "a" else "a"
        versions[nxt].save(target)
        current = nxt
        rec["after_save_matches"] = digest(target) == refs[nxt]
        rec["leftovers_after_save"] = leftovers()
        report["rounds"].append(rec)
    print(json.dumps(report))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill test forks (POSIX only)")
def test_kill_9_during_save_keeps_a_complete_copy_and_leaves_nothing_behind(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rounds = {r["point"] + str(i): r for i, r in enumerate(report["rounds"])}
    for key, rec in rounds.items():
        assert rec["killed"], (key, rec)  # the child really died of SIGKILL (the kill point was reached)
        assert "load_error" not in rec, (key, rec)
        assert rec["loaded"] == 6000, (key, rec)
        assert rec["matches"] in (["a"], ["b"]), (key, rec)  # byte-identical to one complete save
        assert rec["matches"][0] in (rec["previous"], rec["saving"]), (key, rec)
        assert rec["after_save_matches"], (key, rec)
        assert rec["leftovers_after_save"] == [], (key, rec)  # no .store.tmp-* / .store.old-* survives
    by_point = {r["point"]: r for r in report["rounds"] if r["point"] != "random"}
    # killed inside the writes or before the swap: the previous copy is untouched, the partial copy is left over
    for point in ("write", "before-swap"):
        rec = by_point[point]
        assert rec["target_existed"] and rec["matches"] == [rec["previous"]], rec
        assert any(name.startswith(".store.tmp-") for name in rec["leftovers_after_kill"]), rec
    # killed between the two renames of the fallback swap: nothing at the path until load() restores the old copy
    rec = by_point["fallback-between-renames"]
    assert not rec["target_existed"] and any(n.startswith(".store.old-") for n in rec["leftovers_after_kill"]), rec
    assert rec["matches"] == [rec["previous"]], rec
    # killed after the atomic exchange: the new copy is in place, the previous one waits in a .tmp folder
    rec = by_point["after-exchange"]
    assert rec["target_existed"] and rec["matches"] == [rec["saving"]], rec
    assert any(name.startswith(".store.tmp-") for name in rec["leftovers_after_kill"]), rec


def _store(n: int = 50) -> KLStore:
    rng = np.random.default_rng(0)
    store = KLStore()
    store.add(gaussians=Gaussians(rng.normal(size=(n, 4)), np.ones((n, 4))), ids=[f"d{i}" for i in range(n)])
    return store


@pytest.mark.skipif(_io.fcntl is None, reason="needs fcntl locks")
def test_cleanup_spares_a_running_save_and_other_names(tmp_path: Path) -> None:
    store = _store()
    store.save(tmp_path / "store")
    busy = tmp_path / ".store.tmp-0badcafe"  # another process's save, still writing
    busy.mkdir()
    fd = _io._lock_fd(busy, wait=False)
    assert fd is not None
    stale = [tmp_path / ".store.tmp-deadbeef", tmp_path / ".store.old-12345678"]
    foreign = [tmp_path / ".store2.tmp-deadbeef", tmp_path / ".store.tmp-notours", tmp_path / ".other.old-12345678"]
    for path in stale + foreign:
        path.mkdir()
    (tmp_path / ".store.tmp-00c0ffee").write_text("a stray temporary file")
    store.save(tmp_path / "store")
    assert busy.is_dir() and all(p.exists() for p in foreign) and not any(p.exists() for p in stale)
    assert not (tmp_path / ".store.tmp-00c0ffee").exists()
    _io._unlock_fd(fd)
    store.save(tmp_path / "store")
    assert not busy.exists() and all(p.exists() for p in foreign)
    assert len(KLStore.load(tmp_path / "store")) == 50


def test_load_restores_the_old_copy_only_when_the_store_is_missing(tmp_path: Path) -> None:
    store = _store()
    folder = store.save(tmp_path / "store")
    old = tmp_path / ".store.old-abcdef12"
    os.replace(folder, old)  # what a kill between the fallback swap's two renames leaves
    (tmp_path / ".store.old-00000001").mkdir()  # an incomplete leftover (no config.json) is never chosen
    loaded = KLStore.load(tmp_path / "store")
    assert len(loaded) == 50 and (tmp_path / "store" / "config.json").is_file() and not old.exists()
    assert (tmp_path / ".store.old-00000001").is_dir()
    assert not _io.recover_dir(tmp_path / "store")  # present: nothing to do
    with pytest.raises(FileNotFoundError):
        KLStore.load(tmp_path / "other")


@pytest.mark.skipif(_io.fcntl is None, reason="needs fcntl locks")
def test_load_does_not_restore_an_old_copy_a_running_save_holds(tmp_path: Path) -> None:
    folder = _store().save(tmp_path / "store")
    old = tmp_path / ".store.old-abcdef12"
    os.replace(folder, old)
    fd = _io._lock_fd(old, wait=False)  # a save between its two renames
    try:
        with pytest.raises(FileNotFoundError):
            KLStore.load(tmp_path / "store")
        assert old.is_dir()
    finally:
        _io._unlock_fd(fd)
    assert len(KLStore.load(tmp_path / "store")) == 50


def test_fallback_swap_without_atomic_exchange(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    store = _store()
    store.save(tmp_path / "store")
    store.add(gaussians=Gaussians(np.zeros((1, 4)), np.ones((1, 4))), ids=["late"])
    store.save(tmp_path / "store")
    assert len(KLStore.load(tmp_path / "store")) == 51
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_atomic_file_and_shard_writes_clean_their_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    (tmp_path / ".manifest.json.tmp-12345").write_text("left by a killed write (the old pid-named kind)")
    (tmp_path / ".manifest.json.tmp-abcdef12").write_text("left by a killed write")
    with _io.atomic_file(target) as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    shard = tmp_path / "shard-00000"
    (tmp_path / ".shard-00000.tmp-abcdef12").mkdir()
    with _io.atomic_dir(shard) as tmp_dir:
        (tmp_dir / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00000"]
