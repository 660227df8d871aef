"""What starting a log segment costs the writer: the old way (the new file's header and its
directory entry fsynced at the seal, then the first group's fdatasync) against the new
(no fsync at the seal; the first group's fdatasync, then the directory's fsync).
Usage: python3 bench/roll_cost.py ROLLS WRITE_BYTES  (in the directory to test)
Each roll: the seal's part timed, then one group write + sync timed; the two ways alternate.
Session 53, bench/HISTORY.md."""
import os, sys, time
n, size = int(sys.argv[1]), int(sys.argv[2])
buf = os.urandom(size)
dirfd = os.open(".", os.O_RDONLY)
ways = {"seal syncs": ([], [], []), "first sync syncs": ([], [], [])}
for i in range(2 * n):
    way = "seal syncs" if i % 2 == 0 else "first sync syncs"
    seal_lat, first_lat, total = ways[way]
    path = f"roll-{i:06d}.seg"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    os.write(fd, b"TNDMLOG1")
    if way == "seal syncs":
        os.fsync(fd); os.fsync(dirfd)
    t1 = time.perf_counter()
    os.write(fd, buf); os.fdatasync(fd)
    if way == "first sync syncs":
        os.fsync(dirfd)
    t2 = time.perf_counter()
    seal_lat.append(t1 - t0); first_lat.append(t2 - t1); total.append(t2 - t0)
    os.close(fd); os.unlink(path)
    time.sleep(0.002)
def q(lat, p):
    lat = sorted(lat); return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
for way, (s, f, t) in ways.items():
    print(f"{way:17s} n={n} seal p50={q(s,.5):.3f} p99={q(s,.99):.3f} | first group p50={q(f,.5):.3f} p99={q(f,.99):.3f}"
          f" | both p50={q(t,.5):.3f} p90={q(t,.9):.3f} p99={q(t,.99):.3f} max={max(t)*1000:.1f} ms")
