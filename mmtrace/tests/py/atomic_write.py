"""The standard atomic-write pattern: write PATH.tmp.PID, fsync, rename() it
to PATH, then map PATH and read it.

    python3 atomic_write.py PATH SIZE_MIB
"""
import mmap
import os
import sys


def main():
    path, mib = sys.argv[1], int(sys.argv[2])
    tmp = f"{path}.tmp.{os.getpid()}"
    block = b"x" * (1 << 20)
    with open(tmp, "wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        total = sum(m[i] for i in range(0, len(m), 4096))
        m.close()
    print(f"renamed {tmp} -> {path}, {total} bytes summed", flush=True)


if __name__ == "__main__":
    main()
