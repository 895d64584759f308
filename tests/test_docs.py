"""Every code block in README.md and docs/ is executed or checked, so none can rot.

* ```python blocks run, page by page (``test_python_blocks_run``).
* ``kl-retrievers`` command lines (```bash blocks, plain ``` blocks, and complete commands in inline code)
  run in-process in a sandbox whose ``../shared/datasets/<name>`` are small slices of the real data; only
  the substitutions in :data:`REWRITES` differ from the page. Transcripts (``$ command`` then its output)
  must print what the page shows, numbers aside.
* ``make``, ``pip install`` and ``python benchmarks/...`` lines are checked, not run (the Makefile target,
  the package extras, the script's ``--help`` and the options named exist); the ``train`` usage synopsis
  is checked against the parser, the JSON example against the training-data reader, ```text blocks
  (docs/cli.md) against the generator.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kl_retrievers.cli import DATA_DIR, build_parser, main
from kl_retrievers.pretrained import bundled_model_path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)

# ------------------------------------------------------------------ what runs instead of what the page says
#: (documented text as a regex, what runs, why). Applied in order to every ``kl-retrievers`` line.
REWRITES: list[tuple[str, str, str]] = [
    (r"<data>", "scifact", "placeholder for any shared dataset"),
    (r"<split>", "test", "placeholder"),
    (r"\bDATASET\b", "../shared/datasets/scifact", "placeholder"),
    (r"(?<![\w./-])datasets/", "../shared/datasets/", "the folder that fetch_beir(name, 'datasets') fills"),
    (r"--baseline NAME\b", "--baseline bm25", "placeholder"),
    (
        r"--model PATH\b",
        f"--model {bundled_model_path('minilm-gauss-zs').as_posix()}",
        "placeholder: a saved model folder",
    ),
    (
        r"--model kl_retrievers/pretrained/",
        f"--model {bundled_model_path('minilm-gauss-lora').parent.as_posix()}/",
        "a bundled model folder given relative to the repository root",
    ),
    (
        r"--model runs/wise/\S+",
        f"--model {bundled_model_path('minilm-gauss-lora').as_posix()}",
        "a folder that `python benchmarks/wise_ft.py export` writes (benchmark lines are checked, not run)",
    ),
    (r"^kl-retrievers train .*", r"\g<0> --steps 20", "1000 default steps -> 20 (the last --steps wins)"),
]
#: The sandbox: a fresh folder per test beside ``shared/datasets/``, whose datasets keep their names and
#: layout but hold, per qrels split, the first SLICE_QUERIES judged queries with at most SLICE_JUDGED
#: judgements each, the judged documents, and the corpus' first SLICE_FILLER other documents.
SLICE_QUERIES, SLICE_JUDGED, SLICE_FILLER = 5, 5, 30
#: Files a page assumes the reader has, put in the sandbox: README's own ``corpus.jsonl``.
GIVEN_FILES = {"corpus.jsonl": DATA_DIR / "demo_corpus.jsonl"}


def rewrite(command: str) -> str:
    for pattern, replacement, _why in REWRITES:
        command = re.sub(pattern, replacement, command)
    return command


# ------------------------------------------------------------------ collecting the blocks and commands
def fenced_blocks() -> list[tuple[str, int, str, str]]:
    """(page, line of the opening fence, language, dedented code) of every fenced block."""
    return [
        (page.relative_to(REPO).as_posix(), text.count("\n", 0, m.start()) + 1, m.group(1), textwrap.dedent(m.group(2)))
        for page in PAGES
        for text in [page.read_text()]
        for m in FENCE.finditer(text)
    ]


FENCED = fenced_blocks()


def blocks(lang: str) -> list[tuple[str, int, str]]:
    return [(page, line, code) for page, line, block_lang, code in FENCED if block_lang == lang]


PREFIXES = {"kl-retrievers": "cli", "make": "make", "pip": "pip", "python benchmarks/": "benchmark"}


def kind(command: str) -> str | None:
    for prefix, name in PREFIXES.items():
        if command == prefix or command.startswith(prefix if prefix.endswith("/") else prefix + " "):
            return name
    return None


@dataclass(frozen=True)
class Doc:
    """One documented command line and, for transcripts, the output the page shows for it."""

    where: str
    command: str
    output: str | None = None
    inline: bool = False


def strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def is_command_block(lang: str, code: str) -> bool:
    lines = [line.removeprefix("$ ") for line in code.splitlines()]
    return lang == "bash" or (lang == "" and any(kind(line) for line in lines))


def is_synopsis(code: str) -> bool:
    return "[--" in code


def block_commands(where: str, code: str) -> list[Doc]:
    lines = code.splitlines()
    if any(line.startswith("$ ") for line in lines):  # a transcript: "$ command", then what it printed
        found: list[tuple[str, list[str]]] = []
        for line in lines:
            if line.startswith("$ "):
                found.append((strip_comment(line[2:]), []))
            elif found:
                found[-1][1].append(line)
        return [Doc(where, command, "\n".join(out)) for command, out in found]
    return [Doc(where, strip_comment(line)) for line in lines if strip_comment(line)]


COMMAND_BLOCKS = {
    f"{page}:{line}": block_commands(f"{page}:{line}", code)
    for page, line, lang, code in FENCED
    if is_command_block(lang, code) and not is_synopsis(code)
}
SYNOPSES = [(f"{page}:{line}", code) for page, line, lang, code in FENCED if lang == "" and is_synopsis(code)]


def inline_commands() -> list[Doc]:
    """Commands in inline code (`kl-retrievers ...`, `make ...`, ...), outside fenced blocks."""
    span = re.compile(r"`((?:kl-retrievers|python benchmarks/|make |pip install )[^`]*)`")
    found = []
    for page in PAGES:
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), page.read_text())
        for match in span.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{page.relative_to(REPO).as_posix()}:{line}"
            found.append(Doc(where, " ".join(match.group(1).split()), inline=True))
    return found


INLINE = inline_commands()
ALL_COMMANDS = [doc for docs in COMMAND_BLOCKS.values() for doc in docs] + INLINE


def is_mention(doc: Doc) -> bool:
    """Inline `kl-retrievers evaluate` or `kl-retrievers evaluate --baseline ...` names a subcommand; no more."""
    return doc.inline and (len(doc.command.split()) <= 2 or "..." in doc.command)


def unique_inline_cli() -> list[Doc]:
    seen = {rewrite(doc.command) for docs in COMMAND_BLOCKS.values() for doc in docs}
    found = []
    for doc in INLINE:
        if kind(doc.command) == "cli" and not is_mention(doc) and rewrite(doc.command) not in seen:
            seen.add(rewrite(doc.command))
            found.append(doc)
    return found


INLINE_CLI = unique_inline_cli()


def test_there_are_blocks_to_check() -> None:
    assert len(blocks("python")) >= 3 and len(COMMAND_BLOCKS) >= 3 and len(INLINE_CLI) >= 3


def test_every_code_block_is_checked() -> None:
    """A new kind of block (or command) needs a checker here before it can land."""
    unchecked = []
    for page, line, lang, code in FENCED:
        where = f"{page}:{line}"
        if lang == "python" or lang == "json" or (lang == "text" and page == "docs/cli.md"):
            continue
        if is_command_block(lang, code):
            if not is_synopsis(code):
                unchecked += [f"{doc.where}: {doc.command}" for doc in COMMAND_BLOCKS[where] if not kind(doc.command)]
            continue
        if lang == "":  # formulas: plain text, nothing to run
            continue
        unchecked.append(f"{where}: a ```{lang} block")
    assert not unchecked, "no test checks these; add a checker to tests/test_docs.py:\n" + "\n".join(unchecked)


# ------------------------------------------------------------------ python blocks
PAGES_WITH_PYTHON = sorted({page for page, _, _ in blocks("python")})


@pytest.mark.integration
@pytest.mark.parametrize("page", PAGES_WITH_PYTHON)
def test_python_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's python blocks run in order in one namespace, like a reader following the page."""
    monkeypatch.chdir(tmp_path)  # anything a block saves lands under tmp_path
    for name, source in GIVEN_FILES.items():
        shutil.copy(source, tmp_path / name)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block_page, line, code in blocks("python"):
        if block_page == page:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)


# ------------------------------------------------------------------ kl-retrievers command lines
CLI_COMMANDS = [doc for doc in ALL_COMMANDS if kind(doc.command) == "cli"]


@pytest.mark.parametrize("doc", CLI_COMMANDS, ids=[f"{d.where}:{d.command}" for d in CLI_COMMANDS])
def test_command_lines_parse(doc: Doc) -> None:
    """Fast (no model): every documented command line, as run, parses; a mention names a real subcommand."""
    parser = build_parser()
    argv = shlex.split(rewrite(doc.command))[1:]
    argv = argv[: argv.index(">>")] if ">>" in argv else argv
    if is_mention(doc):
        assert argv[0] in subcommands(parser), f"{doc.where}: no subcommand {argv[0]!r}"
        return
    try:
        parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on an unknown option or a missing argument
        if exc.code != 0:  # 0: --help / --version
            pytest.fail(f"{doc.where}: `{doc.command}` does not parse (exit {exc.code})")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the parser has no subcommands")


def slice_beir(src: Path, dst: Path) -> None:
    """The same BEIR layout with a few queries per split, their judged documents and some others."""
    (dst / "qrels").mkdir(parents=True)
    queries: set[str] = set()
    judged: set[str] = set()
    for qrels in sorted((src / "qrels").glob("*.tsv")):
        header, *rows = qrels.read_text(encoding="utf-8").splitlines()
        counts: dict[str, int] = {}
        kept = [header]
        for row in rows:
            qid, did = row.split("\t")[:2]
            if (qid not in counts and len(counts) == SLICE_QUERIES) or counts.get(qid, 0) == SLICE_JUDGED:
                continue
            counts[qid] = counts.get(qid, 0) + 1
            kept.append(row)
            judged.add(did)
        queries.update(counts)
        (dst / "qrels" / qrels.name).write_text("\n".join(kept) + "\n", encoding="utf-8")
    corpus, filler = [], 0
    with (src / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            if json.loads(line)["_id"] in judged:
                corpus.append(line)
            elif filler < SLICE_FILLER:
                corpus.append(line)
                filler += 1
    (dst / "corpus.jsonl").write_text("".join(corpus), encoding="utf-8")
    with (src / "queries.jsonl").open(encoding="utf-8") as lines:
        kept_queries = [line for line in lines if json.loads(line)["_id"] in queries]
    (dst / "queries.jsonl").write_text("".join(kept_queries), encoding="utf-8")


@pytest.fixture(scope="session")
def docs_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/shared/datasets/<name>``: slices of every shared BEIR dataset; ``<root>/cache``: encodings."""
    root = tmp_path_factory.mktemp("docs-sandbox")
    names = sorted(p.name for p in SHARED_DATASETS.glob("*") if (p / "qrels").is_dir())
    if "scifact" not in names:
        pytest.fail(f"the shared datasets are missing at {SHARED_DATASETS}; tests expect ../shared/datasets")
    for name in names:
        slice_beir(SHARED_DATASETS / name, root / "shared" / "datasets" / name)
    return root


@pytest.fixture
def sandbox(docs_sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working folder beside the sliced ``shared/``, holding the files a page assumes."""
    work = Path(tempfile.mkdtemp(prefix="repo-", dir=docs_sandbox))
    for name, source in GIVEN_FILES.items():
        shutil.copy(source, work / name)
    monkeypatch.chdir(work)
    monkeypatch.setenv("KL_RETRIEVERS_CACHE", str(docs_sandbox / "cache"))  # shared by the tests, not ~/.cache
    yield work
    shutil.rmtree(work, ignore_errors=True)


def run_cli(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run one ``kl-retrievers`` line in-process; returns stdout (also appended to a ``>> FILE`` target)."""
    argv = shlex.split(command)
    target = None
    if ">>" in argv:
        argv, target = argv[: argv.index(">>")], argv[argv.index(">>") + 1]
    capsys.readouterr()
    try:
        code: object = main(argv[1:])
    except SystemExit as exc:  # --help
        code = exc.code or 0
    finally:
        if "--backend" in argv and "ray" in sys.modules:  # a documented Ray job: stop the local cluster
            import ray

            ray.shutdown()
    out, err = capsys.readouterr()
    assert code == 0, f"`{command}` exited with {code}:\n{err[-3000:]}"
    if target is not None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as f:
            f.write(out)
    return out


def check_output(command: str, out: str) -> None:
    """What each subcommand promises: the files it writes exist, ``--json`` is JSON with the right keys."""
    argv = shlex.split(command)[1:]
    argv = argv[: argv.index(">>")] if ">>" in argv else argv
    if "--help" in argv or "-h" in argv:
        assert out.startswith("usage: "), out[:200]
        return
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        n_queries = len(args.queries) or len((DATA_DIR / "demo_queries.jsonl").read_text().splitlines())
        assert out.count("query: ") == n_queries and "done in" in out, out
    elif args.command == "encode":
        assert Path(args.out).exists(), out
    elif args.command == "index":
        assert (Path(args.out) / "config.json").is_file() and out.startswith("indexed "), out
    elif args.command == "search":
        if args.json:
            answers = [json.loads(line) for line in out.splitlines()]
            assert [a["query"] for a in answers] == args.query and all(len(a["results"]) == args.k for a in answers)
        else:
            assert out.count("query: ") == len(args.query) and out.count(" -KL=") == args.k * len(args.query), out
    elif args.command == "evaluate":
        if args.json:
            summary = json.loads(out)  # exactly one JSON object
            assert {"dataset", "split", "model", "ndcg@10", "recall@100", "queries"} <= summary.keys(), summary
            assert summary["split"] == args.split and summary["queries"] > 0, summary
            assert ("compare" in summary) == bool(args.compare), summary
        else:
            assert "ndcg@10" in out and ("compared with" in out) == bool(args.compare), out
        for written in (args.per_query, args.save_run):
            assert written is None or Path(written).is_file(), written
    elif args.command == "train":
        assert (Path(args.out) / "config.json").is_file() and (Path(args.out) / "README.md").is_file(), out
    else:
        raise AssertionError(f"no output check for `kl-retrievers {args.command}`; add one to check_output")


def masked(text: str) -> str:
    # the qpp object's correlations are null on the few-query slices the tests run, numbers on the page
    text = re.sub(r', "qpp": \{.*\}(?=\}\s*$)', "", text, flags=re.M)
    return re.sub(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf", "#", text).strip()


def run_documented(doc: Doc, capsys: pytest.CaptureFixture[str]) -> None:
    command = rewrite(doc.command)
    out = run_cli(command, capsys)
    check_output(command, out)
    if doc.output is not None:  # a transcript: the page shows what this prints, numbers aside
        assert masked(out) == masked(doc.output), f"{doc.where}: `{doc.command}` now prints\n{out}"


CLI_BLOCKS = [where for where, docs in COMMAND_BLOCKS.items() if any(kind(d.command) == "cli" for d in docs)]


@pytest.mark.integration
@pytest.mark.usefixtures("sandbox")
@pytest.mark.parametrize("where", CLI_BLOCKS)
def test_command_blocks_run(where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A block's ``kl-retrievers`` lines run in order in one folder, like a reader pasting them."""
    for doc in COMMAND_BLOCKS[where]:
        if kind(doc.command) == "cli":
            run_documented(doc, capsys)


@pytest.mark.integration
@pytest.mark.usefixtures("sandbox")
@pytest.mark.parametrize("doc", INLINE_CLI, ids=[f"{d.where}:{d.command}" for d in INLINE_CLI])
def test_inline_commands_run(doc: Doc, capsys: pytest.CaptureFixture[str]) -> None:
    run_documented(doc, capsys)


# ------------------------------------------------------------------ make, pip, benchmarks: checked, not run
def test_make_and_pip_lines_name_real_targets_and_extras() -> None:
    makefile = (REPO / "Makefile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    name = re.search(r'^name = "([^"]+)"', pyproject, re.M)
    section = re.search(r"^\[project\.optional-dependencies\]\n(.*?)^\[", pyproject, re.M | re.S)
    assert name and section, "pyproject.toml: no project name or optional-dependencies"
    extras_defined = set(re.findall(r"^([\w-]+) *=", section.group(1), re.M))
    core = re.search(r"^dependencies = \[\n(.*?)^\]", pyproject, re.M | re.S)
    assert core, "pyproject.toml: no dependencies"
    # every package the project requires, core or extra (dev included): e.g. langchain-community
    requirement = r'"([A-Za-z0-9][\w.-]*)(?:\[[\w,-]*\])?(?:[<>=!~;][^"]*)?"'  # its name, extras, version
    required = set(re.findall(requirement, core.group(1) + section.group(1)))
    checked = 0
    for doc in ALL_COMMANDS:
        tokens = shlex.split(doc.command)
        if kind(doc.command) == "make":
            targets = [t for t in tokens[1:] if "=" not in t]  # make VAR=value target: the variable is no target
            assert len(targets) == 1 and re.search(rf"^{re.escape(targets[0])}:", makefile, re.M), (
                f"{doc.where}: `{doc.command}`: no such Makefile target"
            )
            for assignment in (t for t in tokens[1:] if "=" in t):  # a variable the Makefile reads
                assert re.search(rf"\$\({re.escape(assignment.split('=')[0])}\)", makefile), (
                    f"{doc.where}: `{doc.command}`: the Makefile reads no {assignment.split('=')[0]}"
                )
        elif kind(doc.command) == "pip":
            if tokens[:3] == ["pip", "install", "torch"]:  # a CPU-only torch, the one other package named
                assert tokens[3:] == ["--index-url", "https://download.pytorch.org/whl/cpu"], f"{doc.where}"
                checked += 1
                continue
            if tokens[:2] == ["pip", "install"] and name.group(1) not in tokens[-1]:
                # another package an example needs (`pip install langchain-community`): one the project requires
                assert tokens[2:] and set(tokens[2:]) <= required, (
                    f"{doc.where}: `{doc.command}`: {set(tokens[2:]) - required} not required by pyproject.toml"
                )
                checked += 1
                continue
            match = re.fullmatch(r"([\w.-]+)(?:\[([\w,-]+)\])?", tokens[-1])
            assert tokens[:2] == ["pip", "install"] and match, f"{doc.where}: `{doc.command}`"
            assert match.group(1) == name.group(1), f"{doc.where}: the package is {name.group(1)}"
            extras = set((match.group(2) or "").split(",")) - {""}
            assert extras <= extras_defined, f"{doc.where}: unknown extras {extras - extras_defined}"
        else:
            continue
        checked += 1
    assert checked >= 3


def test_readme_links_are_absolute_and_name_real_files() -> None:
    """PyPI shows README.md as the project page, where a relative link 404s: every link is absolute,
    and one into this repository names a file (and heading) that exists."""
    pyproject = (REPO / "pyproject.toml").read_text()
    source = re.search(r'^Source = "([^"]+)"', pyproject, re.M)
    assert source, "pyproject.toml: no Source URL"
    prefix = source.group(1).rstrip("/") + "/blob/main/"
    links = re.findall(r"\]\(([^)\s]+)\)", (REPO / "README.md").read_text())
    assert len(links) >= 10
    for link in links:
        assert link.startswith(("https://", "http://")), f"README.md: relative link {link!r} breaks on PyPI"
        if not link.startswith(prefix):
            continue
        path, _, heading = link[len(prefix) :].partition("#")
        assert (REPO / path).is_file(), f"README.md: {link} names no file of this repository"
        if heading:
            slugs = {
                re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", (REPO / path).read_text(), re.M)
            }
            assert heading in slugs, f"README.md: {link}: no heading #{heading} in {path}"


BENCHMARK_LINES = [doc for doc in ALL_COMMANDS if kind(doc.command) == "benchmark"]
BENCHMARK_SCRIPTS = sorted({shlex.split(doc.command)[1] for doc in BENCHMARK_LINES})


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS)
def test_benchmark_commands_name_real_options(script: str) -> None:
    """The benchmarks take hours; their documented lines must name an existing script, options and choices."""
    assert (REPO / script).is_file(), f"{script} does not exist"
    proc = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stderr[-2000:]
    for doc in BENCHMARK_LINES:
        tokens = shlex.split(doc.command)
        if tokens[1] != script:
            continue
        words = [t for t in tokens[2:] if t.startswith("--")]
        if tokens[2:] and not tokens[2].startswith("-"):
            words.append(tokens[2])  # a positional choice such as `dev` or `in-domain`
        for word in words:
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", proc.stdout), (
                f"{doc.where}: `{doc.command}`: {word} is not in `python {script} --help`"
            )


# ------------------------------------------------------------------ synopsis, JSON, generated reference
@pytest.mark.parametrize(("where", "code"), SYNOPSES, ids=[w for w, _ in SYNOPSES])
def test_usage_synopsis_matches_the_parser(where: str, code: str) -> None:
    """`kl-retrievers train --data ... [--similarity neg_kl|dot|cosine] ...`: options and choices exist."""
    name = code.split()[1]
    actions = {s: a for a in subcommands(build_parser())[name]._actions for s in a.option_strings}
    for option, choices in re.findall(r"(--[\w-]+)(?: ([\w-]+(?:\|[\w-]+)+))?", code):
        assert option in actions, f"{where}: `kl-retrievers {name}` has no {option}"
        if choices:
            assert set(choices.split("|")) == set(actions[option].choices or ()), f"{where}: {option} {choices}"


@pytest.mark.parametrize(("page", "line", "code"), blocks("json"), ids=[f"{p}:{n}" for p, n, _ in blocks("json")])
def test_json_examples_are_accepted(page: str, line: int, code: str) -> None:
    from kl_retrievers.training.data import TrainingSet

    row = json.loads(code)
    assert page == "docs/training.md", "a JSON example outside docs/training.md needs its own check"
    example = TrainingSet.from_rows([row], source=f"{page}:{line}").examples[0]
    assert example.has_teacher == ("teacher_scores" in row)


def test_cli_reference_is_current() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gen_cli_docs import render
    finally:
        sys.path.pop(0)
    assert (REPO / "docs" / "cli.md").read_text() == render(), "run: python scripts/gen_cli_docs.py"


# ------------------------------------------------------------------ notebooks: stored outputs are current
#: Notebooks whose stored outputs must be what they print now (numbers masked: encodings differ a little from one
#: machine to the next). 04 trains for minutes; nbmake (`pytest notebooks`) still runs it, without comparing outputs.
COMPARED_NOTEBOOKS = ["01_quick_start.ipynb", "02_langchain_rag.ipynb", "03_llama_index.ipynb", "05_uncertainty.ipynb"]
#: Notebooks that read the logs committed under runs/ (``../runs/qpp``), so they run in notebooks/ (they write
#: nothing), and whose code cells that encode nothing print numbers read from those logs: compared exactly.
FROM_COMMITTED_LOGS = {"05_uncertainty.ipynb"}


def notebook_text(cell: dict, *, mask: bool = True) -> str:
    """What a code cell printed to stdout or returned, numbers masked (unless ``mask`` is false), spacing collapsed.

    stderr (warnings with the kernel's temporary file path) and rich outputs (images) are left out.
    """
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream" and output["name"] == "stdout":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data") and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"] + "\n")
        elif output["output_type"] == "error":
            parts.append(f"{output['ename']}: {output['evalue']}\n")
    text = "".join(parts)
    return re.sub(r"\s+", " ", masked(text) if mask else text.strip())


@pytest.mark.integration
@pytest.mark.parametrize("name", COMPARED_NOTEBOOKS)
def test_notebook_outputs_are_current(name: str, tmp_path: Path) -> None:
    """A notebook run now prints what its stored outputs show (re-execute it in place when this fails)."""
    import nbclient  # nbmake's own runner (a declared dev dependency)
    import nbformat

    shutil.copy(REPO / "notebooks" / name, tmp_path / name)
    stored = nbformat.read(tmp_path / name, as_version=4)
    fresh = nbformat.read(tmp_path / name, as_version=4)
    logs = name in FROM_COMMITTED_LOGS
    where = REPO / "notebooks" if logs else tmp_path
    nbclient.NotebookClient(
        fresh, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(where)}}
    ).execute()
    for number, (old, new) in enumerate(zip(stored.cells, fresh.cells, strict=True)):
        if old.cell_type == "code":
            mask = not logs or "encode" in old.source
            assert notebook_text(new, mask=mask) == notebook_text(old, mask=mask), (
                f"notebooks/{name}, cell {number}: the stored output is stale; it now prints\n"
                + "".join(o.get("text", "") for o in new.outputs)
            )
