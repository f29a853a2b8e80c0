"""A user's program: read a big file line by line through mmap (or read(2)).

--keep holds a bytes copy of every line it reads (anonymous memory that
grows: a leak, as users write them by accident). Under a memory limit
smaller than the file plus the copies, the OOM killer ends it.

    python3 mmap_reader.py PATH [--keep] [--read] [--pause S]
"""
import mmap
import sys
import time


def main():
    path = sys.argv[1]
    keep = "--keep" in sys.argv
    use_read = "--read" in sys.argv
    pause = float(sys.argv[sys.argv.index("--pause") + 1]) if "--pause" in sys.argv else 0.0
    kept = []
    lines = 0
    with open(path, "rb") as f:
        if use_read:
            source = f
        else:
            source = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        while True:
            line = source.readline()
            if not line:
                break
            lines += 1
            if keep:
                kept.append(bytes(line))
            if pause:
                time.sleep(pause)
    print(f"read {lines} lines, kept {len(kept)}", flush=True)


if __name__ == "__main__":
    main()
