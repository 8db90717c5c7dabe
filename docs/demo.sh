#!/usr/bin/env bash
# `make demo`: the main job on the embedded base model (SmolLM2-135M-Instruct), sized for a 2-core CPU.
# Trains a sparse expert (5% of q/k/v entries) for two built-in tasks, scores them and the base model,
# then browses the catalog and exports one expert for PEFT. Takes a few minutes; set HUB_HOME to keep
# the demo's catalog apart from yours.
set -euo pipefail
HUB=${HUB:-.venv/bin/hub}
STEPS=${DEMO_STEPS:-40}
LIMIT=${DEMO_EVAL_LIMIT:-50}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Tasks available offline"
$HUB tasks

for task in nq_open commonsenseqa; do
  say "Base model on $task (the bar each expert is measured against)"
  $HUB eval --base smollm2-135m --task "$task" --limit "$LIMIT" --max-new-tokens 16
  say "Train a sparse expert for $task: keep ratio 0.05 on q/k/v, $STEPS steps"
  $HUB train --task "$task" --keep-ratio 0.05 --targets qkv --max-steps "$STEPS" --batch-size 8 \
    --max-length 128 --max-val 64 --eval-limit "$LIMIT" --max-new-tokens 16 --name "$task-sparse"
done

say "The catalog"
$HUB list --base smollm2-135m
$HUB show nq_open-sparse
$HUB alias nq_open-sparse best
$HUB list --where 'rougeL>=0' --sort -rougeL --json | head -c 600; echo

say "Export for PEFT and check every blob"
rm -rf demo-out && mkdir -p demo-out
$HUB export nq_open-sparse@best --format peft --out demo-out/nq_open-sparse-peft
$HUB export nq_open-sparse@best --format hubtool --out demo-out/nq_open-sparse.safetensors
ls -l demo-out demo-out/nq_open-sparse-peft
$HUB verify
