"""Sends single-event requests to a tandem server one after another on one keep-alive
connection, for bench/callgrind.sh: `setup` makes tandem-bench's dataset and view, `run N`
sends N events (each its own request, so each its own group commit)."""
import http.client
import json
import sys
import time

port, mode = int(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection("127.0.0.1", port)


def post(path, body, content_type="application/json"):
    conn.request("POST", path, body=body, headers={"content-type": content_type})
    response = conn.getresponse()
    return response.status, response.read()


if mode == "setup":
    fields = {"ts": "timestamp", "country": "string", "path": "string", "device": "string",
              "user_id": "string", "duration_ms": "float64", "bytes": "int64", "bot": "bool"}
    print(post("/v1/datasets", json.dumps({"name": "pageviews", "time_field": "ts", "fields": fields})))
    measures = {"views": "count", "bytes": "sum(bytes)", "mean_ms": "avg(duration_ms)",
                "users": "approx_distinct(user_id)", "p95_ms": "approx_percentile(duration_ms, 0.95)"}
    print(post("/v1/views", json.dumps({"name": "traffic", "dataset": "pageviews", "granularity": "hour",
                                         "dimensions": ["country", "path"], "measures": measures,
                                         "filter": "bot = false"})))
else:
    now = int(time.time() * 1000)
    for i in range(int(sys.argv[3])):
        event = {"ts": now, "country": "US", "path": f"/p/{i % 500}", "device": "desktop", "user_id": f"u{i}",
                 "duration_ms": 1.5 + i % 7, "bytes": i, "bot": False}
        status, body = post("/v1/datasets/pageviews/events", json.dumps(event) + "\n", "application/x-ndjson")
        assert status == 200, (status, body)
