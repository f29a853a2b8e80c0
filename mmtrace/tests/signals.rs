//! Privileged tests of the cost-of-mmap records this helper adds: SIGBUS on
//! a truncated file mapping (`signal` records naming the file and page) and
//! TLB shootdowns between two threads of one process (`tlb_flushes`). Real
//! BPF on the project's own workloads; run as root.
use std::process::Output;

use common::*;
use serde_json::Value;

mod common;

fn workload(args: &[&str]) -> Vec<String> {
    let mut v = vec![
        env!("CARGO_BIN_EXE_mmtrace").to_string(),
        "workload".to_string(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// Runs `mmtrace --quiet -o FILE -- cmd`; returns (records, output).
fn trace(cmd: &[String]) -> (Vec<Value>, Output) {
    let dir = scratch();
    let out_path = dir.path().join("trace.jsonl");
    let out = mmtrace()
        .args(["--quiet", "-o"])
        .arg(&out_path)
        .arg("--")
        .args(cmd)
        .output()
        .unwrap();
    (records(&out_path), out)
}

fn report(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn signals_of(recs: &[Value], pid: u64) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["type"] == "signal" && r["pid"] == pid)
        .collect()
}

fn tlb_of(s: &Value, pid: u64) -> &Value {
    let p = s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process row for {pid}"));
    &p["tlb_flushes"]
}

fn assert_names_the_page(g: &Value, path: &str) {
    assert_eq!(g["signal"], "SIGBUS", "{g}");
    assert_eq!(g["code_name"], "BUS_ADRERR", "{g}");
    assert_eq!(g["mapping"], "file", "{g}");
    assert_eq!(g["path"], path, "{g}");
    // 4 pages written and mapped, truncated to 1, page 3 touched.
    assert_eq!(g["offset_pages"], 3, "{g}");
    assert_eq!(g["file_size_pages"], 1, "{g}");
    assert!(
        g["explanation"].as_str().unwrap().contains("truncated"),
        "{g}"
    );
}

#[test]
fn a_caught_sigbus_beyond_a_truncated_end_names_the_file_and_page() {
    let _g = lock();
    require_root();
    let dir = scratch();
    let f = dir.path().join("truncated.bin");
    let rep = dir.path().join("report.json");
    let (recs, out) = trace(&workload(&[
        "sigbus",
        "--path",
        f.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]));
    ok(&out);
    let w = report(&rep);
    let pid = u(&w["pid"]);
    assert_eq!(u(&w["sigbus_caught"]), 1, "{w}");
    assert_eq!(w["si_code"], 2, "the kernel's own code: BUS_ADRERR");
    let sigs = signals_of(&recs, pid);
    assert_eq!(sigs.len(), 1, "one SIGBUS, caught: {sigs:?}");
    assert_names_the_page(sigs[0], f.to_str().unwrap());
    assert_eq!(sigs[0]["address"], w["address"]);
    assert_eq!(sigs[0]["address"], w["si_addr"]);
    let s = summary(&recs);
    assert_eq!(s["command"]["exit_code"], 0);
    assert_eq!(
        s["signals"].as_array().unwrap().len(),
        1,
        "{}",
        s["signals"]
    );
    assert_eq!(s["signals_not_listed"], 0);
    // Every record, the signal one included, validates against the schema.
    let out = mmtrace().arg("schema").output().unwrap();
    ok(&out);
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    for r in &recs {
        if let Err(e) = validator.validate(r) {
            panic!("invalid against the schema: {e}\n{r}");
        }
    }
}

#[test]
fn a_write_to_a_read_only_file_mapping_is_a_sigsegv_accerr_on_that_page() {
    let _g = lock();
    require_root();
    let dir = scratch();
    let f = dir.path().join("readonly.bin");
    let rep = dir.path().join("report.json");
    let (recs, out) = trace(&workload(&[
        "sigbus",
        "--segv",
        "--path",
        f.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]));
    ok(&out);
    let w = report(&rep);
    assert_eq!(w["si_code"], 2, "SEGV_ACCERR: {w}");
    let sigs = signals_of(&recs, u(&w["pid"]));
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    let g = sigs[0];
    assert_eq!(g["signal"], "SIGSEGV", "{g}");
    assert_eq!(g["code_name"], "SEGV_ACCERR", "{g}");
    assert_eq!(g["mapping"], "file", "{g}");
    assert_eq!(g["path"], f.to_str().unwrap(), "{g}");
    assert_eq!(g["offset_pages"], 3, "{g}");
    assert_eq!(g["file_size_pages"], 4, "{g}");
    assert_eq!(g["address"], w["si_addr"], "{g}");
}

#[test]
fn a_process_killed_by_sigbus_gets_a_record_and_the_exit_says_signal_7() {
    let _g = lock();
    require_root();
    let dir = scratch();
    let f = dir.path().join("dies.bin");
    let rep = dir.path().join("report.json");
    let (recs, out) = trace(&workload(&[
        "sigbus",
        "--die",
        "--path",
        f.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]));
    // mmtrace itself succeeds; the command died of SIGBUS.
    let s = summary(&recs);
    assert_eq!(s["command"]["signal"], 7, "{}", s["command"]);
    assert!(s["command"]["exit_code"].is_null());
    assert!(
        out.status.code().is_some(),
        "mmtrace exits with a status: {out:?}"
    );
    let pid = u(&report(&rep)["pid"]);
    let sigs = signals_of(&recs, pid);
    // Rust's runtime has a SIGBUS handler (stack-overflow detection) that
    // restores the default action and returns: the access faults again, so
    // the kernel generates SIGBUS twice (measured: 2).
    assert!(
        (1..=2).contains(&sigs.len()),
        "one or two SIGBUS records: {sigs:?}"
    );
    for g in &sigs {
        assert_names_the_page(g, f.to_str().unwrap());
    }
}

#[test]
fn two_threads_unmapping_shared_pages_cause_remote_shootdowns_of_that_pid() {
    let _g = lock();
    require_root();
    let rounds = 1000u64;
    let mut got = Vec::new();
    for threads in ["2", "1"] {
        let dir = scratch();
        let rep = dir.path().join("report.json");
        let (recs, out) = trace(&workload(&[
            "shootdown",
            "--rounds",
            &rounds.to_string(),
            "--threads",
            threads,
            "--report",
            rep.to_str().unwrap(),
        ]));
        ok(&out);
        let pid = u(&report(&rep)["pid"]);
        let t = tlb_of(summary(&recs), pid).clone();
        assert!(
            t.is_object(),
            "tlb_flushes null: is tlb:tlb_flush attached?"
        );
        eprintln!(
            "threads {threads}: remote_shootdowns {} remote_flush_requests {} local_mm {}",
            t["remote_shootdowns"],
            t["remote_flush_requests"],
            t["by_reason"]["local_mm_shootdown"]["flushes"]
        );
        got.push(t);
    }
    let (two, one) = (&got[0], &got[1]);
    // Two ranged flushes per round (mprotect, munmap), each needing the
    // sibling's CPU: measured 3,996 of 4,000 for 2,000 rounds. Assert half.
    assert!(
        u(&two["remote_shootdowns"]) >= rounds,
        "remote shootdowns of the two-thread process: {two}"
    );
    assert!(u(&two["remote_flush_requests"]) >= rounds, "{two}");
    // Both flushed their own CPU for every mprotect and munmap.
    for t in [two, one] {
        assert!(
            u(&t["by_reason"]["local_mm_shootdown"]["flushes"]) >= 2 * rounds,
            "{t}"
        );
    }
    // The control has no sibling: remote shootdowns received are rare (a
    // remote flush request may still be logged without an IPI; reported
    // above, not asserted).
    assert!(
        u(&one["remote_shootdowns"]) * 10 < u(&two["remote_shootdowns"]),
        "single-threaded control: {one}"
    );
}
