//! Privileged smoke test of the bench's in-process runner (`mmtrace
//! bench-chunks`, real BPF): mmtrace's programs, loaded once and attached
//! and detached between chunks, count exactly the faults of the attached
//! chunks; every row reports one figure per chunk. No timing is asserted.
use common::*;
use serde_json::Value;

mod common;

#[test]
fn chunks_toggled_in_process_are_counted_exactly() {
    require_root();
    let _g = lock();
    for (kind, rows) in [("anon", "noise,floor,mmtrace,vsfloor"), ("cow", "mmtrace")] {
        let dir = scratch();
        let path = dir.path().join("cow.dat");
        let out = mmtrace()
            .args(["bench-chunks", "chunks", "--kind", kind, "--path"])
            .arg(&path)
            .args([
                "--pairs",
                "3",
                "--mib",
                "4",
                "--warmup",
                "1",
                "--settle-chunks",
                "1",
                "--rows",
                rows,
            ])
            .output()
            .unwrap();
        ok(&out);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows_out = v["rows"].as_array().unwrap();
        assert_eq!(rows_out.len(), rows.split(',').count(), "{v}");
        for r in rows_out {
            assert_eq!(r["off_ns_per_fault"].as_array().unwrap().len(), 3, "{r}");
            assert_eq!(r["on_ns_per_fault"].as_array().unwrap().len(), 3, "{r}");
            assert_eq!(
                r["on_first"],
                serde_json::json!([false, true, false]),
                "ABBA: {r}"
            );
        }
        // Off-on, on-off, off-on: 3 timed attached chunks of 4 MiB, and
        // the untimed chunk after each of the 2 attaches (mmtrace is also
        // what the head-to-head row attaches for its "on" chunks).
        let pages = (3 + 2) * (4 << 20) / 4096;
        for m in rows_out
            .iter()
            .filter(|r| r["row"] == "mmtrace" || r["row"] == "vsfloor")
        {
            assert_eq!(m["check"]["expected_faults"], pages, "{m}");
            assert_eq!(m["check"]["traced_storm_faults"], pages, "{kind}: {m}");
        }
        if kind == "anon" {
            let f = rows_out.iter().find(|r| r["row"] == "floor").unwrap();
            assert!(
                f["hooks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h == "raw:exceptions:page_fault_user"),
                "the floor sits on mmtrace's hooks: {f}"
            );
        }
    }
}
