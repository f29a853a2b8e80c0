//! Privileged tests of the raw event stream (`--events`): the events of a
//! known workload add up to the in-kernel aggregates, a ring buffer too
//! small for them counts every event it drops, and `--sample` thins them.
use std::process::Output;

use common::*;
use serde_json::Value;

mod common;

/// `mmtrace -q -o F <extra> -- mmtrace workload <args>`: the records.
fn trace(extra: &[&str], workload: &[&str]) -> (Vec<Value>, Output) {
    let dir = scratch();
    let out_path = dir.path().join("trace.jsonl");
    let out = mmtrace()
        .args(["--quiet", "-o"])
        .arg(&out_path)
        .args(extra)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_mmtrace"))
        .arg("workload")
        .args(workload)
        .output()
        .unwrap();
    (records(&out_path), out)
}

fn events<'a>(recs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["type"] == "event" && r["kind"] == kind)
        .collect()
}

fn pages(evs: &[&Value]) -> u64 {
    evs.iter().map(|e| u(&e["pages"])).sum()
}

/// (minor, major) faults the kernel-side aggregation counted, all processes.
fn faults(s: &Value) -> (u64, u64) {
    s["files"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(a, b), f| {
            (a + u(&f["minor_faults"]), b + u(&f["major_faults"]))
        })
}

fn file_row<'a>(s: &'a Value, path: &str) -> &'a Value {
    s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no row for {path}"))
}

#[test]
fn raw_events_add_up_to_the_aggregates_and_name_the_file() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let f = make_file(dir.path(), "data.bin", 8 << 20);
    let path = f.to_str().unwrap();
    let (recs, out) = trace(
        &["--events", "all", "-i", "0.2"],
        &[
            "mmap-read",
            "--path",
            path,
            "--drop-cache",
            "--advice",
            "random",
        ],
    );
    ok(&out);
    let s = summary(&recs);
    assert_eq!(u(&s["events_dropped"]), 0, "a 4 MiB buffer holds this run");
    for i in recs.iter().filter(|r| r["type"] == "interval") {
        assert!(i["events_dropped"].is_u64(), "every interval says: {i}");
    }
    let row = file_row(s, path);
    let file_pages = u(&row["file_pages"]);
    assert_eq!(file_pages, 2048);

    // Every fault the aggregation counted was streamed, minor and major.
    let (minor, major) = faults(s);
    assert_eq!(events(&recs, "minor_fault").len() as u64, minor);
    assert_eq!(events(&recs, "major_fault").len() as u64, major);
    // The file's: one major fault per page (random advice: no fault-around
    // of uncached pages), each at its own page offset.
    let file_majors: Vec<_> = events(&recs, "major_fault")
        .into_iter()
        .filter(|e| e["path"] == path)
        .collect();
    assert_eq!(file_majors.len() as u64, u(&row["major_faults"]));
    let mut offsets: Vec<u64> = file_majors.iter().map(|e| u(&e["offset_pages"])).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len() as u64, file_majors.len() as u64);
    assert!(offsets.iter().all(|&o| o < file_pages));

    // Cache additions and evictions of the file, page for page.
    let of_file = |kind| {
        events(&recs, kind)
            .into_iter()
            .filter(|e| e["path"] == path)
            .collect::<Vec<_>>()
    };
    assert_eq!(pages(&of_file("cache_add")), u(&row["pages_added"]));
    let evictions = of_file("eviction");
    assert_eq!(pages(&evictions), u(&row["pages_evicted"]));
    // fadvise evicted them; DAMON may take a page in the background too.
    let background = ["damon", "kswapd", "proactive", "compaction"];
    assert!(
        evictions
            .iter()
            .all(|e| e["reason"] == "fadvise" || background.iter().any(|r| e["reason"] == *r))
    );
    assert!(evictions.iter().any(|e| e["reason"] == "fadvise"));
    // Raw events carry what the aggregate cannot: who, when, how long.
    assert!(file_majors.iter().all(|e| e["comm"] == "mmtrace"));
    let t: Vec<f64> = file_majors
        .iter()
        .map(|e| e["time_s"].as_f64().unwrap())
        .collect();
    let elapsed = s["elapsed_s"].as_f64().unwrap();
    assert!(
        t.iter().all(|&t| t > 0.0 && t <= elapsed),
        "{t:?} in {elapsed} s"
    );
    let meta = &recs[0];
    if meta["features"]["write_faults"] == true {
        assert!(
            file_majors
                .iter()
                .all(|e| e["latency_us"].as_f64().is_some_and(|l| l > 0.0)),
            "x86: major faults carry their latency: {:?}",
            file_majors
                .iter()
                .filter(|e| !e["latency_us"].as_f64().is_some_and(|l| l > 0.0))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_full_ring_buffer_counts_every_event_it_drops() {
    require_root();
    let _g = lock();
    // 4 KiB holds ~45 events; 20,000 anonymous faults overflow it.
    let (recs, out) = trace(
        &["--events", "faults", "--events-buffer", "4K"],
        &["anon", "--pages", "20000"],
    );
    ok(&out);
    let s = summary(&recs);
    let dropped = u(&s["events_dropped"]);
    let streamed = (events(&recs, "minor_fault").len() + events(&recs, "major_fault").len()) as u64;
    let (minor, major) = faults(s);
    assert!(dropped > 0, "the buffer overflowed: {dropped} dropped");
    assert!(streamed > 0);
    assert_eq!(streamed + dropped, minor + major, "none lost silently");
}

#[test]
fn sampling_streams_one_event_in_n_per_cpu() {
    require_root();
    let _g = lock();
    let n = 10;
    let (recs, out) = trace(
        &["--events", "minor", "--sample", &n.to_string()],
        &["anon", "--pages", "20000"],
    );
    ok(&out);
    let s = summary(&recs);
    assert_eq!(u(&s["events_dropped"]), 0);
    let streamed = events(&recs, "minor_fault").len() as u64;
    assert!(events(&recs, "major_fault").is_empty(), "only minor asked");
    let (minor, _) = faults(s);
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    // Each CPU streams the Nth, 2Nth, ... of its own candidates.
    assert!(
        streamed <= minor / n + cpus && streamed + cpus >= minor / n,
        "{streamed} streamed of {minor} (1 in {n})"
    );
    assert!(streamed < minor, "sampling streamed fewer events");
}

#[test]
fn bad_event_options_get_one_clear_sentence() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--events", "swaps", "--json", "-a"],
            "unknown event kind `swaps`",
        ),
        (&["--events", "faults", "-a"], "add --json"),
        (
            &[
                "--events",
                "faults",
                "--json",
                "-a",
                "--events-buffer",
                "3000",
            ],
            "power of two",
        ),
    ];
    for (args, want) in cases {
        let out = mmtrace().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn the_programs_own_log_shows_with_vv_only() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let f = make_file(dir.path(), "logged.bin", 1 << 20);
    drop_cache(&f);
    let ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&f).unwrap().ino()
    };
    let run = |verbose: &[&str]| {
        let out = mmtrace()
            .args(verbose)
            .args(["-q", "--"])
            .arg(env!("CARGO_BIN_EXE_mmtrace"))
            .args(["workload", "read", "--path"])
            .arg(&f)
            .output()
            .unwrap();
        ok(&out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let line = format!("ino {ino} of interest");
    let loud = run(&["-vv"]);
    assert!(loud.contains(&line), "-vv: the eBPF side's log: {loud}");
    let calm = run(&[]);
    assert!(!calm.contains("of interest"), "no -vv: nothing: {calm}");
}
