#!/usr/bin/env bash
# A torch-free install, as a LangChain user gets it: a fresh venv with the core requirements and the
# [langchain] extra only. Checks that torch is absent, reports the venv's size (target <= 400 MB) and runs
# the LangChain quickstart (docs/examples/langchain_quickstart.py) and the README's LangChain block offline, from outside the
# checkout so that the installed package is what runs. pip's cache is used. `make torch-free-check`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-python3}
max_mb=${TORCH_FREE_MAX_MB:-400}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kl-torch-free.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)

# The files a checkout holds (tracked, and untracked but not ignored), copied so that the build writes
# nothing into the checkout (setuptools builds in ./build).
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$tmp/src"
"$python" -m venv "$tmp/venv"
venv_py="$tmp/venv/bin/python"
"$venv_py" -m pip install --quiet --disable-pip-version-check "$tmp/src[langchain]"

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
out=$(cd "$tmp" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KL_RETRIEVERS_ONNX_CACHE="$tmp/onnx-cache" \
  "$venv_py" "$repo/docs/examples/langchain_quickstart.py")
echo "$out"
if ! printf '%s\n' "$out" | tail -n 1 | grep -q '^Aspirin lowers fever\.'; then
  echo "torch-free-check: FAIL: the example's last line is not the aspirin document" >&2
  exit 1
fi
if [ -e "$tmp/onnx-cache" ]; then
  echo "torch-free-check: FAIL: the example exported a graph instead of using the shipped one" >&2
  exit 1
fi
# The README's own LangChain block (the first python block under "## LangChain"), run as written.
"$venv_py" - "$tmp/src/README.md" "$tmp/readme_langchain.py" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text.split("\n## LangChain", 1)[1]
block = re.search(r"```python\n(.*?)```", section, re.S)
assert block, "no python block under '## LangChain' in README.md"
open(sys.argv[2], "w", encoding="utf-8").write(block.group(1))
PY
readme_out=$(cd "$tmp" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KL_RETRIEVERS_ONNX_CACHE="$tmp/onnx-cache" \
  "$venv_py" "$tmp/readme_langchain.py")
echo "$readme_out"
if ! printf '%s\n' "$readme_out" | grep -q 'caffeine'; then
  echo "torch-free-check: FAIL: the README's LangChain example did not retrieve the caffeine documents" >&2
  exit 1
fi
if [ -e "$tmp/onnx-cache" ]; then
  echo "torch-free-check: FAIL: the README example exported a graph instead of using the shipped one" >&2
  exit 1
fi
import_s=$(cd "$tmp" && "$venv_py" -c "import time; t = time.perf_counter(); import kl_retrievers, sys; \
assert 'torch' not in sys.modules and 'faiss' not in sys.modules; print(f'{time.perf_counter() - t:.2f}')")
echo "torch-free-check: import kl_retrievers ${import_s} s in-process; OK in $(( $(date +%s) - start )) s"
