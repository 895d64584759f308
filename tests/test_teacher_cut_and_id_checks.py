"""Fix G2: the cross-encoder teacher cuts long texts before tokenizing, and ids a store or run file cannot hold.

* :class:`~kl_retrievers.training.teacher.CrossEncoderTeacher` tokenized whole (query, passage) pairs before
  truncating them: a multi-MB passage cost hundreds of MB and seconds. Long texts are now cut first
  (:func:`~kl_retrievers._encoding.cut_long_texts`), to prefixes that give every pair the token ids, and so the
  scores, of the whole texts (checked on a tiny random cross-encoder exported to ONNX).
* :func:`~kl_retrievers.evaluation.write_trec_run` wrote query and document ids holding NUL, ESC or other control
  characters as they were, breaking the run's line for ``trec_eval`` and terminals; they are refused now.
* ``MilvusKLStore`` checked an id's length in characters; Milvus' ``VARCHAR`` ``max_length`` counts UTF-8 bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import WORDS, random_gaussians

MAX_LENGTH = 32  # the teacher's token budget in these tests; the pair's room is 29 tokens (odd)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT cross-encoder (one logit) as ``model.onnx`` with a WordPiece ``tokenizer.json``."""
    pytest.importorskip("onnxruntime")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    from kl_retrievers.onnx import _exporter_options

    folder = tmp_path_factory.mktemp("cross-encoder")
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(SPECIALS)
    tok.save(os.fspath(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    cfg.num_labels = 1  # one logit, the score (a PretrainedConfig property, not a BertConfig argument)
    model = BertForSequenceClassification(cfg).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            os.fspath(folder / "model.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={n: {0: "b", 1: "t"} for n in names} | {"logits": {0: "b"}},
            opset_version=17,
            **_exporter_options(torch.onnx.export),
        )
    return folder


def _teacher(folder: Path, max_length: int = MAX_LENGTH) -> Any:
    from kl_retrievers.training.teacher import CrossEncoderTeacher

    return CrossEncoderTeacher(folder, max_length=max_length, threads=1)


def _words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=n).tolist())


def _whole_ids(teacher: Any, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
    """The token ids of the whole pairs, truncated by the tokenizer (as the teacher did before the fix)."""
    return [list(e.ids) for e in teacher.tokenizer.encode_batch(list(pairs))]


def _whole_scores(teacher: Any, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The teacher's scores of the whole pairs, as its ``_run`` computed them before the fix."""
    enc = teacher.tokenizer.encode_batch(list(pairs))
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for i, e in enumerate(enc):
        n = len(e.ids)
        ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    logits = teacher.session.run(None, feeds)[0]
    return np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)[:, 0]


# ------------------------------------------------------------------ 1: the teacher cuts long texts, same scores
@pytest.mark.parametrize("max_length", [MAX_LENGTH, MAX_LENGTH + 1])  # the pair's room: 29 (odd), 30 (even)
def test_the_teacher_cuts_long_texts_and_keeps_the_whole_texts_token_ids_and_scores(
    cross_encoder_dir: Path, max_length: int
) -> None:
    teacher = _teacher(cross_encoder_dir, max_length)
    long_doc, long_query = _words(2000, 1), _words(1500, 2)
    many_tokens = "," * 300  # 300 characters (short), 300 tokens: longer than a first cut of the passage
    # two long texts: not too long, as the whole pair's truncation lists every pairing of their overflow
    longer, shorter, same = _words(600, 4), _words(480, 5), _words(480, 6)
    pairs = [
        ("what is the cat", long_doc),
        (many_tokens, long_doc),
        (long_query, "the cat sat on the mat"),
        (long_query, many_tokens),
        (longer, shorter),  # both long: the query has more tokens ...
        (shorter, longer),  # ... fewer
        (same, shorter),  # ... as many
        ("sun and moon", "green tea and bread"),
        ("a dog", "the sea, ¿¡ the star!" + "é, " * 3000 + long_doc),  # punctuation and unknown words
    ]
    cut = teacher._cut_pairs(pairs)
    assert [len(q) for q, _ in cut[:2]] == [len(q) for q, _ in pairs[:2]]
    assert all(len(d) < len(long_doc) for _, d in cut[:2])  # the long passages were cut ...
    assert all(len(q) < len(long_query) for q, _ in cut[2:4])  # ... the long queries ...
    for (q, d), (whole_q, whole_d) in zip(cut[4:7], pairs[4:7], strict=True):
        assert len(q) < len(whole_q) and len(d) < len(whole_d)
    assert cut[7] == pairs[7]  # ... both long texts of a pair, and no short one
    assert [list(e.ids) for e in teacher.tokenizer.encode_batch(cut)] == _whole_ids(teacher, pairs)
    whole = _whole_scores(teacher, pairs)
    np.testing.assert_array_equal(teacher._run(pairs), whole)
    np.testing.assert_array_equal(teacher.score(pairs, show_progress=False), whole)


def test_a_passage_cut_for_the_budget_alone_would_change_a_pair_with_a_many_token_query(
    cross_encoder_dir: Path,
) -> None:
    """Why the other side's token count is in the budget: truncation gives the odd token to the longer side."""
    from kl_retrievers._encoding import cut_long_texts

    teacher = _teacher(cross_encoder_dir)
    pair = ("," * 300, _words(2000, 1))
    naive = cut_long_texts([pair[1]], MAX_LENGTH, teacher._word_ids, teacher._longest_added)[0]
    assert len(naive) < len(pair[1])
    assert _whole_ids(teacher, [(pair[0], naive)]) != _whole_ids(teacher, [pair])  # the test above would see it
    assert _whole_ids(teacher, teacher._cut_pairs([pair])) == _whole_ids(teacher, [pair])


class _CountingTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` and records the longest text handed to its ``encode*`` methods."""

    def __init__(self, inner: Any, longest: list[int]) -> None:
        self._inner, self._longest = inner, longest

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not name.startswith("encode"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            for arg in args:
                items = arg if isinstance(arg, list) else [arg]
                for item in items:
                    texts = item if isinstance(item, tuple | list) else [item]
                    self._longest.extend(len(t) for t in texts if isinstance(t, str))
            return attr(*args, **kwargs)

        return counted


def test_the_text_handed_to_the_teachers_tokenizer_does_not_grow_with_the_passage(cross_encoder_dir: Path) -> None:
    seen: dict[int, int] = {}
    for n_words in (20_000, 200_000):  # about 100 K and 1 M characters
        teacher, longest = _teacher(cross_encoder_dir), list[int]()
        teacher.tokenizer = _CountingTokenizer(teacher.tokenizer, longest)
        if hasattr(teacher, "_plain"):  # the untruncated copy that finds where to cut
            teacher._plain = _CountingTokenizer(teacher._plain, longest)
        passage = _words(n_words, 3)
        teacher.score([("the cat", passage), ("a dog", passage + " sun")], show_progress=False)
        assert longest, "the tokenizer was not called"
        seen[len(passage)] = max(longest)
    assert all(chars <= 16 * MAX_LENGTH * 4 for chars in seen.values()), seen  # a cut, not the passage
    assert len(set(seen.values())) == 1, seen  # the same, whatever the passage's length


# ------------------------------------------------------------------ 3: control characters in TREC run ids
@pytest.mark.parametrize("bad", ["\x00", "\x1b", "\x7f", "\x07", "\x9b"])
@pytest.mark.parametrize("where", ["query", "document"])
def test_write_trec_run_refuses_ids_with_control_characters(tmp_path: Path, bad: str, where: str) -> None:
    from kl_retrievers.evaluation import write_trec_run

    ident = f"x{bad}y"
    run = {ident: {"d1": 1.0}} if where == "query" else {"q1": {ident: 1.0, "d2": 0.5}}
    path = tmp_path / "run.trec"
    with pytest.raises(ValueError) as err:
        write_trec_run(path, run)
    message = str(err.value)
    assert f"{where} id {ident!r}" in message and "control character" in message, message
    assert not path.exists()


def test_check_trec_ids_names_the_option_and_keeps_accepting_other_unicode() -> None:
    from kl_retrievers.evaluation import check_trec_ids

    check_trec_ids(["d1", "é-ü", "文書", "a\u200bb"], "document")  # not control characters (Cf is not Cc)
    with pytest.raises(ValueError, match=r"^--save-run: query id 'q\\x001' contains a control character"):
        check_trec_ids(["q1", "q\x001"], "query", "--save-run")


# ------------------------------------------------------------------ 4: Milvus ids: UTF-8 bytes, not characters
def test_milvus_refuses_an_id_longer_than_its_varchar_in_utf8_bytes(tmp_path: Path) -> None:
    pytest.importorskip("milvus_lite")
    from kl_retrievers.store.milvus import MAX_ID_LENGTH, MilvusKLStore

    store = MilvusKLStore(uri=str(tmp_path / "kl.db"), index_type="flat")
    at_limit = "é" * (MAX_ID_LENGTH // 2)  # 256 characters, 512 bytes: held
    store.add(gaussians=random_gaussians(1, 4), ids=[at_limit])
    assert [h.id for h in store.search(random_gaussians(1, 4), k=1)] == [at_limit]
    over = at_limit + "é"  # 257 characters, fewer than MAX_ID_LENGTH, but 514 bytes
    with pytest.raises(ValueError) as err:
        store.add(gaussians=random_gaussians(1, 4), ids=[over])
    assert f"Milvus ids hold {MAX_ID_LENGTH} bytes in UTF-8" in str(err.value), err.value
    assert str(err.value).endswith(f"this one {len(over.encode())}"), err.value
    assert len(store) == 1
