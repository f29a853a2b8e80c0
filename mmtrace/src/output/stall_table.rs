//! The final report's "WHAT FAULTS COST" section (`--latency`): the files
//! (and anonymous memory) whose faults stalled longest, then the processes.
use std::fmt::Write as _;

use super::{
    escape::display_path,
    table::{NAME_MAX_SHOWN, count, name_labels},
};
use crate::{
    model::Report,
    stall::{FaultStall, StallClass},
};

const LEGEND: &[&str] = &[
    "STALL: time from fault entry (exceptions:page_fault_*) to the kernel's accounting of the fault",
    "(perf page-fault event), retries included; not I/O time: a minor fault can wait on readahead,",
    "a major one may never sleep. p50/p99: log2-bucket upper bounds (at most 2x high), never > max.",
];

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.0}", v),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn class(c: &StallClass) -> String {
    format!(
        "{:>8} {:>8} {:>8} {:>9}",
        count(c.faults),
        us(c.p50_us),
        us(c.p99_us),
        us(c.max_us)
    )
}

/// The section, empty when no row has a stall (no `--latency`).
pub fn render(r: &Report, top: usize) -> String {
    let mut s = String::new();
    let mut files: Vec<(&str, &FaultStall)> = r
        .files
        .iter()
        .filter_map(|f| f.fault_stall.as_ref().map(|st| (f.path.as_str(), st)))
        .collect();
    let mut procs: Vec<_> = r
        .processes
        .iter()
        .filter_map(|p| p.fault_stall.as_ref().map(|st| (p, st)))
        .collect();
    if files.is_empty() && procs.is_empty() {
        return s;
    }
    let n = top.clamp(1, 10);
    files.retain(|(_, st)| st.minor.faults + st.major.faults > 0);
    files.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
    files.truncate(n);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "WHAT FAULTS COST (stall per fault, µs; --latency)\n{:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9}  FILE",
        "TOTAL ms", "MINOR", "p50", "p99", "max", "MAJOR", "p50", "p99", "max"
    );
    let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    for ((_, st), label) in files.iter().zip(name_labels(&paths, NAME_MAX_SHOWN)) {
        let _ = writeln!(
            s,
            "{:>10} {} {}  {label}",
            ms(st.total_ns),
            class(&st.minor),
            class(&st.major)
        );
    }
    procs.retain(|(_, st)| st.minor.faults + st.major.faults > 0);
    procs.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.pid.cmp(&b.0.pid)));
    procs.truncate(n);
    if !procs.is_empty() {
        let _ = writeln!(
            s,
            "{:>7} {:>10} {:>8} {:>10} {:>9} {:>8} {:>10} {:>9}  COMMAND",
            "PID", "TOTAL ms", "MINOR", "minor ms", "max µs", "MAJOR", "major ms", "max µs"
        );
        for (p, st) in procs {
            let _ = writeln!(
                s,
                "{:>7} {:>10} {:>8} {:>10} {:>9} {:>8} {:>10} {:>9}  {}",
                p.pid,
                ms(st.total_ns),
                count(st.minor.faults),
                ms(st.minor.total_ns),
                us(st.minor.max_us),
                count(st.major.faults),
                ms(st.major.total_ns),
                us(st.major.max_us),
                display_path(&p.comm)
            );
        }
    }
    if let Some(u) = &r.fault_stall_unpaired {
        let missed: Vec<String> = u
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {}", count(*n)))
            .collect();
        if !missed.is_empty() {
            let _ = writeln!(s, "faults with no stall measured: {}", missed.join(", "));
        }
    }
    for l in LEGEND {
        let _ = writeln!(s, "{l}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{FileKind, FileRow, ProcessRow},
        stall::class_from_totals,
    };

    #[test]
    fn section_lists_files_by_stall_then_processes() {
        let st = |mi: u64, ma: u64| {
            FaultStall::new(
                StallClass {
                    p50_us: Some(1.0),
                    p99_us: Some(4.0),
                    ..class_from_totals(10, mi, 5000)
                },
                class_from_totals(2, ma, 9_000_000),
            )
        };
        let r = Report {
            files: vec![
                FileRow {
                    path: "/small".into(),
                    kind: FileKind::File,
                    fault_stall: Some(st(1000, 0)),
                    ..Default::default()
                },
                FileRow {
                    path: "/big".into(),
                    kind: FileKind::File,
                    fault_stall: Some(st(1000, 12_000_000)),
                    ..Default::default()
                },
            ],
            processes: vec![ProcessRow {
                pid: 42,
                comm: "reader".into(),
                fault_stall: Some(st(1000, 12_000_000)),
                ..Default::default()
            }],
            fault_stall_unpaired: Some([("no_entry", 3), ("map_full", 0)].into_iter().collect()),
            ..Default::default()
        };
        let out = render(&r, 5);
        assert!(out.contains("WHAT FAULTS COST"), "{out}");
        let big = out.find("/big").unwrap();
        let small = out.find("/small").unwrap();
        assert!(big < small, "{out}");
        assert!(out.contains("12.001"), "{out}");
        assert!(out.contains("reader"), "{out}");
        assert!(out.contains("no_entry 3"), "{out}");
        assert!(!out.contains("map_full"), "{out}");
        assert!(render(&Report::default(), 5).is_empty());
    }
}
