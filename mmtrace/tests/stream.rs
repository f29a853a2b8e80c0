//! Privileged tests of the record stream as a consumer sees it: every line
//! of a real trace validates against the schema `mmtrace schema` prints, a
//! file with a hostile name (newline, quotes, ESC, bytes that are not
//! UTF-8, a long name) keeps its exact bytes in JSON and prints on one safe
//! line in the table, and `--all` attributes a known workload to its
//! cgroup.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use common::*;
use serde_json::Value;

mod common;

/// A name no one should have to handle, and everyone eventually does.
fn hostile_name() -> Vec<u8> {
    let mut n = b"ev\nil \"q\" \\ \x1b[31m \xff\xfe tab\t".to_vec();
    n.extend(std::iter::repeat_n(b'x', 180));
    n.extend(b".bin");
    assert!(n.len() < 255);
    n
}

fn hostile_file(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().as_bytes().to_vec();
    p.push(b'/');
    p.extend(hostile_name());
    let p = PathBuf::from(OsStr::from_bytes(&p));
    std::fs::write(&p, vec![7u8; 4 << 20]).unwrap();
    drop_cache(&p);
    p
}

/// Python maps the file and touches every page (its argv keeps the exact
/// bytes through surrogateescape), then waits so the maps scan sees it.
const READER: &str = "import mmap,os,sys,time
f=open(os.fsencode(sys.argv[1]),'rb');m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)
s=sum(m[i] for i in range(0,len(m),4096));time.sleep(0.6);print(s)";

fn schema() -> Value {
    let out = mmtrace().arg("schema").output().unwrap();
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_line_validates_and_a_hostile_name_survives_json_and_the_table() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let file = hostile_file(dir.path());
    let out = mmtrace()
        .args(["--json", "-i", "0.3", "--events", "faults,adds"])
        .args(["--", "/usr/bin/python3", "-c", READER])
        .arg(&file)
        .output()
        .unwrap();
    ok(&out);
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let text = std::str::from_utf8(&out.stdout).expect("JSON Lines are UTF-8");
    let mut types = std::collections::BTreeSet::new();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if let Err(e) = validator.validate(&v) {
                panic!("invalid against the schema: {e}\n{l}");
            }
            types.insert(v["type"].as_str().unwrap().to_string());
            v
        })
        .collect();
    for t in ["meta", "interval", "event", "summary"] {
        assert!(types.contains(t), "no {t} record in {types:?}");
    }
    // The exact bytes, in the summary's file row and in raw events.
    let want = hex(file.as_os_str().as_bytes());
    let row = summary(&recs)["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path_bytes_hex"] == want.as_str())
        .unwrap_or_else(|| panic!("no row with the file's bytes: {}", summary(&recs)));
    assert!(
        u(&row["minor_faults"]) + u(&row["major_faults"]) > 0,
        "{row}"
    );
    assert_eq!(u(&row["pages_added"]), 1024, "{row}");
    let named = recs
        .iter()
        .filter(|r| r["type"] == "event" && r["path_bytes_hex"] == want.as_str())
        .count();
    assert!(named > 0, "no raw event names the file by its bytes");

    // The table: the name on one line, escaped, nothing raw reaches the
    // terminal.
    drop_cache(&file);
    let out = mmtrace()
        .args(["--", "/usr/bin/python3", "-c", READER])
        .arg(&file)
        .output()
        .unwrap();
    ok(&out);
    let table = String::from_utf8(out.stdout).expect("the table is UTF-8");
    assert!(!table.contains('\x1b'), "raw ESC reached the terminal");
    let line = table
        .lines()
        .find(|l| l.contains(r#"ev\nil "q" \\ \x1b[31m \xff\xfe tab\t"#))
        .unwrap_or_else(|| panic!("no escaped name in\n{table}"));
    assert!(line.ends_with(".bin"), "the name is whole: {line}");
    assert!(line.contains(&"x".repeat(180)), "the name is whole: {line}");
}

#[test]
fn all_attributes_a_known_workload_to_its_cgroup() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let cg = TestCgroup::new("all", 1 << 30);
    let out_path = dir.path().join("all.jsonl");
    let mut tracer = mmtrace()
        .args(["--all", "-d", "4", "-o"])
        .arg(&out_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The workload starts once it is attached.
    let _stderr = wait_tracing(&mut tracer);
    // It pauses before touching its pages: time to move it into the cgroup.
    let mut w = mmtrace()
        .args(["workload", "anon", "--pages", "20000", "--pause-ms", "500"])
        .spawn()
        .unwrap();
    cg.add(w.id());
    // And 200 processes that each live about a millisecond, too short for
    // mmtrace to read their cgroup from /proc: the kernel's exit hook
    // names it.
    let mut sh = std::process::Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done",
        ])
        .spawn()
        .unwrap();
    cg.add(sh.id());
    assert!(sh.wait().unwrap().success());
    assert!(w.wait().unwrap().success());
    assert!(tracer.wait().unwrap().success());
    let recs = records(&out_path);
    let s = summary(&recs);
    assert_eq!(s["end_reason"], "duration", "{s}");
    let name = format!("/{}", cg.0.file_name().unwrap().to_str().unwrap());
    let row = s["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"] == name.as_str())
        .unwrap_or_else(|| panic!("no row for {name}: {}", s["cgroups"]));
    // The workload touched 20,000 anonymous pages after it joined the
    // cgroup: each is a minor fault charged to it. (It joined a moment
    // after it started, so its start-up faults may sit under the parent.)
    assert!(u(&row["minor_faults"]) >= 20_000, "{row}");
    // The workload, sh, 200 × true (each ~20 faults or more) and sleep
    // (unless sh forked it before it was moved).
    assert!((202..=203).contains(&u(&row["processes"])), "{row}");
    assert!(
        u(&row["minor_faults"]) < 20_000 + 5_000 + 203 * 200,
        "{row}"
    );
}

#[test]
fn a_long_trace_of_many_short_lived_processes_folds_them_and_loses_nothing() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let out_path = dir.path().join("fold.jsonl");
    // 1,500 processes, each faulting on ld.so, libc, its binary, stack,
    // heap...: folded 1 s after they exit, their map entries deleted.
    let out = mmtrace()
        .args(["--quiet", "--retain-exited", "1", "-i", "1", "-o"])
        .arg(&out_path)
        .args([
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 1500 ]; do /bin/true; i=$((i+1)); done; sleep 2.5",
        ])
        .output()
        .unwrap();
    ok(&out);
    let recs = records(&out_path);
    let s = summary(&recs);
    assert_eq!(u(&s["lost_faults"]), 0, "{}", s["errors"]);
    let procs = s["processes"].as_array().unwrap();
    let exited: Vec<&Value> = procs
        .iter()
        .filter(|p| p["folded_processes"].as_u64().unwrap_or(0) > 0)
        .collect();
    // One exited row per cgroup (processes gone before their cgroup was
    // read share the row without one).
    let cgroups: std::collections::BTreeSet<String> =
        exited.iter().map(|e| e["cgroup"].to_string()).collect();
    assert_eq!(cgroups.len(), exited.len(), "{exited:?}");
    let folded: u64 = exited.iter().map(|e| u(&e["folded_processes"])).sum();
    assert!(folded >= 1000, "{folded} folded");
    // Folding loses no fault: what the process rows sum (the exited row,
    // sh, the rest) is what the file and anonymous rows sum, fault for
    // fault, and every true took faults of its own.
    let by_process: u64 = procs.iter().map(|p| u(&p["minor_faults"])).sum();
    let by_file: u64 = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| u(&f["minor_faults"]))
        .sum();
    assert_eq!(by_process, by_file);
    let sum = |k: &str| exited.iter().map(|e| u(&e[k])).sum::<u64>();
    assert!(sum("minor_faults") >= 20 * folded, "{exited:?}");
    // The kernel's own counts of the folded processes (their exit records)
    // exceed the traced ones by the one fault per exec no perf event sees
    // (GUP: execve copying the argv page), as for a single command.
    let untraced = sum("kernel_minor_faults") - sum("minor_faults");
    assert!(
        (folded..=2 * folded).contains(&untraced),
        "{untraced} untraced faults for {folded} processes"
    );
    // And rusage (the command and all it waited for) bounds the total.
    let rusage = u(&s["command"]["rusage_minor_faults"]);
    assert!(
        by_process <= rusage,
        "traced {by_process} > kernel {rusage}"
    );
    // Every interval record stayed bounded: one exited row, not 1,500.
    let last = recs.iter().rfind(|r| r["type"] == "interval").unwrap();
    assert!(last["processes"].as_array().unwrap().len() < 100);
}

#[test]
fn all_reconciles_a_process_that_was_faulting_before_the_attach() {
    require_root();
    let _g = lock();
    let dir = scratch();
    // Faulting steadily (400 anonymous pages every 100 ms for 4 s) from
    // before the attach to after it: the faults of the first second, before
    // mmtrace's first look at it, must be inside its baseline's window.
    let mut w = mmtrace()
        .args(["workload", "leak", "--size", "64M", "--steps", "40"])
        .args(["--step-ms", "100"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out_path = dir.path().join("all.jsonl");
    let out = mmtrace()
        .args(["--all", "--quiet", "-d", "3", "-o"])
        .arg(&out_path)
        .output()
        .unwrap();
    ok(&out);
    assert!(w.wait().unwrap().success());
    let recs = records(&out_path);
    let p = summary(&recs)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == w.id())
        .cloned()
        .expect("the workload's row");
    assert!(u(&p["minor_faults"]) > 4000, "{p}");
    // Kernel minus traced: never negative (a baseline taken at the first
    // look, up to a second after the attach, made it -3,684 in one run),
    // and at most one step of 400 pages (the baselines are read just before
    // the programs attach: a step can fall between the two).
    let untraced = p["untraced_minor_faults"].as_i64().unwrap();
    assert!((0..=400 + 16).contains(&untraced), "{p}");
}
