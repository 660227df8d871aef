"""A second writer of zeros at RATE MB/s for SECONDS, buffered (an fdatasync every 8 MiB) or "direct" (O_DIRECT, one sync a file),
to run beside bench/fsync_tail.py.  Usage: python3 bench/zero_writer.py RATE SECONDS buffered|direct
Session 51, bench/HISTORY.md."""
import os, sys, time, mmap
rate = float(sys.argv[1]) * 1e6; dur = float(sys.argv[2]); direct = sys.argv[3] == "direct"
path = "zero-writer"; z = mmap.mmap(-1, 1 << 20)
start = time.time(); written = 0
while time.time() - start < dur:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o644)
    for i in range(256):
        os.write(fd, z); written += len(z)
        if not direct and i % 8 == 7: os.fdatasync(fd)
        ahead = written / rate - (time.time() - start)
        if ahead > 0: time.sleep(ahead)
        if time.time() - start >= dur: break
    os.fdatasync(fd); os.close(fd); os.unlink(path)
print(f"zeroer wrote {written/1e6:.0f} MB in {time.time()-start:.1f}s")
