#!/usr/bin/env bash
# The whole story on one CPU (~20 minutes on 2 cores): finetune a LoRA on the demo "dates" task,
# evaluate it against the base, merge it, quantize the merged model to W4A16, serve it and ask it
# a question, then bench base vs adapter vs merged vs W4A16. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
TS=${TS:-.venv/bin/tuneserve}
PORT=${PORT:-8000}

echo "== 1. finetune: LoRA on the demo task 'dates' (scores before/after are printed)"
$TS finetune sft examples/recipes/lora-dates.yaml --overwrite

echo "== 2. evaluate the adapter and the base on the held-out dates task"
$TS finetune eval --adapter runs/lora-dates --task dates
$TS finetune eval --task dates

echo "== 3. optimize: merge the adapter, then quantize the merged model (GPTQ W4A16)"
$TS optimize merge --adapter runs/lora-dates --out runs/lora-dates-merged --overwrite
$TS optimize quantize --model runs/lora-dates-merged --scheme w4a16 --calibration dates --out runs/lora-dates-w4a16 --overwrite

echo "== 4. serve the quantized model and ask it a held-out question"
$TS serve --model runs/lora-dates-w4a16 --port "$PORT" > runs/demo-serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null && break; sleep 1; done
curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "runs/lora-dates-w4a16", "temperature": 0, "max_tokens": 16,
  "messages": [{"role": "user", "content": "Rewrite the date 14 July 1999 in ISO format (YYYY-MM-DD). Answer with the date only."}]
}' | .venv/bin/python -c 'import json, sys; print("answer:", json.load(sys.stdin)["choices"][0]["message"]["content"])'
kill $SERVER; wait $SERVER 2>/dev/null || true
trap - EXIT

echo "== 5. bench: base vs adapter vs merged vs merged W4A16 (3 repeats each)"
$TS bench run examples/bench/demo.yaml --out runs/demo-bench --overwrite
echo "report: runs/demo-bench/report/index.html"
