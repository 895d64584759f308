"""Warnings that point at the user's line: the ``stacklevel`` past this package and the frameworks it plugs into.

A fixed ``stacklevel`` is right for one call path only: the same check runs under a public function, a
method of an adapter called by LangChain or LlamaIndex, or a loader two calls down, so a fixed count
lands on a line of this package or of a third-party package. Such a warning shows the wrong line,
and a filter on the third party's module (``filterwarnings("ignore", module="langchain_community")``)
would hide it too. :func:`user_stacklevel` walks the stack instead, past the frames of this package,
of LangChain and LlamaIndex (the packages named in :data:`FRAMEWORK_PACKAGES`), pydantic, and the ``functools``,
``asyncio``, ``threading`` and ``concurrent`` plumbing between them, to the first other frame: the
user's. It walks on every Python version (3.12's ``skip_file_prefixes`` skips by file, which cannot
name a namespace package such as ``llama_index`` spread over several folders, and has no use in a
helper that another function's ``warnings.warn`` must be given a level for).

Imports only the standard library, so any module of the package may use it.
"""

from __future__ import annotations

import contextvars
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["at_callers_line", "user_stacklevel", "warn"]

#: The top-level packages of LangChain and LlamaIndex whose frames a warning skips: exact names, so that a
#: user's own ``langchain_app`` or ``llama_index_tools`` package is not taken for the framework. LangChain's
#: core packages and its partner packages that call embeddings and vector stores (the names their
#: distributions install); ``llama_index`` is one namespace package (``llama_index.core``,
#: ``llama_index.vector_stores.*``...), ``llama_index_instrumentation`` wraps its retrievers' calls. LlamaIndex's
#: ``workflows`` package is left out: its name is too common not to be a user's own.
FRAMEWORK_PACKAGES = frozenset(
    {
        "langchain",
        "langchain_core",
        "langchain_community",
        "langchain_classic",
        "langchain_text_splitters",
        "langchain_tests",
        "langchain_protocol",
        "langgraph",
        "langchain_experimental",
        "langchain_chroma",
        "langchain_elasticsearch",
        "langchain_huggingface",
        "langchain_milvus",
        "langchain_mongodb",
        "langchain_openai",
        "langchain_pinecone",
        "langchain_postgres",
        "langchain_qdrant",
        "langchain_redis",
        "langchain_weaviate",
        "llama_index",
        "llama_index_instrumentation",
        "llama_agents",
    }
)
#: Top-level modules whose frames a warning skips.
SKIPPED_MODULES = FRAMEWORK_PACKAGES | frozenset(
    {"kl_retrievers", "pydantic", "pydantic_core", "functools", "asyncio", "threading", "concurrent", "contextlib"}
)


def _skipped(frame: FrameType) -> bool:
    """Whether ``frame`` runs code of this package, of a framework it plugs into, or of their plumbing."""
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str):
        return False
    return name.partition(".")[0] in SKIPPED_MODULES


def _internal(frame: FrameType) -> bool:
    """An import machinery frame, which ``warnings.warn`` does not count (CPython's ``_is_internal_frame``)."""
    filename = frame.f_code.co_filename
    return "importlib" in filename and "_bootstrap" in filename


def user_stacklevel(depth: int = 0) -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` point at the first frame outside the skipped modules.

    Args:
        depth: How many calls below the caller of this function ``warnings.warn`` runs (``0``: the caller
            calls it itself; ``1``: a helper it calls does).

    Returns:
        The level, counted as ``warnings.warn`` counts it. When every frame of the stack is skipped
        (a warning raised in a worker thread that runs library code only), the level of the line that
        called the caller of this function (the package's line that asked for the check).

    Examples:
        >>> user_stacklevel() >= 2
        True
    """
    level = _user_level(sys._getframe(1), depth)
    return level if level is not None else 2 + depth


def _user_level(frame: FrameType | None, depth: int) -> int | None:
    """:func:`user_stacklevel` from ``frame`` (the frame that asks), ``None`` when every frame is skipped."""
    level = 1 + depth
    while frame is not None and _skipped(frame):
        frame = frame.f_back
        if frame is not None and not _internal(frame):
            level += 1
    return level if frame is not None else None


#: The user's line (``(filename, lineno, module globals)``) kept by :func:`at_callers_line` for worker threads.
_CALLERS_LINE: contextvars.ContextVar[tuple[str, int, dict[str, Any]] | None] = contextvars.ContextVar(
    "kl_retrievers_callers_line", default=None
)


@contextmanager
def at_callers_line() -> Iterator[None]:
    """Point :func:`warn`'s warnings given in a worker thread started in the block at the caller's line.

    An async adapter call (``aadd_texts``, ``aembed_documents``, ``aget_text_embedding_batch``...) runs library
    code in a worker thread whose stack holds no frame of the user's, so its warnings would point at this
    package's line. Entered in the coroutine, before the worker starts, this finds the user's line on the
    coroutine's stack (the first frame outside the skipped modules, as :func:`warn` finds it) and keeps it in a
    :class:`contextvars.ContextVar`, which ``asyncio.to_thread``, LangChain's ``run_in_executor`` and
    ``contextvars.copy_context().run`` copy into the worker: a warning is still given there (an ``error``
    filter stops the call as it stops the sync one), at that line. Without a user's frame nothing changes.

    Examples:
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     with at_callers_line():
        ...         warn("careful")
        >>> str(seen[0].message)  # (run here, in the caller's own thread: at the line the stack gives)
        'careful'
    """
    frame: FrameType | None = sys._getframe(0)
    while frame is not None and _skipped(frame):
        frame = frame.f_back
    at = None if frame is None else (frame.f_code.co_filename, frame.f_lineno, frame.f_globals)
    del frame
    token = _CALLERS_LINE.set(at)
    try:
        yield
    finally:
        _CALLERS_LINE.reset(token)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the user's line (see :func:`user_stacklevel`).

    When every frame is skipped (a worker thread running library code only): at the line
    :func:`at_callers_line` kept for the thread, if any; else at the line that called the caller of this
    function, the package's line that asked for the check (not the checking helper's own line).

    Examples:
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     warn("careful")
        >>> str(seen[0].message)
        'careful'
    """
    level = _user_level(sys._getframe(0), 0)
    at = _CALLERS_LINE.get() if level is None else None
    if at is None:
        warnings.warn(message, category, stacklevel=level if level is not None else 3)
        return
    filename, lineno, module_globals = at
    registry = module_globals.setdefault("__warningregistry__", {})
    name = module_globals.get("__name__", "<string>")
    warnings.warn_explicit(message, category, filename, lineno, name, registry, module_globals)
