#!/usr/bin/env bash
# The toy family's results: ToyBench every trained member (records resume, nothing is recomputed), then
# the report page, docs/results.md and the page's screenshot. Members not trained yet are skipped with a
# note; docs/toy.md has their recipes. Run from the repository root: `make results`.
set -euo pipefail

PW=${PW:-.venv/bin/pyramidal-wan}
RECORDS=${RECORDS:-runs/eval/toybench.jsonl}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-2}   # every row: the fixed prompt set (36 training captions + 24 held-out), 2 seeds a prompt

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
    "$PW" evaluate --suite toy --model "$model" "${schedules[@]}" --seeds "$SEEDS" --out "$RECORDS" \
        --threads "$THREADS"
}

# The ceiling any model on this VAE can reach: its reconstructions of the real clips.
"$PW" evaluate --suite toy --vae-ceiling models/toy/shared/vae --seeds "$SEEDS" --out "$RECORDS" --threads "$THREADS"

# The base (the "pretrained Wan2.1", multi-resolution pretraining). 0-0-13 costs what 20-20-10 costs: the
# control for the pyramid at equal FLOPs; 0-0-2 and 0-0-1 without distillation.
row runs/toy/base/model 0-0-50 0-0-20 0-0-13 0-0-2 0-0-1
# Training-free pyramid: the base sampled with a default 3-stage pyramid config, no fine-tuning (what a user
# of a stock Wan checkpoint gets). runs/toy/base-training-free is the base folder plus pyramid_config.json.
row runs/toy/base-training-free 20-20-10 2-2-1
# Pyramidization after 500, 1000, 2000 and 4000 fine-tuning steps.
for step in 500 1000 2000; do row runs/toy/pyramidal/model-step$step 20-20-10 10-10-5; done
row runs/toy/pyramidal/model 20-20-10 10-10-5 2-2-1   # 2-2-1: what the students start from
# The control: the base trained 2000 more steps with its own objective (is the gain the pyramid's?).
row runs/toy/base-more/model 0-0-50 0-0-13
# Ablations (1000-step fine-tunes; compare with model-step1000), run when trained.
row runs/toy/pyramidal-no-dist/model 20-20-10 10-10-5
row runs/toy/pyramidal-latent/model 20-20-10 10-10-5

# Few-step distillation: the Wan-DMD baselines from the base, the pyramidal students from the pyramidal model.
row runs/toy/distill-dmd/model 0-0-2
row runs/toy/distill-dmd-1step/model 0-0-1
row runs/toy/distill-dmd-ot/model 2-2-1 1-1-1
# The same student decoded by the bundled tiny decoders instead of the VAE's (their quality cost, issue 17).
if [[ -f runs/toy/distill-dmd-ot/model/model_index.json ]]; then
    for decoder in models/toy/tiny-decoder models/toy/tiny-decoder-small; do
        "$PW" evaluate --suite toy --model runs/toy/distill-dmd-ot/model --schedule 2-2-1 \
            --decoder "$decoder" --seeds "$SEEDS" --out "$RECORDS" --threads "$THREADS"
    done
fi
row runs/toy/distill-dmd-pt/model 2-2-1
row runs/toy/distill-dmd-pt-star/model 2-2-1
row runs/toy/distill-adv-o/model 2-2-1
row runs/toy/distill-adv-p/model 2-2-1

# Patch pyramid.
row runs/toy/ppf/model 20-20-10
row runs/toy/ppf-dmd/model 2-2-1

# Speed-ups (issue 17): solvers x caches x schedules on the bundled family (models/toy), 36 training-caption
# prompts, one seed, every row timed in this one run (in interleaved rounds).
SPEEDUPS=${SPEEDUPS:-runs/eval/pareto.jsonl}
OMP_NUM_THREADS=$THREADS .venv/bin/python benchmarks/speedup_pareto.py --threads "$THREADS" --out "$SPEEDUPS"

"$PW" report --results "$RECORDS" --speedups "$SPEEDUPS" --out report --markdown docs/results.md \
    --screenshot docs/report.png
