"""A very long text is cut before tokenizing, to a prefix with the same token ids (torch and ONNX backends).

Tokenizing a whole text before truncating it cost about 120 bytes a character whatever ``max_length`` was
(an 8 MB JSONL line took 1 GB more). The bundled MiniLM and bge tokenizers (``tokenizer.json`` files shipped
with the package) feed tiny random-weight encoders here; no download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kl_retrievers import GaussianEncoder, GaussianEncoderConfig, _encoding
from kl_retrievers.onnx import OnnxGaussianEncoder, export_onnx
from kl_retrievers.pretrained import bundled_model_path

BUNDLED = ("minilm-gauss-soup", "bge-small-unit-variance")
BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "

WORDS = [
    "tea", "leaves", "coffee", "beans", "the", "retrieval", "gaussian", "unbelievably", "xylophonist",
    "naïve", "café", "Straße", "don't", "U.S.A.", "3.14", "e-mail", "ÉCOLE", "ﬁne", "ǅemal",
]  # fmt: skip
LONG_WORDS = st.integers(95, 110).map(lambda n: ("abcdefghij" * 12)[:n])  # around max_input_chars_per_word
SPACES = st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", " " * 7, "\u2003\u2003"])
INVISIBLE = st.sampled_from(["\x00", "\x07", "\u200b", "\u200d", "\ufeff", "\u00ad", "\x7f", "\u2060"])
CJK = st.sampled_from(["中", "文字", "検索", "한국어", "ひらがな"])
COMBINING = st.sampled_from(["e\u0301", "\u0301", "a\u0308\u0323", "\u0301\u0308", "n\u0303"])
PUNCT = st.sampled_from([".", ",", "!?", "(", ")", "--", "'", '"', "…", "¿"])
PIECES = st.one_of(st.sampled_from(WORDS), LONG_WORDS, SPACES, INVISIBLE, CJK, COMBINING, PUNCT, st.text(max_size=3))
TEXTS = st.lists(PIECES, max_size=80).map("".join)


@contextmanager
def cut_at(chars_per_token: int) -> Iterator[None]:
    """Cut texts longer than ``chars_per_token`` characters per token of the budget (16 by default)."""
    with mock.patch.object(_encoding, "_CUT_CHARS_PER_TOKEN", chars_per_token):
        yield


def tiny_encoder(name: str) -> GaussianEncoder:
    """A random 1-layer BERT with the bundled model ``name``'s tokenizer ([VAR] added)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(os.fspath(bundled_model_path(name)), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tokenizer) + 1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=128,
    )
    config = GaussianEncoderConfig(dim=4, var_token=True, max_length=64, query_max_length=32)
    return GaussianEncoder(BertModel(cfg, add_pooling_layer=False), tokenizer, config, name_or_path=name).eval()


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[GaussianEncoder, OnnxGaussianEncoder]]:
    """Each bundled tokenizer in a tiny torch encoder and its float32 ONNX export."""
    root = tmp_path_factory.mktemp("long-text")
    out = {}
    for name in BUNDLED:
        enc = tiny_encoder(name)
        out[name] = enc, OnnxGaussianEncoder(export_onnx(enc, root / name, quantize=None, verify=False))
    return out


def torch_ids(enc: GaussianEncoder, texts: list[str], max_length: int) -> list[list[int]]:
    """Each text's token ids, without padding nor the [VAR] token (as the ONNX encoder's ``_token_ids``)."""
    batch = enc.tokenize(texts, max_length)
    rows = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    assert all(row[1] == enc.var_token_id for row in rows)
    return [row[:1] + row[2:] for row in rows]


def onnx_ids(enc: OnnxGaussianEncoder, texts: list[str], max_length: int) -> list[list[int]]:
    return [ids.tolist() for ids, _ in enc._token_ids(texts, max_length)]


@pytest.mark.parametrize("name", BUNDLED)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), max_length=st.integers(3, 24), per_token=st.integers(1, 3))
def test_cut_texts_give_the_whole_texts_ids(
    encoders: dict[str, tuple[GaussianEncoder, OnnxGaussianEncoder]],
    name: str,
    texts: list[str],
    max_length: int,
    per_token: int,
) -> None:
    enc, onnx_enc = encoders[name]
    if name.startswith("bge"):
        texts = [BGE_QUERY_PREFIX + t for t in texts]
    with cut_at(10**9):  # never cut: the whole texts, as before
        expected = torch_ids(enc, texts, max_length)
        assert onnx_ids(onnx_enc, texts, max_length) == expected
    with cut_at(per_token):  # cut at 1-3 characters a token: the cuts fall everywhere in these texts
        assert torch_ids(enc, texts, max_length) == expected
        assert onnx_ids(onnx_enc, texts, max_length) == expected
        counts = onnx_enc._token_counts(texts, max_length)
    assert counts.tolist() == [len(ids) for ids in expected]


@pytest.mark.parametrize("name", BUNDLED)
def test_boundary_cases_give_the_whole_texts_ids(
    encoders: dict[str, tuple[GaussianEncoder, OnnxGaussianEncoder]], name: str
) -> None:
    enc, onnx_enc = encoders[name]
    long_word = "x" * 100
    texts = [
        "tea " * 5 + long_word + "y" + " coffee" * 9,  # a word just over max_input_chars_per_word: one [UNK]
        "tea " * 5 + " " * 500 + "coffee " * 9,  # a whitespace run: no tokens
        "tea " * 5 + "\u200b\x00" * 300 + "beans " * 9,  # dropped characters: no tokens
        "unbelievably" * 3 + " " + "unbelievably " * 9,  # word pieces
        "中文字" * 40,  # one token a character
        "café" + "\u0301" * 50 + " naïve" * 20,  # combining marks
        " " * 3000,  # whitespace only: no prefix has the tokens, kept whole
        "abc" * 3000,  # one long word: kept whole
    ]
    for max_length in (3, 4, 8, 16):
        with cut_at(10**9):
            expected = torch_ids(enc, texts, max_length)
        with cut_at(1):
            assert torch_ids(enc, texts, max_length) == expected
            assert onnx_ids(onnx_enc, texts, max_length) == expected


class _Spy:
    """A ``tokenizers.Tokenizer`` stand-in that fails on a text longer than ``most`` characters."""

    def __init__(self, inner: Any, most: int) -> None:
        self._inner, self._most = inner, most

    def _check(self, texts: list[str]) -> None:
        longest = max((len(t) for t in texts), default=0)
        assert longest <= self._most, f"the tokenizer was given a text of {longest} characters"

    def encode_batch(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        self._check(texts)
        return self._inner.encode_batch(texts, *args, **kwargs)

    def encode_batch_fast(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        self._check(texts)
        return self._inner.encode_batch_fast(texts, *args, **kwargs)

    def get_added_tokens_decoder(self) -> Any:
        return self._inner.get_added_tokens_decoder()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_20_mb_text_reaches_the_tokenizer_cut(
    encoders: dict[str, tuple[GaussianEncoder, OnnxGaussianEncoder]], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer never sees more than a few thousand characters of a 20 MB text (it failed fast before)."""
    enc, onnx_enc = encoders["minilm-gauss-soup"]
    big = "tea leaves and coffee beans " * 750_000  # 21 MB: about 2.5 GB to tokenize whole
    short = big[:2000]
    most = 16 * 64 * 4  # 16 characters a token of the budget, grown once at most
    if backend == "torch":
        tok_class = type(enc.tokenizer)
        call = tok_class.__call__

        def spy(self: Any, text: Any, *args: Any, **kwargs: Any) -> Any:
            _Spy(None, most)._check(list(text))
            return call(self, text, *args, **kwargs)

        monkeypatch.setattr(tok_class, "__call__", spy)
        model: Any = enc
    else:
        real = onnx_enc._tokenizer_for
        monkeypatch.setattr(onnx_enc, "_tokenizer_for", lambda max_length: _Spy(real(max_length), most))
        model = onnx_enc
    for encode in (model.encode_documents, model.encode_queries):
        got = encode([big, "coffee", short], max_length=64)
        np.testing.assert_array_equal(got.mean[0], got.mean[2])  # the same tokens as its first 2000 characters
        np.testing.assert_array_equal(got.var[0], got.var[2])
    big_counts = onnx_enc._token_counts([big], 64) if backend == "onnx" else None
    assert big_counts is None or big_counts.tolist() == [63]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_texts_under_the_cut_take_the_usual_path(
    encoders: dict[str, tuple[GaussianEncoder, OnnxGaussianEncoder]], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No extra tokenizing for texts of at most 16 characters a token of the budget."""
    enc, onnx_enc = encoders["bge-small-unit-variance"]
    model: Any = enc if backend == "torch" else onnx_enc

    def never(texts: list[str]) -> Any:
        raise AssertionError(f"word ids asked for {len(texts)} texts")

    monkeypatch.setattr(model, "_word_ids", never)
    texts = ["tea " * 252, "coffee", ""]  # 1008 characters: 16 a token of 63 (max_length 64 less [VAR])
    got = model.encode_documents(texts, max_length=64)
    assert got.mean.shape == (3, 4)
    with pytest.raises(AssertionError, match="word ids asked"):
        model.encode_documents(["tea " * 252 + "x"], max_length=64)


def test_left_truncation_is_not_cut() -> None:
    """A tokenizer set to keep a text's end is given the whole text (a prefix would be wrong)."""
    enc = tiny_encoder("minilm-gauss-soup")
    enc.tokenizer.truncation_side = "left"
    text = "tea " * 2000 + "coffee beans"
    with cut_at(1):
        ids = torch_ids(enc, [text], 8)[0]
    assert enc.tokenizer.convert_ids_to_tokens(ids[-3:-1]) == ["coffee", "beans"]


def test_cut_long_texts_keeps_short_lists_as_they_are() -> None:
    texts = ["a b c", "d"]
    assert _encoding.cut_long_texts(texts, 8, lambda pieces: pytest.fail("tokenized")) is texts
    words: list[list[int | None]] = [[0, 1, 2, 3, 3, 4]]  # budget 3: words 0-2, then word 3 (2 tokens) and 4
    assert _encoding._fills_budget(words[0], 3)
    assert not _encoding._fills_budget([0, 1, 2, 3], 3)  # the last kept word is next to the last
    assert not _encoding._fills_budget([0, 1, None, 5], 2)


#: Added tokens of several words (as GPT-style and Llama vocabularies have): cut in two, each is several words.
ADDED_SPECIAL = ["</s>", "<|endoftext|>", "<|reserved_special_token_0|>", "[unused_a_b_c]"]
ADDED_PLAIN = ["tea-pot time", "x.y.z"]  # not special: normalised and matched anywhere, even inside a word


@pytest.fixture(scope="module")
def added_encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[GaussianEncoder, OnnxGaussianEncoder]:
    """The bundled MiniLM tokenizer with multi-word added tokens, in a tiny torch encoder and its ONNX export."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = os.fspath(bundled_model_path("minilm-gauss-soup"))
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ADDED_SPECIAL})  # type: ignore[dict-item]
    tokenizer.add_tokens(ADDED_PLAIN)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tokenizer) + 1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=128,
    )
    config = GaussianEncoderConfig(dim=4, var_token=True, max_length=64)
    enc = GaussianEncoder(BertModel(cfg, add_pooling_layer=False), tokenizer, config, name_or_path="added").eval()
    folder = tmp_path_factory.mktemp("added-tokens") / "onnx"
    return enc, OnnxGaussianEncoder(export_onnx(enc, folder, quantize=None, verify=False))


def test_an_added_token_across_the_default_cut_is_kept_whole(
    added_encoders: tuple[GaussianEncoder, OnnxGaussianEncoder],
) -> None:
    """The review's case: the default cut (48 characters, 3 tokens) fell inside ``<|reserved_special_token_0|>``,
    whose pieces (``<``, ``|``, ``reserved``...) were far enough from the prefix's last word to be kept."""
    enc, onnx_enc = added_encoders
    special = "<|reserved_special_token_0|>"
    text = " " * 35 + special + " tea" * 10
    with cut_at(10**9):
        expected = torch_ids(enc, [text], 4)
    assert enc.tokenizer.convert_ids_to_tokens(expected[0]) == ["[CLS]", special, "[SEP]"]
    assert torch_ids(enc, [text], 4) == expected
    assert onnx_ids(onnx_enc, [text], 4) == expected
    assert onnx_enc._token_counts([text], 4).tolist() == [3]
    for special in ADDED_SPECIAL + ADDED_PLAIN:  # every place an added token can fall across a cut
        for pad in range(0, 30):
            text = "." * pad + special + " tea" * 40
            for max_length in (3, 5, 8):
                with cut_at(10**9):
                    expected = torch_ids(enc, [text], max_length)
                for per_token in (1, 2, 3, 5):
                    with cut_at(per_token):
                        assert torch_ids(enc, [text], max_length) == expected, (special, pad, max_length, per_token)


ADDED = st.sampled_from(ADDED_SPECIAL + ADDED_PLAIN)
ADDED_PIECES = st.one_of(PIECES, ADDED, ADDED, st.sampled_from(["<|", "|>", "tea-", " tea", "."]))
#: An added token early in the text (among the kept tokens, where a cut inside it changed them), then anything.
ADDED_TEXTS = st.tuples(
    st.lists(st.one_of(SPACES, INVISIBLE, PUNCT), max_size=6), ADDED, st.lists(ADDED_PIECES, max_size=50)
).map(lambda parts: "".join(parts[0]) + parts[1] + "".join(parts[2]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(ADDED_TEXTS, min_size=1, max_size=4),
    max_length=st.integers(3, 8),
    per_token=st.integers(1, 3),
)
def test_cut_texts_with_added_tokens_give_the_whole_texts_ids(
    added_encoders: tuple[GaussianEncoder, OnnxGaussianEncoder], texts: list[str], max_length: int, per_token: int
) -> None:
    enc, onnx_enc = added_encoders
    with cut_at(10**9):
        expected = torch_ids(enc, texts, max_length)
        assert onnx_ids(onnx_enc, texts, max_length) == expected
    with cut_at(per_token):
        assert torch_ids(enc, texts, max_length) == expected
        assert onnx_ids(onnx_enc, texts, max_length) == expected


def test_the_margin_for_added_tokens() -> None:
    """The word after the budget's last must end the longest added token's length before the prefix's end."""
    words: list[int | None] = [0, 1, 2, 3, 4]
    ends = [3, 5, 9, 12, 15]  # budget 2: words 0 and 1, then word 2 ends at 9
    assert _encoding._fills_budget(words, 2, ends, 9)
    assert not _encoding._fills_budget(words, 2, ends, 8)
    calls: list[int] = []

    def longest(margin: int) -> Any:
        def ask() -> int:
            calls.append(margin)
            return margin

        return ask

    texts = ["tea " * 10, "x"]  # 40 characters: cut to 32 (16 a token of 2)
    tokens = [([0, 1, 2, 3, 4, 5, 6, 7], [(4 * w, 4 * w + 3) for w in range(8)])]  # word 2 ends at 11
    assert _encoding.cut_long_texts(texts, 2, lambda pieces: tokens, longest(21)) == ["tea " * 8, "x"]
    assert _encoding.cut_long_texts(texts, 2, lambda pieces: tokens, longest(22)) == texts  # 11 > 32 - 22
    assert calls == [21, 22]  # asked once a call
    assert _encoding.cut_long_texts(["x"], 2, lambda pieces: tokens, longest(99)) == ["x"]
    assert calls == [21, 22]  # not asked: no long text
