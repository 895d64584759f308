"""The base class of every exception kl_retrievers defines (no imports: any module may import it)."""

from __future__ import annotations

__all__ = ["ConcurrentSaveError", "KLRetrieversError", "NothingSavedError"]


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


class NothingSavedError(KLRetrieversError, FileNotFoundError, ValueError):
    """A loader of a saved folder found nothing of its kind there: no folder, an empty one, or one without the
    loader's own file (a folder holding that file written by something else, or saved by kl_retrievers as another
    kind, is the loader's format error, naming what it is).

    Every loader raises it (``KLStore.load``, ``KLHybridStore.load``, ``load_gaussians``,
    ``kl_retrievers.sharded.load_encoded``, ``GaussianEncoder.from_pretrained`` and ``load_model`` on an existing
    folder, the ONNX encoders, and the LangChain and LlamaIndex loaders). It is a :class:`FileNotFoundError` and a
    :class:`ValueError`, and where a loader raised its own class for such a folder before
    (:class:`~kl_retrievers.OnnxModelError`, :class:`~kl_retrievers.NotAnEncoderError`,
    ``LangChainFormatError``), that class too, so an ``except`` written for what a loader raised still catches it.

    Examples:
        >>> from kl_retrievers import KLStore, NothingSavedError
        >>> try:
        ...     KLStore.load("/no/such/folder")
        ... except NothingSavedError as exc:
        ...     print(isinstance(exc, FileNotFoundError), isinstance(exc, ValueError))
        True True
    """


class ConcurrentSaveError(KLRetrieversError, OSError):
    """A loader of a saved folder could not read one complete copy of it: saves of the same path (in other threads
    or processes) replaced the folder during each of its reads.

    A loader that finds the folder replaced while it reads it (a save swaps in its new copy as a whole) reads it
    again, and gives up after a few reads (``kl_retrievers._io.LOAD_ATTEMPTS``, 4) with this error, chained to the
    last read's error if it failed. Nothing is wrong with the folder: load it again once the saves pause (or
    retry after a pause). Every loader :class:`NothingSavedError` names but ``kl_retrievers.sharded.load_encoded``
    (which reads each shard once, checking its checksums) may raise it. It is an :class:`OSError`, as it was before
    it had its own class.

    Examples:
        >>> from kl_retrievers import ConcurrentSaveError
        >>> issubclass(ConcurrentSaveError, OSError)
        True
    """
