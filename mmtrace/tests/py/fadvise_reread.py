"""Opens a file, drops its cache with posix_fadvise(DONTNEED), then maps and
reads it (every page, or a random sample with --random); ROUNDS times. Prints
the pages resident (mincore) before and after each drop, as JSON, so a test
has page-level ground truth.

    python3 fadvise_reread.py PATH ROUNDS [--random]
"""
import ctypes
import json
import mmap
import os
import random
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident(fd, size):
    """Pages of the file in the page cache now (mincore on a fresh
    read-only mapping, as fincore does)."""
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    vec = ctypes.create_string_buffer((size + 4095) // 4096)
    try:
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec.raw)
    finally:
        libc.munmap(addr, size)


def main():
    path, rounds = sys.argv[1], int(sys.argv[2])
    rand = "--random" in sys.argv
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    pages = size // 4096
    evicted = 0
    added = 0
    for _ in range(rounds):
        before = resident(fd, size)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        after = resident(fd, size)
        evicted += before - after
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        if rand:
            m.madvise(mmap.MADV_RANDOM)
            idx = random.Random(7).sample(range(pages), pages // 16)
        else:
            idx = range(pages)
        s = 0
        for i in idx:
            s += m[i * 4096]
        m.close()
        added += resident(fd, size) - after
    os.close(fd)
    print(json.dumps({"evicted_pages": evicted, "added_pages": added}), flush=True)


if __name__ == "__main__":
    main()
