#!/usr/bin/env bash
# What a `GET /metrics` scrape costs with many views (bench/HISTORY.md, sessions 46 and 47):
# `bench/scrape.sh target/release/tandem VIEWS [SCRAPES] [PORT] [DATABASE_URL]` starts a server,
# creates one dataset and VIEWS views, starts a run of each (over no events: tens of ms each),
# waits until every run has ended, then prints the time of each of SCRAPES scrapes (`curl`'s
# `time_total`, in ms). Without DATABASE_URL the catalog is the embedded SQLite one. ROUTE=PATH
# in the environment times that route instead of `/metrics` (`ROUTE=/v1/views`: the list of views).
set -euo pipefail
BIN=$1; VIEWS=$2; SCRAPES=${3:-5}; PORT=${4:-18081}; URL=${5:-}; ROUTE=${ROUTE:-/metrics}
D=$(mktemp -d); B="http://127.0.0.1:$PORT"
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$D/data" ${URL:+--database-url "$URL"} \
  > "$D/server.log" 2>&1 &
PID=$!
trap 'kill -INT $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 1 600); do curl -s -o /dev/null "$B/healthz" && break; sleep 0.1; done
post() { curl -sf -o /dev/null -XPOST "$B$1" -H 'content-type: application/json' -d "$2"; }
post /v1/datasets '{"name":"d","time_field":"ts","fields":{"ts":"timestamp","c":"string","x":"float64"}}'
for i in $(seq 1 "$VIEWS"); do
  post /v1/views "{\"name\":\"v$i\",\"dataset\":\"d\",\"granularity\":\"hour\",\"dimensions\":[\"c\"],\"measures\":{\"n\":\"count\",\"s\":\"sum(x)\"}}"
  curl -sf -o /dev/null -XPOST "$B/v1/views/v$i/runs"
done
# every view's run has ended once each has a last-run gauge
for _ in $(seq 1 600); do
  n=$(curl -s "$B/metrics" | grep -c '^tandem_view_last_run_success{' || true)
  [ "$n" -ge "$VIEWS" ] && break; sleep 0.2
done
[ "$n" -ge "$VIEWS" ] || { echo "only $n of $VIEWS views have a run that ended" >&2; exit 1; }
for _ in $(seq 1 "$SCRAPES"); do
  curl -s -o /dev/null -w '%{time_total}\n' "$B$ROUTE" | awk '{ printf "%.1f ms\n", $1 * 1000 }'
done
