"""Fix I1: the teacher's cut of two long texts, counting long texts in pieces, link saves resolved once, and ids.

* :meth:`CrossEncoderTeacher._cut_pairs` cut the shorter of two long texts first; a cut can have MORE tokens than
  its whole text (a word over 100 characters is one ``[UNK]`` whole, several pieces cut), so the shorter side became
  the longer one and took the odd token of an odd room: other ids, another score. Scores cached by that code are
  left behind (:func:`teacher_identity` names the pair version). Both texts were also tokenized whole to count them.
* Saves through a link judged the link's target, then :func:`~kl_retrievers._io.atomic_dir` resolved the link
  again: a link re-pointed in between replaced a folder that was never judged. It is resolved once now.
* ``train --resume --checkpoint-dir LINK`` needs ``--overwrite`` as a new run does (it was let through for a while,
  and its first checkpoint then replaced the link); the ONNX cache read a link (or another model's export) at an
  entry; ``export_onnx`` wrote into the cache through a plain path or a linked parent; a link inside the folder it
  points to (``cur -> .``) replaced its own folder; lone surrogates passed the TREC id check.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_tiny_encoder, random_gaussians

MINILM_TOKENIZER = Path(__file__).resolve().parents[1] / "kl_retrievers/pretrained/minilm-unit-variance/tokenizer.json"


def _teacher(max_length: int) -> Any:
    """A teacher with the bundled MiniLM tokenizer and no model: only its tokenizing is used."""
    from tokenizers import Tokenizer

    from kl_retrievers.training.teacher import CrossEncoderTeacher

    t = object.__new__(CrossEncoderTeacher)
    t.tokenizer = Tokenizer.from_file(os.fspath(MINILM_TOKENIZER))
    t.tokenizer.enable_truncation(max_length=max_length)
    t.tokenizer.no_padding()
    t._plain = Tokenizer.from_str(t.tokenizer.to_str())
    t._plain.no_truncation()
    t.max_length = max_length
    return t


def _ids(t: Any, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    return [(e.ids, e.type_ids) for e in t.tokenizer.encode_batch(pairs)]


# ------------------------------------------------------------------ 1: the cut keeps which side is the longer
def test_a_cut_with_more_tokens_than_its_whole_text_keeps_the_pair_ids() -> None:
    t = _teacher(8)  # room 8 - 3 = 5 (odd): the longer side keeps 3 tokens, the shorter 2
    q = "a " * 14 + "qz" * 75  # 15 tokens whole (the 150-character word is one [UNK]); cut, the word is pieces
    cut_q = t._cut_pairs([(q, "x")])[0][0]
    n_cut = len(t._plain.encode(cut_q, add_special_tokens=False).ids)
    assert n_cut > 15  # the premise: the cut has more tokens than the whole text
    p = "the " * (n_cut - 2)  # long, with more tokens than the whole query and fewer than its cut
    whole = _ids(t, [(q, p)])
    assert whole == _ids(t, t._cut_pairs([(q, p)])), "the cut changed the pair's ids"
    assert whole[0][0][1:4] == [*t.tokenizer.encode("a a").ids[1:3], t.tokenizer.token_to_id("[SEP]")]


def test_cut_pairs_of_two_long_texts_give_the_whole_pairs_ids() -> None:
    rng = random.Random(3)
    words = ["the", "gaussian", "kl", "retrieval", "x" * 120, "qz" * 60, "东京", "naïve", "U.S.A.", "don't"]
    for max_length in (8, 9, 16, 17):
        t = _teacher(max_length)
        limit = 16 * max_length
        pairs = []
        for _ in range(30):
            texts = [" ".join(rng.choice(words) for _ in range(rng.randint(limit // 5, limit))) for _ in "qp"]
            pairs.append((texts[0][: rng.randint(limit + 1, 4 * limit)], texts[1][: rng.randint(limit + 1, 4 * limit)]))
        assert _ids(t, pairs) == _ids(t, t._cut_pairs(pairs)), max_length


def test_teacher_identity_names_the_pair_version(tmp_path: Path) -> None:
    """Scores cached by the code that could cut a pair into other ids are not read by this one."""
    from kl_retrievers.training.teacher import teacher_identity

    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "tokenizer.json").write_bytes(b"{}")
    h = hashlib.sha256()
    for name in ("model.onnx", "tokenizer.json"):
        h.update(name.encode() + b"\0" + (tmp_path / name).read_bytes())
    earlier = f"{h.hexdigest()[:16]}-len512"  # the name the earlier code gave this teacher's cache
    assert teacher_identity(tmp_path, 512) != earlier
    assert teacher_identity(tmp_path, 512).endswith("-len512")


# ------------------------------------------------------------------ 2: long texts counted in pieces
def test_long_texts_are_counted_in_pieces_with_the_whole_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.training.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_COUNT_CHARS", 300)
    t = _teacher(8)
    rng = random.Random(0)
    words = ["the", "kl", "gaussian", "a" * 120, "Straße" * 30, "东京日本", "ﬁ", "x\u0301", "--", "3.14", "\u00a0"]
    texts = ["hello a b " + "z" * 286 + " c d " + "the " * 50]  # the next piece starts where the first did
    for _ in range(30):
        text = "".join(rng.choice(words) + rng.choice([" ", "  ", ",", "", "\n"]) for _ in range(rng.randint(50, 600)))
        texts.append(rng.choice(["", "  "]) + text)
    for text in texts:
        assert t._count(text) == len(t._plain.encode(text, add_special_tokens=False).ids)


class _Recording:
    """A tokenizer that records the longest text it was given."""

    def __init__(self, real: Any) -> None:
        self.real, self.longest = real, 0

    def encode(self, text: str, *a: Any, **k: Any) -> Any:
        self.longest = max(self.longest, len(text))
        return self.real.encode(text, *a, **k)

    def encode_batch(self, texts: list[str], *a: Any, **k: Any) -> Any:
        self.longest = max([self.longest, *map(len, texts)])
        return self.real.encode_batch(texts, *a, **k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _longest_first(t: Any, q: str, p: str) -> list[int]:
    """The ids of the whole pair, truncated ``longest_first`` by hand (tokenizing the pair itself would list every
    pairing of the two texts' overflowing pieces)."""
    a, b = (t._plain.encode(text, add_special_tokens=False).ids for text in (q, p))
    room = t.max_length - 3
    n1, n2 = sorted((len(a), len(b)))
    if n1 + max(n1, room - n1) > room:
        n1, n2 = room // 2, room // 2 + room % 2
    keep_a, keep_b = (n2, n1) if len(a) > len(b) else (n1, n2)
    cls, sep = t.tokenizer.token_to_id("[CLS]"), t.tokenizer.token_to_id("[SEP]")
    return [cls, *a[:keep_a], sep, *b[:keep_b], sep]


def test_two_long_texts_in_an_odd_room_are_never_tokenized_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import kl_retrievers.training.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "_COUNT_CHARS", 1000, raising=False)
    t = _teacher(8)  # room 8 - 3 = 5 (odd): both texts' token counts are needed
    big = "hello world retrieval gaussian " * 700  # 21,700 characters
    for q, p in ((big, big + "x"), (big + " kl", big), (big, big)):
        t._plain = _Recording(t._plain)
        (cut,) = t._cut_pairs([(q, p)])
        assert t._plain.longest <= 2000 < len(big), t._plain.longest
        t._plain = t._plain.real
        assert t.tokenizer.encode(*cut).ids == _longest_first(t, q, p)


# ------------------------------------------------------------------ 3: a link is resolved once per save
def _repoint_after(module: Any, name: str, link: Path, to: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``module.name`` (the save's check) re-point ``link`` to ``to`` once it has judged it."""
    real = getattr(module, name)

    def check_then_repoint(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        tmp = link.with_name(link.name + ".new")
        tmp.symlink_to(to)
        os.replace(tmp, link)  # ln -sfn meanwhile
        return out

    monkeypatch.setattr(module, name, check_then_repoint)


def _save_encoder(target: Path) -> None:
    make_tiny_encoder(dim=4).save_pretrained(target)


def _save_gaussians(target: Path) -> None:
    from kl_retrievers._io import save_gaussians

    save_gaussians(target, random_gaussians(2, 4), ids=["a", "b"])


def _save_store(target: Path) -> None:
    from kl_retrievers.store.faiss import KLStore

    store = KLStore()
    store.add(gaussians=random_gaussians(2, 4), ids=["a", "b"])
    store.save(target)


def _save_hybrid(target: Path) -> None:
    from kl_retrievers.hybrid import KLHybridStore

    store = KLHybridStore(fusion="rrf")
    store.add(["a b", "c d"], gaussians=random_gaussians(2, 4), ids=["a", "b"])
    store.save(target)


SAVES = {
    "save_pretrained": ("kl_retrievers.encoder", "check_replace_target", _save_encoder),
    "save_gaussians": ("kl_retrievers._io", "check_replace_target", _save_gaussians),
    "KLStore.save": ("kl_retrievers.store.faiss", "check_replace_target", _save_store),
    "KLHybridStore.save": ("kl_retrievers.hybrid", "check_replace_target", _save_hybrid),
}


@pytest.mark.parametrize("save", sorted(SAVES))
def test_a_link_repointed_after_the_check_does_not_redirect_the_save(
    save: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module_name, check, write = SAVES[save]
    write(tmp_path / "v3")  # an earlier save: the link's target is judged fine
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("years of work")
    (tmp_path / "current").symlink_to("v3")
    before = sorted(os.listdir(tmp_path / "v3"))
    _repoint_after(importlib.import_module(module_name), check, tmp_path / "current", "thesis", monkeypatch)
    write(tmp_path / "current")
    assert os.listdir(tmp_path / "thesis") == ["thesis.tex"], "a folder never judged was replaced"
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path / "v3")) == before  # the judged folder got the save


def test_an_export_through_a_link_repointed_after_the_check_writes_the_judged_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    from kl_retrievers import onnx as onnx_module

    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(tmp_path / "cache"))
    (tmp_path / "v3").mkdir()
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("years of work")
    (tmp_path / "current").symlink_to("v3")
    _repoint_after(onnx_module, "_check_export_target", tmp_path / "current", "thesis", monkeypatch)
    onnx_module.export_onnx(make_tiny_encoder(dim=4), tmp_path / "current", quantize=None, verify=False)
    assert os.listdir(tmp_path / "thesis") == ["thesis.tex"]
    assert (tmp_path / "v3" / "model.onnx").is_file()


# ------------------------------------------------------------------ 7: a link inside its own target; a link to a file
def test_a_link_inside_the_folder_it_points_to_is_refused(tmp_path: Path) -> None:
    from kl_retrievers.onnx import export_onnx

    p = tmp_path / "p"
    p.mkdir()
    (p / "keep.txt").write_text("x")
    (p / "cur").symlink_to(".")
    enc = make_tiny_encoder(dim=4)
    with pytest.raises(ValueError, match=r"cur: it is a symbolic link to .*, which holds the link itself"):
        enc.save_pretrained(p / "cur", overwrite=True)
    with pytest.raises(ValueError, match=r"cur: it is a symbolic link to .*, which holds the link itself"):
        export_onnx(enc, p / "cur", quantize=None, verify=False, overwrite=True)
    assert sorted(os.listdir(p)) == ["cur", "keep.txt"]


def test_a_link_to_a_file_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("mine")
    (tmp_path / "lf").symlink_to("a.txt")
    with pytest.raises(NotADirectoryError, match=r"lf \(a symbolic link to .*a\.txt\): it exists and is not a folder"):
        make_tiny_encoder(dim=4).save_pretrained(tmp_path / "lf", overwrite=True)
    assert (tmp_path / "a.txt").read_text() == "mine" and (tmp_path / "lf").is_symlink()


# ------------------------------------------------------------------ 6: no export writes into the ONNX cache
def test_export_into_the_onnx_cache_is_refused_by_path_or_linked_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kl_retrievers.onnx import export_onnx

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(cache))
    (tmp_path / "cachelink").symlink_to(cache)
    enc = make_tiny_encoder(dim=4)
    for target in (cache / "x-float32-000", tmp_path / "cachelink" / "y-float32-000"):
        with pytest.raises(ValueError, match="the ONNX cache of load_model"):
            export_onnx(enc, target, quantize=None, verify=False)
    assert os.listdir(cache) == []


# ------------------------------------------------------------------ 5: the ONNX cache reads only its own exports
def test_the_onnx_cache_does_not_read_another_models_export_at_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnx")
    from kl_retrievers import GaussianEncoder, load_model
    from kl_retrievers.onnx import export_onnx

    monkeypatch.setenv("KL_RETRIEVERS_ONNX_CACHE", os.fspath(tmp_path / "cache"))
    a = make_tiny_encoder(dim=6, seed=1).save_pretrained(tmp_path / "A")
    b = make_tiny_encoder(dim=6, seed=2).save_pretrained(tmp_path / "B")
    want = load_model(os.fspath(b), backend="onnx", quantize=None).encode_queries(["hello world"]).mean
    (entry,) = list((tmp_path / "cache").iterdir())
    planted = export_onnx(GaussianEncoder.from_pretrained(a), tmp_path / "planted-a", quantize=None, verify=False)
    for as_link in (True, False):  # A's export linked, then copied, at B's entry
        if entry.is_symlink():
            entry.unlink()
        else:
            shutil.rmtree(entry)
        if as_link:
            entry.symlink_to(planted)
        else:
            shutil.copytree(planted, entry)
        got = load_model(os.fspath(b), backend="onnx", quantize=None).encode_queries(["hello world"]).mean
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not entry.is_symlink()
        assert json.loads((planted / "config.json").read_text())  # what the link named is left as it was


# ------------------------------------------------------------------ 4: --resume through a linked checkpoint folder
# (since F1, a link there is refused with --resume as without it, as docs/cli.md says: its checkpoints would replace
# the link, not the folder it points to; the runs are in test_save_local_and_resume_links.py)
def test_resume_through_a_linked_checkpoint_dir_is_refused_as_a_new_run(tmp_path: Path) -> None:
    from kl_retrievers.training.cli import check_checkpoint_dir

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text("{}")
    (tmp_path / "ck-link").symlink_to("ck")
    link = os.fspath(tmp_path / "ck-link")
    with pytest.raises(ValueError, match=r"symbolic link.*pass that folder: --checkpoint-dir .*ck$"):
        check_checkpoint_dir(link, tmp_path / "out", [], resume=True)
    with pytest.raises(ValueError, match="symbolic link"):  # a new run replaces the link: --overwrite
        check_checkpoint_dir(link, tmp_path / "out", [])
    assert check_checkpoint_dir(link, tmp_path / "out", [], resume=True, overwrite=True) == tmp_path / "ck-link"
    assert check_checkpoint_dir(os.fspath(tmp_path / "ck"), tmp_path / "out", [], resume=True) == tmp_path / "ck"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty-link").symlink_to("empty")
    with pytest.raises(ValueError, match="symbolic link"):  # no checkpoint to resume from through it
        check_checkpoint_dir(os.fspath(tmp_path / "empty-link"), tmp_path / "out", [], resume=True)


# ------------------------------------------------------------------ 8: lone surrogates in ids
def test_trec_ids_with_a_lone_surrogate_are_refused_before_writing(tmp_path: Path) -> None:
    from kl_retrievers.evaluation import check_trec_ids, write_trec_run

    with pytest.raises(ValueError, match=r"query id 'q\\ud800x' contains a lone surrogate"):
        check_trec_ids(["q1", "q\ud800x"], "query")
    with pytest.raises(ValueError, match=r"document id 'd\\udfff' contains a lone surrogate"):
        write_trec_run(tmp_path / "r.trec", {"q": {"d\udfff": 1.0}})
    check_trec_ids(["q\U0001f600"], "query")  # a paired character is fine
