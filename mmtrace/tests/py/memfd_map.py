"""Maps a memfd (an anonymous file), touches its pages and keeps the mapping
for half a second, as programs that share memory through a memfd do.

    python3 memfd_map.py NAME PAGES
"""
import mmap
import os
import sys
import time


def main():
    name, pages = sys.argv[1], int(sys.argv[2])
    fd = os.memfd_create(name)
    os.ftruncate(fd, pages * 4096)
    m = mmap.mmap(fd, pages * 4096)
    for i in range(pages):
        m[i * 4096] = 1
    print(f"touched {pages} pages of memfd:{name}", flush=True)
    time.sleep(0.5)
    m.close()
    os.close(fd)


if __name__ == "__main__":
    main()
