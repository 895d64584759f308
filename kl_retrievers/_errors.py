"""The base class of every exception kl_retrievers defines (no imports: any module may import it)."""

from __future__ import annotations

__all__ = ["KLRetrieversError"]


class KLRetrieversError(Exception):
    """Base class of the exceptions kl_retrievers defines: ``except KLRetrieversError`` catches them all.

    Each one is also the built-in exception it was before (:class:`ValueError`, :class:`OSError`, ...), so
    ``except ValueError`` keeps catching a :class:`~kl_retrievers.StoreFormatError`. The library also raises
    plain built-in exceptions (a ``ValueError`` for a bad argument, ...), which this class does not catch.

    Examples:
        >>> from kl_retrievers import KLRetrieversError, StoreFormatError
        >>> issubclass(StoreFormatError, KLRetrieversError) and issubclass(StoreFormatError, ValueError)
        True
    """
