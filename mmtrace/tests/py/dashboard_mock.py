#!/usr/bin/env python3
"""A stand-in for `mmtrace --serve`, for developing the web dashboard
(mmtrace/assets/dashboard/) without root, eBPF or a real workload.

It serves the dashboard's files and synthetic /api/snapshot, /events (SSE)
and /api/pagemap following the server contract, from a made-up trace: a
process in a 256 MiB memory cgroup scans a 1 GiB file (a moving front,
reclaimed behind it), keeps an index hot, maps libc, and has two files with
hostile names. Not used by any test; run it and open the page:

    python3 mmtrace/tests/py/dashboard_mock.py --port 8099 [--duration 60]
        [--no-cgroup] [--no-events] [--oom-at 20] [--speed 1.0]
"""
import argparse
import json
import math
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "assets", "dashboard")
PAGE = 4096
MIB = 1 << 20
REASONS = ["memcg_reclaim", "direct_reclaim", "kswapd", "other_reclaim", "fadvise", "truncate",
           "unlink", "drop_caches", "other", "proactive", "damon", "khugepaged", "compaction"]
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", "": "text/plain; charset=utf-8"}

ARGS = None
START = time.time()
LOCK = threading.Lock()
STATE = {"latest": None, "summary": None, "verdicts": [], "oom_kills": [], "events": [],
         "history": None, "clients": 0, "seq": 0}
COND = threading.Condition(LOCK)
LOG = []  # (index, type, record): every record since the start, for SSE


def elapsed():
    return (time.time() - START) * ARGS.speed


def meta():
    return {"type": "meta", "schema_version": 2, "mmtrace_version": "0.1.0-mock",
            "kernel": "6.18.0-mock", "start_time_unix_ms": int(START * 1000), "page_size": PAGE,
            "interval_s": 1.0,
            "scope": {"pids": [], "command": ["scan", "--path", "/data/data.bin"],
                      "cgroup": None if ARGS.no_cgroup else "/sys/fs/cgroup/demo.slice",
                      "all": False, "follow_children": True,
                      "events": [] if ARGS.no_events else ["all"], "sample": 1},
            "features": {"eviction_syscalls": True, "eviction_owner": True, "write_faults": True,
                         "vma_cache": True, "exit_group_dead": True, "oom_kills": True,
                         "proactive_reclaim": True},
            "probes": []}


# The made-up files: (dev, ino, path, size in pages).
FILES = [
    ("253:1", 1201, "/data/data.bin", 262144),
    ("253:1", 1202, "/data/index.db", 16384),
    ("253:1", 77, "/usr/lib/x86_64-linux-gnu/libc.so.6", 500),
    ("253:1", 1203, '/data/we"ird\n<b>name</b> & \u202eexe.txt', 2048),
    ("253:1", 1204, "/data/caf\ufffd.bin", 1024),
]


def scan_pos(t):
    return min(262144, int(t * 6000))


def file_row(i, t):
    dev, ino, path, size = FILES[i]
    ev = {r: 0 for r in REASONS}
    minor = major = added = resident = refault = mapped = 0
    if i == 0:
        pos = scan_pos(t)
        added = pos + int(pos * 0.05)  # some re-reads
        resident = min(pos, 50000)
        evicted = added - resident
        ev["memcg_reclaim"] = int(evicted * 0.9)
        ev["kswapd"] = int(evicted * 0.07)
        ev["damon"] = evicted - ev["memcg_reclaim"] - ev["kswapd"]
        refault = int(pos * 0.05)
        minor, major, mapped = pos // 16, pos // 32, pos
    elif i == 1:
        minor, major = int(t * 900), int(t * 12)
        added = min(16384, 4000 + int(t * 40))
        resident = min(added, 6000 + int(200 * math.sin(t)))
        ev["memcg_reclaim"] = max(0, added - resident)
        mapped = minor * 4
    elif i == 2:
        minor, mapped, resident = 140, 420, 500
    elif i == 3:
        minor, added, resident = 3, 2048, 2048
        if t > 15:
            ev["fadvise"] = 2048
            resident = 0
    else:
        added, resident = 1024, 512
        ev["truncate"] = 512
    row = {"path": path, "path_known": True, "deleted": i == 4, "kind": "file", "dev": dev,
           "ino": ino, "mappings": 1, "minor_faults": minor, "major_faults": major,
           "write_faults": minor // 10, "cow_faults": 0, "pages_mapped": mapped,
           "pages_added": added, "pages_evicted": sum(ev.values()), "refault_pages": refault,
           "readded_pages": 0, "evicted_by": ev,
           "evicted_owned_pages": None if ARGS.no_cgroup else sum(ev.values()),
           "resident_pages": resident, "file_pages": size}
    if i == 4:
        row["path_bytes_hex"] = "2f646174612f636166ff2e62696e"
    return row


def report(t):
    files = [file_row(i, t) for i in range(len(FILES))]
    anon_pages = int(2000 + t * 300)
    files.append({"path": "[anon]", "path_known": True, "deleted": False, "kind": "anon",
                  "dev": None, "ino": 0, "mappings": 3, "minor_faults": anon_pages,
                  "major_faults": 0, "write_faults": anon_pages, "cow_faults": 0,
                  "pages_mapped": anon_pages, "pages_added": 0, "pages_evicted": 0,
                  "refault_pages": 0, "readded_pages": 0, "evicted_by": {r: 0 for r in REASONS},
                  "evicted_owned_pages": None, "resident_pages": anon_pages, "file_pages": None})
    files.sort(key=lambda f: -(f["minor_faults"] + f["major_faults"] + f["pages_added"]))
    minor = sum(f["minor_faults"] for f in files)
    major = sum(f["major_faults"] for f in files)
    procs = [
        {"pid": 4242, "comm": "scan", "alive": True, "target": True,
         "minor_faults": minor - 500, "major_faults": major, "write_faults": minor // 10,
         "cow_faults": 3, "kernel_minor_faults": minor - 480, "kernel_major_faults": major,
         "kernel_source": "proc_stat", "untraced_minor_faults": 20, "untraced_major_faults": 0,
         "rss_file_pages": 50000 + 6000, "rss_anon_pages": anon_pages, "rss_shmem_pages": 0},
        {"pid": 4250, "comm": "sh", "alive": False, "target": False, "minor_faults": 500,
         "major_faults": 0, "write_faults": 40, "cow_faults": 30, "kernel_minor_faults": 500,
         "kernel_major_faults": 0, "kernel_source": "exit", "untraced_minor_faults": 0,
         "untraced_major_faults": 0, "rss_file_pages": None, "rss_anon_pages": None,
         "rss_shmem_pages": None},
    ]
    rep = {"processes": procs, "files": files, "lost_faults": int(t // 30),
           "errors": [] if t < 30 else [{"name": "file_map_full", "count": int(t // 30),
                                         "meaning": "file rows were full; raise --max-files"}],
           "mappings": [], "reclaimers": {"kdamond.0": files[0]["evicted_by"].get("damon", 0)},
           "cgroups": [], "events_dropped": None if ARGS.no_events else int(t * 3)}
    if ARGS.no_cgroup:
        rep["cgroup"] = None
    else:
        usage = min(256 * MIB - 4 * MIB, int((50000 + 6000) * PAGE * min(1, t / 8) + anon_pages * PAGE))
        anon = anon_pages * PAGE
        some = int(t * t * 900)
        mem = {"usage_bytes": usage, "limit_bytes": 256 * MIB, "high_bytes": None,
               "file_bytes": max(0, usage - anon - 2 * MIB), "anon_bytes": anon,
               "shmem_bytes": 0, "dirty_bytes": 0, "refault_file": int(scan_pos(t) * 0.05),
               "oom_kills": 0, "limit_hits": int(t * 10),
               "psi": {"some_avg10": 3.2, "some_total_us": some, "full_avg10": 1.1,
                       "full_total_us": some // 3},
               "psi_scope": "cgroup"}
        rep["cgroup"] = {"path": "/sys/fs/cgroup/demo.slice", "version": "v2", "memory": mem,
                         "peak": mem, "kernel_refault_pages": mem["refault_file"],
                         "usage_history": [], "reclaim": {
                             "memcg_episodes": int(t * 40), "memcg_reclaimed_pages": scan_pos(t),
                             "memcg_seconds": t * 0.02, "direct_episodes": 0,
                             "direct_reclaimed_pages": 0, "direct_seconds": 0.0,
                             "proactive_episodes": 0, "proactive_reclaimed_pages": 0,
                             "proactive_seconds": 0.0},
                         "page_size": PAGE}
    return rep


def history_push(h, rec):
    """The server's columnar history: cumulative totals per interval."""
    files = rec["files"]
    mem = (rec.get("cgroup") or {}).get("memory") or {}
    psi = mem.get("psi") or {}
    h["elapsed_s"].append(rec["elapsed_s"])
    h["minor_faults"].append(sum(p["minor_faults"] for p in rec["processes"]))
    h["major_faults"].append(sum(p["major_faults"] for p in rec["processes"]))
    h["write_faults"].append(sum(p["write_faults"] for p in rec["processes"]))
    h["pages_added"].append(sum(f["pages_added"] for f in files))
    h["pages_evicted"].append(sum(f["pages_evicted"] for f in files))
    for r in REASONS:
        h["evicted_by"].setdefault(r, []).append(sum(f["evicted_by"].get(r, 0) for f in files))
    h["refault_pages"].append(sum(f["refault_pages"] for f in files))
    h["cgroup_usage_bytes"].append(mem.get("usage_bytes"))
    h["cgroup_limit_bytes"].append(mem.get("limit_bytes"))
    h["cgroup_file_bytes"].append(mem.get("file_bytes"))
    h["cgroup_anon_bytes"].append(mem.get("anon_bytes"))
    h["psi_some_total_us"].append(psi.get("some_total_us"))
    h["psi_full_total_us"].append(psi.get("full_total_us"))
    h["events_dropped"].append(rec.get("events_dropped"))


def publish(kind, rec):
    with COND:
        LOG.append((len(LOG), kind, rec))
        COND.notify_all()


def verdicts(t):
    if ARGS.no_cgroup:
        return []
    return [{"scope": "cgroup", "pid": None, "cgroup": "/demo.slice", "kind": "cache_only",
             "thrashing": True, "thrashing_files": [{"path": "/data/data.bin",
                                                     "refault_pages": 13000, "file_pages": 262144}],
             "ending": "running", "file_growth_bytes": 200 * MIB, "anon_growth_bytes": 8 * MIB,
             "dirty_shmem_bytes": 0, "reclaimed_bytes": scan_pos(t) * PAGE,
             "proactive_reclaimed_bytes": 0, "reclaimed_by": {}, "top_file": "/data/data.bin",
             "top_file_reclaimed_bytes": scan_pos(t) * PAGE, "oom_kill": None,
             "kernel_refault_pages": 13000,
             "message": "the growth is page cache (/data/data.bin): the kernel reclaimed %d MiB "
                        "of it under the cgroup's limit and the process kept running"
                        % (scan_pos(t) * PAGE // MIB)}]


def tracer():
    h = {k: [] for k in ["elapsed_s", "minor_faults", "major_faults", "write_faults",
                         "pages_added", "pages_evicted", "refault_pages", "cgroup_usage_bytes",
                         "cgroup_limit_bytes", "cgroup_file_bytes", "cgroup_anon_bytes",
                         "psi_some_total_us", "psi_full_total_us", "events_dropped"]}
    h["evicted_by"] = {}
    STATE["history"] = h
    publish("meta", meta())
    for k in range(1, int(ARGS.prefill) + 1):  # a trace already under way
        STATE["seq"] += 1
        rec = {"type": "interval", "seq": STATE["seq"], "elapsed_s": float(k)}
        rec.update(report(k))
        STATE["latest"] = rec
        history_push(h, rec)
    next_tick = time.time() + 1
    oom_done = False
    while True:
        t = elapsed()
        if not ARGS.no_events:
            for _ in range(random.randint(5, 15)):
                pos = scan_pos(t)
                kind = random.choice(["minor_fault", "major_fault", "cache_add", "eviction"])
                off = max(0, pos - random.randint(0, 50000)) if kind == "eviction" else \
                    max(0, pos - random.randint(0, 300))
                ev = {"type": "event", "kind": kind, "time_s": round(t, 6), "pid": 4242,
                      "tid": 4242, "comm": "scan", "dev": "253:1", "ino": 1201,
                      "path": "/data/data.bin", "offset_pages": off, "pages": 4, "addr": None,
                      "write": False, "cow": False,
                      "reason": "memcg_reclaim" if kind == "eviction" else None,
                      "owned": True if kind == "eviction" else None,
                      "latency_us": 180.0 if kind == "major_fault" else None}
                with LOCK:
                    STATE["events"] = (STATE["events"] + [ev])[-256:]
                publish("event", ev)
        if ARGS.oom_at and t >= ARGS.oom_at and not oom_done:
            oom_done = True
            oom = {"type": "oom_kill", "pid": 4260, "comm": "leaky-worker",
                   "anon_rss_bytes": 240 * MIB, "file_rss_bytes": 3 * MIB, "shmem_rss_bytes": 0,
                   "total_vm_bytes": 900 * MIB, "oom_score_adj": 0, "in_scope": True,
                   "cgroup": "/demo.slice", "elapsed_s": round(t, 3)}
            with LOCK:
                STATE["oom_kills"].append(oom)
            publish("oom_kill", oom)
        if time.time() >= next_tick:
            next_tick += 1
            with LOCK:
                STATE["seq"] += 1
                rec = {"type": "interval", "seq": STATE["seq"], "elapsed_s": round(t, 3)}
                rec.update(report(t))
                STATE["latest"] = rec
                history_push(h, rec)
            publish("interval", rec)
            if ARGS.duration and t >= ARGS.duration:
                vs = verdicts(t)
                for v in vs:
                    publish("verdict", dict(type="verdict", **v))
                summ = {"type": "summary", "elapsed_s": round(t, 3), "end_reason": "target_exited"}
                summ.update(report(t))
                summ.update({"command": {"pid": 4242, "exit_code": 0, "signal": None,
                                         "rusage_minor_faults": 1, "rusage_major_faults": 1,
                                         "oom_killed": False},
                             "bpf_stats": [{"program": "page_fault", "run_count": 123456,
                                            "run_time_ns": 98765432, "ns_per_run": 800.0},
                                           {"program": "filemap_add", "run_count": 4567,
                                            "run_time_ns": 1234567, "ns_per_run": 270.3}],
                             "verdicts": vs, "oom_kills": STATE["oom_kills"]})
                with LOCK:
                    STATE["verdicts"] = [dict(type="verdict", **v) for v in vs]
                    STATE["summary"] = summ
                publish("summary", summ)
                return
        time.sleep(0.1)


def pagemap(dev, ino):
    t = elapsed()
    for i, (d, n, path, size) in enumerate(FILES):
        if d == dev and n == ino:
            break
    else:
        return None
    nb = min(512, size)
    bands = []
    pos = scan_pos(t)
    for b in range(nb):
        s, e = b * size // nb, (b + 1) * size // nb
        n = e - s
        if i == 0:
            res = max(0, min(e, pos) - max(s, pos - 50000))
            faults = (n // 16 if s < pos else 0) if not ARGS.no_events else None
            evs = (n if e < pos - 50000 else 0) if not ARGS.no_events else None
        elif i == 1:
            hot = 4000 <= s < 6000
            res = n if hot else n // 5 * (b % 3 == 0)
            faults = (int(t * 20) if hot else b % 4) if not ARGS.no_events else None
            evs = (0 if hot else b % 3) if not ARGS.no_events else None
        else:
            res = n if b < nb * 0.8 else 0
            faults, evs = (0, 0) if not ARGS.no_events else (None, None)
        bands.append({"start_page": s, "end_page": e, "resident_pages": res,
                      "faults": faults, "evictions": evs})
    return {"path": path, "size_bytes": size * PAGE, "page_size": PAGE, "pages": size,
            "resident_pages": sum(b["resident_pages"] for b in bands), "bands": bands}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, code, body, ctype="application/json"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        # The strict policy the page must work under (no inline script/style).
        self.send_header("Content-Security-Policy", "default-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urlparse(self.path)
        if u.path == "/api/snapshot":
            with LOCK:
                snap = {"meta": meta(), "latest": STATE["latest"], "summary": STATE["summary"],
                        "verdicts": STATE["verdicts"], "oom_kills": STATE["oom_kills"],
                        "events": STATE["events"], "history": STATE["history"],
                        "server": {"clients": STATE["clients"]}}
                body = json.dumps(snap)
            return self.send(200, body)
        if u.path == "/api/pagemap":
            q = parse_qs(u.query)
            try:
                pm = pagemap(q["dev"][0], int(q["ino"][0]))
            except (KeyError, ValueError):
                return self.send(400, '{"error":"dev and ino needed"}')
            if pm is None:
                return self.send(404, '{"error":"not in the trace"}')
            return self.send(200, json.dumps(pm))
        if u.path == "/metrics":
            return self.send(200, "mmtrace_sse_clients %d\n# EOF\n" % STATE["clients"],
                             "text/plain; version=0.0.4")
        if u.path == "/events":
            return self.sse()
        name = "index.html" if u.path == "/" else u.path.lstrip("/")
        full = os.path.join(ASSETS, name)
        if "/" in name or not os.path.isfile(full):
            return self.send(404, "not found", "text/plain")
        with open(full, "rb") as f:
            self.send(200, f.read(), TYPES.get(os.path.splitext(name)[1], TYPES[""]))

    def sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        with LOCK:
            STATE["clients"] += 1
            start = len(LOG)
            first = [("meta", meta())]
            if STATE["latest"]:
                first.append(("interval", STATE["latest"]))
            first += [("oom_kill", o) for o in STATE["oom_kills"]]
            first += [("verdict", v) for v in STATE["verdicts"]]
            if STATE["summary"]:
                first.append(("summary", STATE["summary"]))
        try:
            self.wfile.write(b"retry: 2000\n\n")
            for kind, rec in first:
                self.emit(kind, rec)
            if STATE["summary"]:
                return
            i = start
            while True:
                with COND:
                    COND.wait_for(lambda: len(LOG) > i, timeout=15)
                    batch = LOG[i:]
                if not batch:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                for _, kind, rec in batch:
                    self.emit(kind, rec)
                    if kind == "summary":
                        return
                i += len(batch)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with LOCK:
                STATE["clients"] -= 1
            self.close_connection = True

    def emit(self, kind, rec):
        self.wfile.write(("event: %s\ndata: %s\n\n" % (kind, json.dumps(rec))).encode())
        self.wfile.flush()


def main():
    global ARGS, START
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--duration", type=float, default=0, help="end the trace after N s (0: never)")
    p.add_argument("--no-cgroup", action="store_true")
    p.add_argument("--no-events", action="store_true")
    p.add_argument("--oom-at", type=float, default=0)
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--prefill", type=float, default=0, help="start N simulated seconds in")
    ARGS = p.parse_args()
    START = time.time() - ARGS.prefill / ARGS.speed
    threading.Thread(target=tracer, daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
