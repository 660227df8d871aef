#!/usr/bin/env bash
# Instructions a single-event request costs the server, by callgrind (bench/HISTORY.md,
# sessions 45 and 46): `bench/callgrind.sh target/release/tandem [N] [PORT]`. Collection is on
# only while N requests are answered, after the dataset, the view and 200 requests of warm-up.
set -euo pipefail
BIN=$1; N=${2:-2000}; PORT=${3:-18080}
HERE=$(cd "$(dirname "$0")" && pwd); D=$(mktemp -d)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$D/cg.out" \
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$D/data" > "$D/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.5; done
python3 "$HERE/single_events.py" "$PORT" setup > /dev/null
python3 "$HERE/single_events.py" "$PORT" run 200
callgrind_control -i on "$PID" > /dev/null 2>&1
python3 "$HERE/single_events.py" "$PORT" run "$N"
callgrind_control -i off "$PID" > /dev/null 2>&1
kill -INT "$PID"; wait "$PID" || true
TOTAL=$(callgrind_annotate "$D/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t { gsub(",", "", $1); t = $1 } END { print t }')
echo "instructions a request: $((TOTAL / N)) (profile: $D/cg.out; callgrind_annotate --inclusive=yes it)"
