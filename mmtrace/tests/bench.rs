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
    for (kind, rows) in [("anon", "noise,floor,mmtrace"), ("cow", "mmtrace")] {
        let dir = scratch();
        let path = dir.path().join("cow.dat");
        let out = mmtrace()
            .args(["bench-chunks", "chunks", "--kind", kind, "--path"])
            .arg(&path)
            .args([
                "--pairs", "3", "--mib", "4", "--warmup", "1", "--rows", rows,
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
        let m = rows_out.iter().find(|r| r["row"] == "mmtrace").unwrap();
        // 3 attached chunks of 4 MiB.
        let pages = 3 * (4 << 20) / 4096;
        assert_eq!(m["check"]["expected_faults"], pages, "{m}");
        assert_eq!(m["check"]["traced_storm_faults"], pages, "{kind}: {m}");
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
