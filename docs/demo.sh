#!/usr/bin/env bash
# `make demo`: the main job on the embedded base model (SmolLM2-135M-Instruct), sized for a 2-core CPU.
# Trains a sparse expert (5% of q/k/v entries) for a qa task (boolq: built in, scored by the likelihood
# of "yes" / "no", so 200 test examples are cheap) and a summarize task (xsum, scored by generation),
# scores them and the base model, browses the catalog, exports one expert for PEFT, composes the two
# into one model, scores it per task (retention) and generates from it with transformers; then starts
# a local Hub (`hub serve`), pushes the base model and then the merged model through Xet (printing the
# bytes the dedup saved) and one expert, and pulls the expert into a second catalog. Nothing leaves the machine: it runs with HF_HUB_OFFLINE=1 too (its Hub is loopback).
# Set HUB_HOME to keep the demo's catalog apart from yours; DEMO_STEPS / DEMO_EVAL_LIMIT /
# DEMO_QA_EVAL_LIMIT shorten it, DEMO_QA_TASK picks another qa task.
set -euo pipefail
HUB=${HUB:-$PWD/.venv/bin/hub}
PY=${PY:-$PWD/.venv/bin/python}
STEPS=${DEMO_STEPS:-40}
LIMIT=${DEMO_EVAL_LIMIT:-40}          # xsum: generated summaries, the costly part of every evaluation
QA_LIMIT=${DEMO_QA_EVAL_LIMIT:-200}   # boolq: one forward pass an example; at 200 one example is 0.5 points
OUT=${DEMO_OUT:-demo-out}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Tasks available offline, with their categories"
$HUB tasks
QA=${DEMO_QA_TASK:-boolq}

for spec in "$QA:$QA_LIMIT" "xsum:$LIMIT"; do
  task=${spec%:*} limit=${spec##*:}
  say "Base model on $task (the bar each expert is measured against)"
  $HUB eval --base smollm2-135m --task "$task" --limit "$limit" --max-new-tokens 24 --max-prompt-tokens 160
  say "Train a sparse expert for $task: keep ratio 0.05 on q/k/v, $STEPS steps"
  $HUB train --task "$task" --keep-ratio 0.05 --targets qkv --max-steps "$STEPS" --batch-size 8 \
    --max-length 160 --max-val 64 --eval-limit "$limit" --max-new-tokens 24 --name "$task-sparse"
done

say "Is the $QA expert's gain more than eval noise? Expert and base on the same $QA_LIMIT examples, paired"
# hub eval stores one row per example; --compare resamples them (2,000 paired bootstrap draws).
$HUB eval "$QA"-sparse --task "$QA" --limit "$QA_LIMIT" --max-new-tokens 24 --max-prompt-tokens 160
$HUB eval --compare "$QA"-sparse,base --task "$QA"

say "The catalog"
$HUB list --base smollm2-135m
$HUB show "$QA"-sparse
$HUB alias "$QA"-sparse best
$HUB list --where 'rougeL>=0' --sort -rougeL --json | head -c 600; echo

say "Export for PEFT and check every blob"
rm -rf "$OUT" && mkdir -p "$OUT"
$HUB export "$QA"-sparse@best --format peft --out "$OUT/$QA-sparse-peft"
$HUB export "$QA"-sparse@best --format hubtool --out "$OUT/$QA-sparse.safetensors"
ls -l "$OUT" "$OUT/$QA-sparse-peft"
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
$HUB generate merged "Summarize in one sentence: The city council voted on Tuesday to build a new bridge over the river. It will open in 2028." --max-new-tokens 24

say "A local Hub: serve, push the base and the merged model (Xet dedup), one expert, pull it into a second catalog"
PORT=${DEMO_PORT:-8910}
TOKEN=demo-$RANDOM$RANDOM
printf 'demo %s\n' "$TOKEN" > tokens.txt && chmod 600 tokens.txt
$HUB serve --port "$PORT" --root hub-root --token-file tokens.txt --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do $PY -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break; sleep 0.2; done
export HF_ENDPOINT=http://127.0.0.1:$PORT HF_TOKEN=$TOKEN
# The base model first, then the merged model: large files go through Xet (the server's CAS), so the
# merged model's unchanged tensors are not sent again. The server counts the xorb data it received
# (GET /_xet/stats); what the merged push did not have to send is what the dedup saved.
BASE_DIR=$($PY -c "from hubtool.models import resolve_base; print(resolve_base('smollm2-135m')[0])")
xet_received() {
  $PY -c "import json, sys, urllib.request as u
r = u.Request(sys.argv[1] + '/_xet/stats', headers={'Authorization': 'Bearer ' + sys.argv[2]})
print(json.load(u.urlopen(r))['received_data_bytes'])" "$HF_ENDPOINT" "$HF_TOKEN"
}
$HUB push "$BASE_DIR" --repo demo/smollm2-135m
BEFORE=$(xet_received)
$HUB push merged --repo demo/merged
AFTER=$(xet_received)
$PY - merged "$BEFORE" "$AFTER" <<'EOF'
import sys
from pathlib import Path

weights = sum(p.stat().st_size for p in Path(sys.argv[1]).glob("*.safetensors"))
sent = int(sys.argv[3]) - int(sys.argv[2])
print(f"merged model: {weights / 1e6:.1f} MB of weights, {sent / 1e6:.1f} MB sent through Xet; the dedup "
      f"against the base saved {(weights - sent) / 1e6:.1f} MB ({(weights - sent) / max(weights, 1):.0%})")
EOF
$HUB push "$QA"-sparse --repo demo/"$QA"-sparse
$HUB push "$QA"-sparse --repo demo/"$QA"-sparse          # the same content again: no new commit
HUB_HOME="$PWD/second-home" $HUB pull demo/"$QA"-sparse
HUB_HOME="$PWD/second-home" $HUB list
kill $SERVER && wait $SERVER 2>/dev/null || true

say "Browse it in a web browser (docs/web.md): the catalog, and the pushed repo's page"
# The demo's server is stopped now; the second command starts it again, its pages readable without a login.
printf '  %s\n' "${HUB_HOME:+HUB_HOME=$HUB_HOME }$HUB ui          # the catalog's pages: http://127.0.0.1:8920/_/" \
  "${HUB_HOME:+HUB_HOME=$HUB_HOME }$HUB serve --port $PORT --root $PWD/hub-root --token-file $PWD/tokens.txt --public-read"
echo "The pushed repo's page: http://127.0.0.1:$PORT/demo/merged"
