"""fdatasync latency of a log-like writer: append, overwrite a zero-filled file, or posix_fallocate.
Usage: GAP=0.002 python3 bench/fsync_tail.py append|over|falloc COUNT WRITE_BYTES  (in the directory to test)
Session 51, bench/HISTORY.md."""
import os, sys, time
mode, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = f"fsync-tail-{mode}"
buf = os.urandom(size)
if os.path.exists(path): os.unlink(path)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
if mode == "over":
    z = bytes(1 << 20)
    for _ in range((n * size) // (1 << 20) + 1): os.write(fd, z)
    os.fsync(fd); os.lseek(fd, 0, 0)
elif mode == "falloc":
    os.posix_fallocate(fd, 0, n * size); os.fsync(fd)
lat = []
for i in range(n):
    os.write(fd, buf)
    t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
    time.sleep(float(os.environ.get("GAP","0.001")))
lat.sort()
q = lambda p: lat[min(len(lat)-1, int(p * len(lat)))] * 1000
print(f"{mode:7s} size={size//1024}K n={n} p50={q(.5):.3f} p90={q(.9):.3f} p99={q(.99):.3f} p99.9={q(.999):.3f} max={lat[-1]*1000:.1f} mean={sum(lat)/len(lat)*1000:.3f} ms")
os.close(fd); os.unlink(path)
