//! Privileged tests of the verdict and the ledger against ground truth that
//! mmtrace did not compute: real Python programs (tests/py), real memory
//! cgroups, mincore(2), the cgroup's own `memory.stat` and OOM counters.
//! Serialised.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::*;
use serde_json::Value;

mod common;

fn py(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script)
}

/// The system's Python (what users run).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn file_row<'a>(s: &'a Value, suffix: &str) -> &'a Value {
    s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no row for …{suffix} in {}", s["files"]))
}

fn verdict<'a>(recs: &'a [Value], scope: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["type"] == "verdict" && r["scope"] == scope)
        .unwrap_or_else(|| panic!("no {scope} verdict"))
}

/// A file of `lines` lines of 32 MiB each, out of the page cache.
fn lines_file(dir: &Path, lines: usize) -> PathBuf {
    let p = dir.join("lines.txt");
    let mut line = vec![b'y'; 32 << 20];
    *line.last_mut().unwrap() = b'\n';
    let mut data = Vec::with_capacity(lines * line.len());
    for _ in 0..lines {
        data.extend_from_slice(&line);
    }
    std::fs::write(&p, data).unwrap();
    drop_cache(&p);
    p
}

/// Item 1-3 of the truth issue: a Python reader that keeps every line it
/// reads is OOM-killed in a 256 MiB cgroup while the kernel reclaims the
/// file it maps. The verdict names the leak and the victim, not the cache.
#[test]
fn python_leak_under_a_limit_is_an_oom_kill_not_reclaimable_cache() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let data = lines_file(dir.path(), 16);
    let cg = TestCgroup::new("oom", 256 << 20);
    let out_path = dir.path().join("t.jsonl");
    let out = mmtrace()
        .args(["--quiet", "--cgroup", cg.path(), "-o"])
        .arg(&out_path)
        .args(["--", python()])
        .arg(py("mmap_reader.py"))
        .arg(&data)
        .arg("--keep")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "the reader is OOM-killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&out_path);
    let s = summary(&recs);
    let pid = u(&s["command"]["pid"]);
    assert_eq!(s["command"]["oom_killed"], true, "{}", s["command"]);
    let kill = recs
        .iter()
        .find(|r| r["type"] == "oom_kill")
        .expect("an oom_kill record");
    assert_eq!(u(&kill["pid"]), pid, "{kill}");
    assert_eq!(kill["in_scope"], true);
    // The reader held at least 6 lines of 32 MiB when it died (the limit
    // leaves room for ~7); the kill-time anon is the kernel's figure.
    assert!(u(&kill["anon_rss_bytes"]) >= 190 << 20, "{kill}");
    assert!(u(&kill["anon_rss_bytes"]) <= 256 << 20, "{kill}");
    // The cgroup's own OOM counter agrees.
    assert_eq!(
        u(&s["cgroup"]["memory"]["oom_kills"]),
        1,
        "{}",
        s["cgroup"]["memory"]
    );
    for scope in ["cgroup", "process"] {
        let v = verdict(&recs, scope);
        assert_eq!(v["kind"], "oom_killed", "{v}");
        assert_eq!(v["ending"], "oom_killed", "{v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.starts_with("leak: anonymous memory grew by"), "{m}");
        assert!(m.contains(&format!("OOM killer ended pid {pid}")), "{m}");
        assert!(!m.contains("kept running"), "{m}");
        assert!(!m.contains("not a leak"), "{m}");
    }
}

/// Item 4: reclaim asked for by writing a cgroup file (memory.reclaim on v2,
/// memory.force_empty on v1) is proactive, never "pressure".
#[test]
fn proactive_reclaim_is_labelled_and_not_called_pressure() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let data = make_file(dir.path(), "warm.dat", 64 << 20);
    drop_cache(&data);
    let cg = TestCgroup::new("proactive", 4 << 30);
    let out_path = dir.path().join("t.jsonl");
    let done = dir.path().join("read.json");
    let mut child = mmtrace()
        .args(["--quiet", "--cgroup", cg.path(), "-o"])
        .arg(&out_path)
        .args([
            "--",
            env!("CARGO_BIN_EXE_mmtrace"),
            "workload",
            "--pause-ms",
            "4000",
            "--report",
        ])
        .arg(&done)
        .args(["read", "--path"])
        .arg(&data)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The workload writes its report once the read is done (then pauses 4
    // s with the pages charged to the cgroup): reclaim after that, however
    // long a loaded host took to get there.
    let start = std::time::Instant::now();
    while !done.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(done.exists(), "the read did not finish in 120 s");
    let v2 = cg.0.join("memory.reclaim");
    if v2.exists() {
        std::fs::write(&v2, "1G").ok();
    } else {
        std::fs::write(cg.0.join("memory.force_empty"), "0").unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    let recs = records(&out_path);
    let s = summary(&recs);
    let f = file_row(s, "warm.dat");
    let proactive = u(&f["evicted_by"]["proactive"]);
    assert!(
        proactive * 10 >= (64 << 20) / 4096 * 9,
        "≥90% of the 16,384 pages proactively reclaimed: {f}"
    );
    assert_eq!(u(&f["evicted_by"]["memcg_reclaim"]), 0, "{f}");
    let v = verdict(&recs, "cgroup");
    assert_eq!(v["kind"], "cache_only", "{v}");
    assert_eq!(u(&v["reclaimed_bytes"]), 0, "no shortage: {v}");
    assert!(u(&v["proactive_reclaimed_bytes"]) > 0, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains("by proactive reclaim"), "{m}");
    assert!(
        !m.contains("pressure") && !m.contains("cgroup's limit"),
        "{m}"
    );
}

/// Items 5 and 6: a program that drops a file with fadvise before its
/// first read, then reads it, twice. Page-level ground truth from mincore
/// (printed by the program): evictions and additions within 1%, and no
/// refaults (invalidated pages coming back are re-reads).
#[test]
fn evictions_before_the_first_fault_count_and_rereads_are_not_refaults() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let data = make_file(dir.path(), "fa.dat", 128 << 20);
    for random in [false, true] {
        let out_path = dir.path().join(format!("fa-{random}.jsonl"));
        let mut cmd = mmtrace();
        cmd.args(["--quiet", "-o"])
            .arg(&out_path)
            .args(["--", python()])
            .arg(py("fadvise_reread.py"))
            .arg(&data)
            .arg("2");
        if random {
            cmd.arg("--random");
        }
        let out = cmd.output().unwrap();
        ok(&out);
        let truth: Value = serde_json::from_slice(
            out.stdout
                .split(|b| *b == b'\n')
                .rfind(|l| l.starts_with(b"{"))
                .expect("the program's JSON line"),
        )
        .unwrap();
        let recs = records(&out_path);
        let s = summary(&recs);
        let f = file_row(s, "fa.dat");
        for (ours, theirs) in [
            ("pages_evicted", "evicted_pages"),
            ("pages_added", "added_pages"),
        ] {
            let (a, b) = (u(&f[ours]), u(&truth[theirs]));
            assert!(
                b > 0 && a.abs_diff(b) * 100 <= b,
                "random={random}: {ours} {a} vs mincore {b} (±1%): {f}"
            );
        }
        assert_eq!(u(&f["refault_pages"]), 0, "re-reads are not refaults: {f}");
        assert!(u(&f["readded_pages"]) > 0, "{f}");
        // Background reclaim (DAMON here) may take a few pages too.
        let fadvise = u(&f["evicted_by"]["fadvise"]);
        assert!(fadvise * 100 >= u(&f["pages_evicted"]) * 99, "{f}");
    }
}

/// Item 6: under memcg pressure the per-file refaults add up to the
/// cgroup's own `workingset_refault_file` growth (±5%).
#[test]
fn refaults_match_the_kernels_workingset_counter() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let data = make_file(dir.path(), "re.dat", 256 << 20);
    drop_cache(&data);
    // The scenario: readahead brings pages in faster than the 64 MiB limit
    // lets them stay, so some are reclaimed before use and read again
    // (refaults with shadow entries). Most runs thrash like that; a run
    // that never did (1 refault seen once on a loaded host) is repeated,
    // up to three times, before the comparison.
    let mut attempt = 0;
    let (ours, kernel, cgroup) = loop {
        attempt += 1;
        drop_cache(&data);
        let cg = TestCgroup::new(&format!("refault{attempt}"), 64 << 20);
        let out_path = dir.path().join(format!("t{attempt}.jsonl"));
        let bin = env!("CARGO_BIN_EXE_mmtrace");
        let d = data.display();
        let out = mmtrace()
            .args(["--quiet", "--cgroup", cg.path(), "-o"])
            .arg(&out_path)
            .args([
                "--",
                "/bin/sh",
                "-c",
                &format!("{bin} workload mmap-read --path {d}"),
            ])
            .output()
            .unwrap();
        ok(&out);
        let recs = records(&out_path);
        let s = summary(&recs);
        let ours: u64 = s["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| u(&f["refault_pages"]))
            .sum();
        let kernel = u(&s["cgroup"]["kernel_refault_pages"]);
        if kernel > 1000 || attempt == 3 {
            break (ours, kernel, s["cgroup"].clone());
        }
    };
    assert!(
        kernel > 1000,
        "readahead pages were reclaimed and read again: {cgroup}"
    );
    assert!(
        ours.abs_diff(kernel) * 20 <= kernel,
        "per-file refaults {ours} vs workingset_refault_file {kernel} (±5%)"
    );
}

/// Item 7: write to a temporary name, rename, map the final name: the row
/// carries the final name and its residency.
#[test]
fn an_atomic_write_is_reported_under_the_final_name() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let fin = dir.path().join("table.arrow");
    let out_path = dir.path().join("t.jsonl");
    let out = mmtrace()
        .args(["--quiet", "-o"])
        .arg(&out_path)
        .args(["--", python()])
        .arg(py("atomic_write.py"))
        .arg(&fin)
        .arg("8")
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs);
    let f = file_row(s, "table.arrow");
    assert_eq!(f["path"], fin.display().to_string(), "{f}");
    assert_eq!(f["deleted"], false, "{f}");
    // All 2,048 written pages stay resident, except any DAMON took in the
    // background (counted under its name).
    assert_eq!(
        u(&f["resident_pages"]) + background_evictions(f),
        2048,
        "{f}"
    );
    assert!(
        !s["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"].as_str().unwrap_or("").contains(".tmp.")),
        "no row under the temporary name: {}",
        s["files"]
    );
}

/// Item 7: a memfd mapping is named as the kernel names it.
#[test]
fn a_memfd_mapping_is_named() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let out_path = dir.path().join("t.jsonl");
    let out = mmtrace()
        .args(["--quiet", "-o"])
        .arg(&out_path)
        .args(["--", python()])
        .arg(py("memfd_map.py"))
        .args(["mmtrace-test", "100"])
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs);
    let f = file_row(s, "/memfd:mmtrace-test");
    assert_eq!(u(&f["minor_faults"]), 100, "{f}");
    assert_eq!(f["path_known"], true);
}
