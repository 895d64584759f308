#!/bin/bash
# Re-log every figure of docs/results.md's tables after the depth-cut tie fix (e5b5d67), as run on 2026-12-04
# (the four parts ran one after another in a clean worktree of e5b5d67; about 75 minutes on 2 CPU cores).
# Then each results.py run rewrote runs/eval/pq/<system>.<collection>.test.json, which older lines name; now each
# writes a file of its own (runs/eval/pq/<system>[.<backend>].<collection>.test.<UTC start>Z.json); so does
# benchmarks/qpp.py, which then rewrote runs/qpp/<model>.<collection>.test.json in place
# (now runs/qpp/<model>.<collection>.test.<UTC start>Z.json, named by its qpp.jsonl line).
set -e
python benchmarks/results.py --run bm25
python benchmarks/results.py --run-models minilm-unit-variance minilm-gauss-zs minilm-gauss-lora --backend onnx
python benchmarks/results.py --run minilm bge-small
python benchmarks/qpp.py --collections trec-dl21-passage-pooled nfcorpus-preprocessed cranfield scifact
python benchmarks/results.py --run-models bge-small-unit-variance --backend torch
