//! Privileged tests of the write path: a program that writes records into a
//! shared file mapping and flushes after every one (the pattern),
//! checked against what the workload itself did and timed. Real BPF, on
//! the target's disk (ext4 here: tmpfs never dirties pages); run as root.
use std::path::Path;

use common::*;
use serde_json::Value;

mod common;

/// Runs the msync workload under mmtrace; returns (summary, workload report).
fn traced_msync(dir: &Path, opts: &[&str], extra: &[&str]) -> (Value, Value) {
    let out_path = dir.join("trace.jsonl");
    let rep = dir.join("workload.json");
    let data = dir.join("records.bin");
    let out = mmtrace()
        .args(opts)
        .args(["--quiet", "-o"])
        .arg(&out_path)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_mmtrace"))
        .args(["workload", "msync", "--records", "1000", "--path"])
        .arg(&data)
        .arg("--report")
        .arg(&rep)
        .args(extra)
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs).clone();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    (s, r)
}

fn file_row<'a>(s: &'a Value, r: &Value) -> &'a Value {
    s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["ino"] == r["ino"] && f["kind"] == "file")
        .unwrap_or_else(|| panic!("no row for the records file in {}", s["files"]))
}

/// By default msync(MS_SYNC) is seen on ext4 (`ext4_sync_file_enter/exit`
/// inside the msync syscall); with `--msync-syscalls`, through the syscall
/// tracepoints. Both must count every call.
#[test]
fn flushing_after_every_record_shows_its_faults_writes_and_time() {
    require_root();
    let _l = lock();
    for opts in [&[][..], &["--msync-syscalls"][..]] {
        let dir = scratch();
        flushing(dir.path(), opts);
    }
}

fn flushing(dir: &Path, opts: &[&str]) {
    let (s, r) = traced_msync(dir, opts, &[]);
    let f = file_row(&s, &r);
    let w = &f["write_path"];
    let calls = u(&r["msync_calls"]);
    let distinct = u(&r["distinct_pages_written"]);
    assert_eq!(calls, 2000, "{r}");
    // Every call is counted, as MS_SYNC, on this file.
    assert_eq!(u(&w["msync_sync_calls"]), calls, "{w}");
    assert_eq!(u(&w["msync_async_calls"]), 0, "{w}");
    // Each write after a flush faults on a write-protected page again:
    // one write-protect fault per call but the first write to each page
    // (a first touch, not write-protect).
    let wp = u(&f["wp_shared_faults"]);
    assert!(
        wp + distinct >= calls && wp <= calls,
        "write-protect faults {wp} for {calls} flushes of {distinct} pages"
    );
    // Each flush wrote at least the page just written; in all, at least
    // every distinct page.
    let written = u(&w["written_back_pages"]);
    assert_eq!(w["written_back_source"], "filesystem", "{w}");
    assert!(written >= distinct, "written back {written} < {distinct}");
    assert!(
        u(&w["msync_pages_written"]) >= calls,
        "pages written by {calls} MS_SYNC calls: {w}"
    );
    assert!(u(&w["dirtied_pages"]) >= calls, "{w}");
    // The time in msync agrees with the workload's own clock (within 30%).
    let (traced, own) = (u(&w["msync_ns"]) as f64, u(&r["msync_ns"]) as f64);
    assert!(
        (traced - own).abs() <= 0.3 * own,
        "msync time traced {traced} ns, measured by the workload {own} ns"
    );
    // The summary's cost section carries the same figures.
    let c = &s["mmap_cost"];
    assert!(u(&c["msync_sync_calls"]) >= calls, "{c}");
    assert!(u(&c["wp_shared_faults"]) >= wp, "{c}");
}

#[test]
fn with_msync_syscalls_ms_async_is_counted_apart_and_writes_nothing() {
    require_root();
    let _l = lock();
    let dir = scratch();
    let (s, r) = traced_msync(
        dir.path(),
        &["--msync-syscalls"],
        &["--async", "--no-rewrite"],
    );
    let f = file_row(&s, &r);
    let w = &f["write_path"];
    let calls = u(&r["msync_calls"]);
    assert_eq!(calls, 1000, "{r}");
    assert_eq!(u(&w["msync_async_calls"]), calls, "{w}");
    assert_eq!(u(&w["msync_sync_calls"]), 0, "{w}");
    // MS_ASYNC writes nothing in the caller: no page is written during
    // the calls, so pages stay dirty and writes do not fault again.
    assert_eq!(u(&w["msync_pages_written"]), 0, "{w}");
    let distinct = u(&r["distinct_pages_written"]);
    assert!(
        u(&f["wp_shared_faults"]) < distinct,
        "no write-protect faults expected beyond a flusher pass: {f}"
    );
    assert!(u(&w["dirtied_pages"]) >= distinct, "{w}");
}
