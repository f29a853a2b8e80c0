//! Privileged tests of cgroup tracing, eviction reasons and the verdict:
//! real memory cgroups (v2 with a memory controller where there is one, else
//! v1), real eBPF programs, real workloads. Serialised.
use std::{path::Path, process::Stdio};

use common::*;
use serde_json::Value;

mod common;

fn cgroup_verdict(recs: &[Value]) -> &Value {
    recs.iter()
        .find(|r| r["type"] == "verdict" && r["scope"] == "cgroup")
        .unwrap_or_else(|| panic!("no cgroup verdict in {recs:?}"))
}

#[test]
fn demo_under_a_limit_is_reclaimed_cache_not_a_leak() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let out_path = dir.path().join("demo.jsonl");
    let (size, limit) = (256u64 << 20, 64u64 << 20);
    let out = mmtrace()
        .args(["demo", "--size", "256M", "--limit", "64M", "--quiet", "-o"])
        .arg(&out_path)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs);
    assert_eq!(
        s["command"]["exit_code"], 0,
        "the reader was not OOM-killed: {}",
        s["command"]
    );
    assert!(s["command"]["signal"].is_null());
    let f = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("mmtrace-demo.dat"))
        })
        .expect("the demo file's row");
    let ps = 4096;
    let file_pages = size / ps;
    // Every page came in once, plus the refaults (readahead pages evicted
    // before they were read, then read again).
    let first_time = u(&f["pages_added"]) - u(&f["refault_pages"]);
    assert!(
        first_time.abs_diff(file_pages) * 50 <= file_pages,
        "added {first_time} vs {file_pages} (±2%): {f}"
    );
    // Everything above the limit had to be reclaimed by the memcg, 10% slack
    // for what the cgroup's other memory takes.
    let memcg = u(&f["evicted_by"]["memcg_reclaim"]);
    let floor = (size - limit) / ps;
    assert!(
        memcg * 10 >= floor * 9,
        "memcg reclaim evicted {memcg} pages, expected ≥ ~{floor}: {f}"
    );
    assert_eq!(
        u(&f["evicted_owned_pages"]),
        u(&f["pages_evicted"]),
        "the pages were the demo cgroup's own"
    );
    let v = cgroup_verdict(&recs);
    assert_eq!(v["kind"], "cache_only", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("not a leak: the kernel reclaimed"),
        "{v}"
    );
    let reclaim = &s["cgroup"]["reclaim"];
    assert!(u(&reclaim["memcg_episodes"]) > 0, "{reclaim}");
    // Cleaned up.
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("mmtrace-demo-")
    }));
}

#[test]
fn anonymous_growth_in_a_cgroup_gets_the_leak_verdict() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let cg = TestCgroup::new("leak", 512 << 20);
    let out_path = dir.path().join("t.jsonl");
    let out = mmtrace()
        .args(["--quiet", "--cgroup", cg.path(), "-o"])
        .arg(&out_path)
        .args([
            "--",
            env!("CARGO_BIN_EXE_mmtrace"),
            "workload",
            "leak",
            "--size",
            "128M",
            "--steps",
            "4",
            // keep the memory long enough for the 200 ms samples to see its peak
            "--pause-ms",
            "600",
        ])
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let v = cgroup_verdict(&recs);
    assert_eq!(v["kind"], "anonymous_growth", "{v}");
    assert!(u(&v["anon_growth_bytes"]) >= 100 << 20, "{v}");
    assert!(
        v["message"].as_str().unwrap().starts_with("possible leak"),
        "{v}"
    );
}

#[test]
fn fadvise_and_truncate_evictions_get_their_reasons() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let m = env!("CARGO_BIN_EXE_mmtrace");
    let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
    for p in [&a, &b] {
        make_file(
            dir.path(),
            p.file_name().unwrap().to_str().unwrap(),
            8 << 20,
        );
    }
    let rep = dir.path().join("r.json");
    // b leaves the cache first, so cat's reading adds it back (making it a
    // file of interest) before truncate evicts it.
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&b).unwrap();
        // SAFETY: valid fd.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }
    let script = format!(
        "{m} workload evict --pause-ms 600 --report {r} --path {a} && cat {b} > /dev/null && sleep 0.4 && truncate -s 0 {b}",
        r = rep.display(),
        a = a.display(),
        b = b.display()
    );
    let out_path = dir.path().join("t.jsonl");
    let out = mmtrace()
        .args(["--quiet", "-o"])
        .arg(&out_path)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs);
    let row = |p: &Path| {
        s["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p.to_str().unwrap())
            .cloned()
            .expect("file row")
    };
    let (ra, rb) = (row(&a), row(&b));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let evicted = u(&report["resident_before"]) - u(&report["resident_after"]);
    // DAMON reclaims page cache in the background on this VM: a page it
    // takes between the workload's two mincore() calls is counted as
    // evicted by the workload but attributed (correctly) to DAMON.
    let (fa, bga) = (u(&ra["evicted_by"]["fadvise"]), background_evictions(&ra));
    assert!(
        fa <= evicted && fa + bga >= evicted,
        "fadvise {fa} vs mincore {evicted}: {ra}"
    );
    assert_eq!(u(&ra["pages_evicted"]), fa + bga, "{ra}");
    // b: every eviction is truncate's, except pages a background reclaimer
    // took between cat and truncate.
    let (tb, bgb) = (u(&rb["evicted_by"]["truncate"]), background_evictions(&rb));
    assert_eq!(tb + bgb, u(&rb["pages_evicted"]), "{rb}");
    assert!(tb >= 2048 * 9 / 10, "{rb}");
}

#[test]
fn cgroup_scope_counts_joiners_and_never_outsiders() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let cg = TestCgroup::new("scope", 1 << 30);
    let out_path = dir.path().join("t.jsonl");
    let mut tracer = mmtrace()
        .args(["--cgroup", cg.path(), "--duration", "4", "-o"])
        .arg(&out_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = wait_tracing(&mut tracer);
    let pages = "20000";
    let mut joiner = mmtrace()
        .args(["workload", "anon", "--pages", pages, "--pause-ms", "800"])
        .spawn()
        .unwrap();
    let mut outsider = mmtrace()
        .args(["workload", "anon", "--pages", pages, "--pause-ms", "800"])
        .spawn()
        .unwrap();
    cg.add(joiner.id());
    joiner.wait().unwrap();
    outsider.wait().unwrap();
    let status = tracer.wait().unwrap();
    assert!(status.success(), "{}", stderr.join().unwrap());
    let recs = records(&out_path);
    let s = summary(&recs);
    let procs = s["processes"].as_array().unwrap();
    let j = procs
        .iter()
        .find(|p| p["pid"] == joiner.id())
        .expect("the process that joined is traced");
    assert!(u(&j["minor_faults"]) >= 20_000, "{j}");
    let diff = j["untraced_minor_faults"].as_i64().unwrap();
    assert!(diff.abs() <= 64, "joined-late baseline: {j}");
    assert!(
        procs.iter().all(|p| p["pid"] != outsider.id()),
        "the outsider was counted"
    );
}

#[test]
fn removing_the_cgroup_ends_the_trace_with_a_final_report() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let cg = TestCgroup::new("rm", 1 << 30);
    let out_path = dir.path().join("t.jsonl");
    let mut tracer = mmtrace()
        .args(["--cgroup", cg.path(), "--duration", "30", "-o"])
        .arg(&out_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = wait_tracing(&mut tracer);
    std::fs::remove_dir(&cg.0).unwrap();
    let out = tracer.wait_with_output().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("was removed"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("final report"));
    let recs = records(&out_path);
    assert_eq!(summary(&recs)["end_reason"], "cgroup_removed");
}

#[test]
fn bad_cgroup_arguments_get_one_clear_sentence() {
    require_root();
    let _g = lock();
    for (args, needle) in [
        (
            vec!["--cgroup", "no-such-cgroup-xyz", "--", "true"],
            "not found",
        ),
        (vec!["--cgroup", "/tmp", "--", "true"], "not a cgroup"),
        (
            vec!["--pid", "1", "--cgroup", "x"],
            "either --pid or --cgroup",
        ),
    ] {
        let out = mmtrace().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_cgroup_v2_tree_is_traced_too() {
    require_root();
    let _g = lock();
    // cgroup v2 here has no memory controller: scope only, no memory state.
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v2 = mmtrace::cgroup::mounts(&mi)
        .into_iter()
        .find(|m| m.version == mmtrace::cgroup::Version::V2)
        .expect("a cgroup2 mount");
    let cg = TestCgroup(
        v2.point
            .join(format!("mmtrace-test-v2-{}", std::process::id())),
    );
    std::fs::create_dir(&cg.0).unwrap();
    let dir = scratch();
    let out_path = dir.path().join("t.jsonl");
    let out = mmtrace()
        .args(["--quiet", "--cgroup", cg.path(), "-o"])
        .arg(&out_path)
        .args([
            "--",
            env!("CARGO_BIN_EXE_mmtrace"),
            "workload",
            "fork",
            "--parent-pages",
            "1000",
            "--child-pages",
            "3000",
        ])
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs);
    let anon = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "anon")
        .unwrap();
    assert!(
        u(&anon["minor_faults"]) >= 4000,
        "parent and forked child both counted: {anon}"
    );
    assert_eq!(s["cgroup"]["version"], "v2");
}
