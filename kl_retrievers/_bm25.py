"""bm25s' logger, quieted where bm25s left it at its own import default.

bm25s sets its logger (``logging.getLogger("bm25s")``) to ``DEBUG`` when it is imported, so that its index
building logs at every BM25 index this library builds (:mod:`kl_retrievers.baselines`,
:mod:`kl_retrievers.hybrid`, :func:`kl_retrievers.training.data.mine_bm25_negatives`).
:func:`quiet_bm25s_logger` sets it to ``WARNING`` only while it is still at that default: a level a user set
on the ``bm25s`` logger after importing bm25s (``INFO``, ``ERROR``...) is kept (``DEBUG`` itself cannot be
told from bm25s' default).

Examples:
    >>> import logging
    >>> quiet_bm25s_logger()  # doctest: +SKIP
    >>> logging.getLogger("bm25s").level  # doctest: +SKIP
    30
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

__all__ = ["BM25S_LOGGER", "quiet_bm25s_logger"]

#: The logger bm25s logs to, and sets to ``DEBUG`` at its import.
BM25S_LOGGER = "bm25s"


def quiet_bm25s_logger() -> None:
    """Set bm25s' logger to ``WARNING`` when its level is still bm25s' import default (``DEBUG``).

    Imports bm25s first (a no-op once imported), so that its import cannot set ``DEBUG`` again afterwards; a
    level set on the logger since then is left as it is.

    Raises:
        ModuleNotFoundError: bm25s is not installed (callers check their extra first).
    """
    import bm25s  # noqa: F401  # its import sets the logger to DEBUG: that must happen before the check

    bm25s_logger = logging.getLogger(BM25S_LOGGER)
    if bm25s_logger.level == logging.DEBUG:  # bm25s' own setting: it would log every index build
        bm25s_logger.setLevel(logging.WARNING)
