#!/usr/bin/env python3
r"""Sets the slowest requests of a bench run beside what the server logged while each was open.

    TANDEM_LOG=tandem_speed=debug,tandem_serving=debug \
        target/release/tandem-bench ... --latency-log lat.csv > bench.log 2>&1
    python3 bench/slowest.py lat.csv bench.log ["query, under ingest: 30 days"] [N]

`lat.csv` is the bench's `--latency-log` (what, sent_unix_s, ms); `bench.log` holds the
server's log, which the bench passes through. For each of the N slowest requests whose name
contains the given text, it prints the client's time and the fields of the server's
`slow query` and `slow send` lines stamped while the request was open.
"""

import csv
import datetime
import re
import sys

FIELD = re.compile(r"(\w+)=([0-9.]+)\b")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z ")


def server_lines(path):
    """(unix seconds, kind, fields) of each `slow query` and `slow send` line."""
    with open(path, errors="replace") as log:
        for line in log:
            stamp = STAMP.match(line)
            kind = "query" if "slow query" in line else "send" if "slow send" in line else None
            if not stamp or not kind:
                continue
            at = datetime.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=datetime.timezone.utc)
            yield at.timestamp(), kind, dict(FIELD.findall(line))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    latencies, log = sys.argv[1], sys.argv[2]
    what = sys.argv[3] if len(sys.argv) > 3 else "query, under ingest: 30 days"
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    with open(latencies) as f:
        timed = [(float(r["sent_unix_s"]), float(r["ms"])) for r in csv.DictReader(f) if what in r["what"]]
    logged = list(server_lines(log))
    print(f"{len(timed)} requests matching {what!r}; the {min(n, len(timed))} slowest:")
    for sent, ms in sorted(timed, key=lambda t: -t[1])[:n]:
        # a line is stamped when the server logs it, within the request's span (with 1 ms for
        # the two clocks' reading)
        open_lines = [(kind, f) for at, kind, f in logged if sent - 0.001 <= at <= sent + ms / 1e3 + 0.001]
        query = next((f for kind, f in open_lines if kind == "query"), {})
        send = next((f for kind, f in open_lines if kind == "send"), {})
        made = " ".join(
            f"{k}={float(query[k]):.2f}" for k in ("total_ms", "shape_lock_ms", "catch_up_ms", "answer_ms") if k in query
        )
        rows = f" rows_made={query['rows_made']}" if "rows_made" in query else ""
        sending = f" send_ms={float(send['ms']):.2f}" if "ms" in send else ""
        print(f"client {ms:7.2f} ms | server {made or '(no slow-query line)'}{rows}{sending}")


if __name__ == "__main__":
    main()
