"""DocumentTable keeps spare rows, so that adding a few documents to a large store does not copy it."""

from __future__ import annotations

import numpy as np

from kl_retrievers.store._table import DocumentTable


def _rows(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)).astype(np.float32), rng.uniform(0.5, 2.0, size=(n, k)).astype(np.float32)


def test_small_appends_do_not_copy_the_table_and_keep_every_row() -> None:
    table = DocumentTable(4)
    mean, var = _rows(1000, 4, 0)
    table.append(mean, var, [f"d{i}" for i in range(1000)], [None] * 1000, [{}] * 1000)
    means, variances, copies = [mean], [var], 0
    for i in range(100):
        before = table.mean
        m, v = _rows(1, 4, i + 1)
        table.append(m, v, [f"x{i}"], [None], [{}])
        copies += not np.shares_memory(before, table.mean)
        means.append(m)
        variances.append(v)
    assert copies <= 1  # one growth by a quarter holds 100 more rows (every append copied before)
    np.testing.assert_array_equal(table.mean, np.concatenate(means))
    np.testing.assert_array_equal(table.var, np.concatenate(variances))
    np.testing.assert_allclose(table.sumlogvar, np.log(np.concatenate(variances).astype(np.float64)).sum(axis=1))
    assert table.alive.all() and table.n_rows == len(table) == 1100


def test_held_read_only_arrays_are_copied_on_the_first_append_and_never_written() -> None:
    mean, var = _rows(10, 3, 0)
    for a in (mean, var):
        a.flags.writeable = False  # as a load's memory map
    table = DocumentTable(3)
    slv = np.log(var.astype(np.float64)).sum(axis=1)
    table.set_rows((mean, var, slv), [f"d{i}" for i in range(10)], [None] * 10, [{}] * 10)
    m, v = _rows(2, 3, 1)
    table.append(m, v, ["d3", "new"], [None, None], [{}, {}])  # d3 replaced: its old row is a tombstone
    assert not np.shares_memory(table.mean, mean) and table.n_rows == 12 and len(table) == 11
    np.testing.assert_array_equal(table.mean[:10], mean)
    assert table.alive.tolist() == [True] * 3 + [False] + [True] * 8
    dead = table.compact()
    assert dead.tolist() == [3] and table.n_rows == 11
    np.testing.assert_array_equal(table.mean[-2:], m)
