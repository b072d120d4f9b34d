#!/usr/bin/env bash
# The README's arena figures: a server with two adapters and the playground, 60 battles judged by
# exact match on the demo tasks, the leaderboard, and screenshots of the page.
#   bash examples/eval/arena.sh [OUT_DIR]      (default docs/eval)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-docs/eval}
TS=.venv/bin/tuneserve
DB=$(mktemp -d)/arena.sqlite
mkdir -p "$OUT"
$TS serve --port 8765 --adapter dates=examples/adapters/dates --adapter units=examples/adapters/units \
    --playground --arena-db "$DB" > "$(dirname "$DB")/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER; wait $SERVER || true' EXIT
until curl -sf http://127.0.0.1:8765/health >/dev/null; do sleep 2; kill -0 $SERVER; done
COLUMNS=120 $TS eval arena --server http://127.0.0.1:8765 --judge exact --suite demo --num-battles 60 | tee "$OUT/arena-leaderboard.txt"
.venv/bin/python examples/eval/playground_screenshot.py http://127.0.0.1:8765 "$OUT/playground.png"
echo "$(date -u +%F) $(nproc)-core $(uname -m); votes in $DB" >> "$OUT/arena-leaderboard.txt"
