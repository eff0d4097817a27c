#!/usr/bin/env bash
# Regenerate the model cards (README.md) of the bundled toy family from their configs, with the recipe
# commands of docs/toy.md. `toy bundle` writes a card itself; this is for members bundled before it did.
# ToyBench rows come from evaluation records: pass them with RESULTS=runs/eval/toybench.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PW="${PW:-.venv/bin/pyramidal-wan}"
results=()
if [ -n "${RESULTS:-}" ]; then results=(--results "$RESULTS"); fi
note="ToyBench results of the whole family on the fixed 60-prompt set: docs/results.md (\`make results\`)."
$PW card models/toy/base --note "$note" "${results[@]}" --eval-name base --made-by \
  "pyramidal-wan finetune --config configs/toy/base.yaml && pyramidal-wan toy bundle --model runs/toy/base/model --name base"
$PW card models/toy/pyramidal --base models/toy/base --note "$note" "${results[@]}" --eval-name pyramidal --made-by \
  "pyramidal-wan finetune --config configs/toy/pyramidal.yaml && pyramidal-wan toy bundle --model runs/toy/pyramidal/model --name pyramidal"
$PW card models/toy/few-step --base models/toy/pyramidal --note "$note" "${results[@]}" --eval-name distill-dmd-ot --made-by \
  "pyramidal-wan distill --method dmd-ot --config configs/toy/distill-dmd-ot.yaml && pyramidal-wan toy bundle --model runs/toy/distill-dmd-ot/model --name few-step"
