#!/usr/bin/env bash
# The toy family's results: ToyBench every trained member (records resume, nothing is recomputed), then
# the report page, docs/results.md and the page's screenshot. Members not trained yet are skipped with a
# note; docs/toy.md has their recipes. Run from the repository root: `make results`.
set -euo pipefail

PW=${PW:-.venv/bin/pyramidal-wan}
RECORDS=${RECORDS:-runs/eval/toybench.jsonl}
THREADS=${THREADS:-2}

# evaluate MODEL_FOLDER SCHEDULE... : one row per schedule.
row() {
    local model=$1
    shift
    if [[ ! -f $model/model_index.json ]]; then
        echo "skip $model: not trained yet (docs/toy.md)"
        return
    fi
    local schedules=()
    for schedule in "$@"; do schedules+=(--schedule "$schedule"); done
    "$PW" evaluate --suite toy --model "$model" "${schedules[@]}" --out "$RECORDS" --threads "$THREADS"
}

# The ceiling any model on this VAE can reach: its reconstructions of the real clips.
"$PW" evaluate --suite toy --vae-ceiling models/toy/shared/vae --out "$RECORDS" --threads "$THREADS"

# Base (the "pretrained Wan2.1") and its pyramidization (issue 5), with the two ablations.
# 0-0-13 costs what 20-20-10 costs: the control for the pyramid at equal FLOPs.
row runs/toy/base/model 0-0-50 0-0-20 0-0-13
row runs/toy/pyramidal/model 20-20-10 10-10-5 2-2-1 0-0-50   # 2-2-1: what the students start from
# The ablations and the boundary experiment are 1000-step fine-tunes: compare them with the main run's
# step-1000 export (docs/toy.md).
row runs/toy/pyramidal/model-step1000 20-20-10
row runs/toy/pyramidal-no-dist/model 20-20-10
row runs/toy/pyramidal-latent/model 20-20-10
# Stage boundaries from the spectrum (suggest-stages --snr 0.1 / 1.0) at equal FLOPs; the row above is 0.35.
row runs/toy/pyramidal-snr0.1/model 20-20-10
row runs/toy/pyramidal-snr1/model 20-20-10

# Few-step distillation (issue 6): the Wan-DMD baselines and the pyramidal variants, each after 2000
# iterations and (model-step1000) after 1000; the best 2-2-1 student also at 1-1-1 and 2-2-2.
row runs/toy/distill-dmd/model 0-0-2
row runs/toy/distill-dmd-1step/model 0-0-1
row runs/toy/distill-dmd-ot/model 2-2-1 1-1-1 2-2-2
row runs/toy/distill-dmd-pt/model 2-2-1
row runs/toy/distill-dmd-pt-star/model 2-2-1
row runs/toy/distill-dmd-pt-star-no-teach/model 2-2-1
row runs/toy/distill-adv-o/model 2-2-1
row runs/toy/distill-adv-p/model 2-2-1
row runs/toy/distill-dmd/model-step1000 0-0-2
row runs/toy/distill-dmd-1step/model-step1000 0-0-1
row runs/toy/distill-dmd-ot/model-step1000 2-2-1
row runs/toy/distill-dmd-pt/model-step1000 2-2-1
row runs/toy/distill-dmd-pt-star/model-step1000 2-2-1
row runs/toy/distill-dmd-pt-star-no-teach/model-step1000 2-2-1

# Patch pyramid (issue 7).
row runs/toy/ppf/model-step1000 20-20-10
row runs/toy/ppf/model 20-20-10
row runs/toy/ppf-dmd/model 2-2-1
row runs/toy/ppf-dmd/model-step1000 2-2-1

"$PW" report --results "$RECORDS" --out report --markdown docs/results.md --screenshot docs/report.png
