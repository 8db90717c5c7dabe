#!/usr/bin/env bash
# `make demo`: the main job on the embedded base model (SmolLM2-135M-Instruct), sized for a 2-core CPU.
# Trains a sparse expert (5% of q/k/v entries) for a qa task (nq_open) and a summarize task (xsum),
# scores them and the base model, browses the catalog, exports one expert for PEFT, then composes
# the two into one model, scores it per task (retention) and generates from it with transformers.
# Set HUB_HOME to keep the demo's catalog apart from yours; DEMO_STEPS / DEMO_EVAL_LIMIT shorten it.
set -euo pipefail
HUB=${HUB:-$PWD/.venv/bin/hub}
PY=${PY:-$PWD/.venv/bin/python}
STEPS=${DEMO_STEPS:-40}
LIMIT=${DEMO_EVAL_LIMIT:-40}
OUT=${DEMO_OUT:-demo-out}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Tasks available offline, with their categories"
$HUB tasks

for task in nq_open xsum; do
  say "Base model on $task (the bar each expert is measured against)"
  $HUB eval --base smollm2-135m --task "$task" --limit "$LIMIT" --max-new-tokens 24 --max-prompt-tokens 128
  say "Train a sparse expert for $task: keep ratio 0.05 on q/k/v, $STEPS steps"
  $HUB train --task "$task" --keep-ratio 0.05 --targets qkv --max-steps "$STEPS" --batch-size 8 \
    --max-length 128 --max-val 64 --eval-limit "$LIMIT" --max-new-tokens 24 --name "$task-sparse"
done

say "The catalog"
$HUB list --base smollm2-135m
$HUB show nq_open-sparse
$HUB alias nq_open-sparse best
$HUB list --where 'rougeL>=0' --sort -rougeL --json | head -c 600; echo

say "Export for PEFT and check every blob"
rm -rf "$OUT" && mkdir -p "$OUT"
$HUB export nq_open-sparse@best --format peft --out "$OUT/nq_open-sparse-peft"
$HUB export nq_open-sparse@best --format hubtool --out "$OUT/nq_open-sparse.safetensors"
ls -l "$OUT" "$OUT/nq_open-sparse-peft"
$HUB verify

say "Compose: the plan first (which experts, how much their masks overlap), then the merged model"
cd "$OUT"
$HUB compose --tasks qa,summarize --dry-run
$HUB compose --tasks qa,summarize --out merged --eval
ls merged

say "Load the merged model with plain transformers and generate"
$PY - <<'EOF'
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("merged")
tok = AutoTokenizer.from_pretrained("merged")
messages = [{"role": "user", "content": "Question: what is the capital of France?\nAnswer:"}]
ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=12, do_sample=False)
print(repr(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))
EOF
