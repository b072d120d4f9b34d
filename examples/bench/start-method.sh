#!/bin/bash
# How vLLM's engine core starts (plugin change 8): forked from the API process (tuneserve's default
# with one rank on CPU) or spawned (vLLM's CPU choice, VLLM_WORKER_MULTIPROC_METHOD=spawn).
# Three interleaved rounds: launch-to-ready time, then `tuneserve bench run --url` at 1 stream
# (10 prompts) and 16 streams (64 prompts), 64-token prompts and outputs. `make bench-start-method`.
set -euo pipefail
out=${1:-runs/bench-start-method}; mkdir -p "$out"
TS=${TS:-.venv/bin/tuneserve}
for round in 1 2 3; do
  for mode in spawn fork; do
    port=$(.venv/bin/python -c "from tuneserve.server.process import free_port; print(free_port())")
    t0=$(date +%s.%N)
    VLLM_WORKER_MULTIPROC_METHOD=$mode $TS serve --port "$port" --max-model-len 1024 > "$out/server-$mode-$round.log" 2>&1 &
    pid=$!
    until curl -sf "localhost:$port/ready" > /dev/null; do sleep 0.2; done
    echo "$mode round $round ready $(echo "$(date +%s.%N) - $t0" | bc) s"
    for c in 1 16; do
      n=$([ "$c" = 1 ] && echo 10 || echo 64)
      $TS bench run --url "http://127.0.0.1:$port" --repeat 1 --num-prompts "$n" --input-len 64 --output-len 64 \
        --max-concurrency "$c" --out "$out/$mode-$round-$c" --overwrite > "$out/bench-$mode-$round-$c.log" 2>&1
    done
    kill -TERM "$pid"; wait "$pid" || true
  done
done
.venv/bin/python - "$out" <<'PY'
import glob, json, statistics, sys
for mode in ("spawn", "fork"):
    for c in ("1", "16"):
        v = [json.load(open(f))["settings"][0]["output_throughput"]
             for r in "123" for f in glob.glob(f"{sys.argv[1]}/{mode}-{r}-{c}/**/summary.json", recursive=True)]
        print(f"{mode:5} {c:>2} streams: output tok/s median {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
PY
