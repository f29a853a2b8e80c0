//! The human report: per-file and per-process tables that fit 100 columns,
//! busiest files first, counts in pages with MiB where sizes matter.
use std::fmt::Write as _;

use crate::model::{FileKind, FileRow, ProcessRow, Report};

pub const WIDTH: usize = 100;

const LEGEND: &[&str] = &[
    "MINFLT/MAJFLT: faults traced. KERNEL: the kernel's own count (/proc/<pid>/stat, or the task",
    "counters at exit). UNTRACED: kernel - traced (GUP faults: O_DIRECT, pinning, execve's argv).",
    "MAPPED: pages mapped by those faults, fault-around included. ADDED/EVICTED: page-cache pages.",
    "REFLT~: pages re-added after a reclaim this trace saw (refaults; estimate). RES: resident now.",
];

/// What the table needs besides the report.
#[derive(Clone, Debug, Default)]
pub struct TableOptions {
    pub page_size: u64,
    /// Rows of the file table (the rest is summed in one line).
    pub top: usize,
    /// Also print the per-mapping table.
    pub mappings: bool,
    /// Heading, e.g. "interval 3 (+3.0 s)" or "final report (12.4 s)".
    pub title: String,
    /// Write faults are known (x86).
    pub write_faults: bool,
}

/// Groups digits up to 7 characters ("999,999"), then abbreviates: "1.2M", "12.3G".
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if out.len() <= 7 {
        return out;
    }
    let (v, unit) = if n >= 1_000_000_000 {
        (n as f64 / 1e9, 'G')
    } else {
        (n as f64 / 1e6, 'M')
    };
    format!("{v:.1}{unit}")
}

/// Pages as MiB with one decimal: "512.0".
pub fn mib(pages: u64, page_size: u64) -> String {
    format!("{:.1}", (pages * page_size) as f64 / (1024.0 * 1024.0))
}

/// Keeps the end of a path (the file name matters most): "…/dir/file".
pub fn fit_path(p: &str, width: usize) -> String {
    let n = p.chars().count();
    if n <= width {
        return p.to_string();
    }
    let tail: String = p.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// Cuts a line at `width` characters.
fn fit_path_end(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width - 1).collect();
    out.push('…');
    out
}

pub fn render(r: &Report, o: &TableOptions) -> String {
    let mut s = String::new();
    let ps = o.page_size.max(1);
    let _ = writeln!(
        s,
        "── mmtrace: {} {}",
        o.title,
        "─".repeat(WIDTH.saturating_sub(14 + o.title.chars().count()))
    );
    let _ = writeln!(
        s,
        "{:<23} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}",
        "FILE",
        "MINFLT",
        "MAJFLT",
        "WRITE",
        "COW",
        "MAPPED",
        "ADDED",
        "EVICTED",
        "REFLT~",
        "RES MiB"
    );
    // Files of unknown path that took no fault (page-cache traffic only:
    // metadata, pipes, short-lived scratch files) go to the summary line;
    // JSON keeps every row.
    let listed = |f: &&FileRow| {
        f.kind == FileKind::File && (f.path_known || f.minor_faults + f.major_faults > 0)
    };
    let mut rows: Vec<&FileRow> = r.files.iter().filter(listed).take(o.top.max(1)).collect();
    let hidden: Vec<&FileRow> = r
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && !rows.iter().any(|s| std::ptr::eq(*s, *f)))
        .collect();
    rows.extend(r.files.iter().filter(|f| f.kind != FileKind::File));
    let w = |n: u64| {
        if o.write_faults {
            count(n)
        } else {
            "-".to_string()
        }
    };
    for f in rows {
        // The unknown-path marker and the deleted note survive truncation.
        let mark = if f.path_known { "" } else { "?" };
        let note = if f.deleted { " (deleted)" } else { "" };
        let room = 23 - mark.len() - note.len();
        let name = format!("{mark}{}{note}", fit_path(&f.path, room));
        let res = match (f.kind, f.resident_pages) {
            (_, Some(p)) => mib(p, ps),
            (_, None) => "-".into(),
        };
        let cache = |n: u64| {
            if f.kind == FileKind::File {
                count(n)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            s,
            "{:<23} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}",
            name,
            count(f.minor_faults),
            count(f.major_faults),
            w(f.write_faults),
            w(f.cow_faults),
            count(f.pages_mapped),
            cache(f.pages_added),
            cache(f.pages_evicted),
            cache(f.refault_pages),
            res
        );
    }
    if !hidden.is_empty() {
        let sum = |g: fn(&FileRow) -> u64| hidden.iter().map(|f| g(f)).sum::<u64>();
        let _ = writeln!(
            s,
            "{:<23} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}",
            format!("({} more files)", hidden.len()),
            count(sum(|f| f.minor_faults)),
            count(sum(|f| f.major_faults)),
            w(sum(|f| f.write_faults)),
            w(sum(|f| f.cow_faults)),
            count(sum(|f| f.pages_mapped)),
            count(sum(|f| f.pages_added)),
            count(sum(|f| f.pages_evicted)),
            count(sum(|f| f.refault_pages)),
            ""
        );
    }
    // Why pages left: one line per file with evictions, busiest first.
    let evicting: Vec<&FileRow> = r
        .files
        .iter()
        .filter(|f| f.kind == FileKind::File && f.pages_evicted > 0)
        .take(o.top.clamp(1, 5))
        .collect();
    if !evicting.is_empty() {
        let _ = writeln!(
            s,
            "EVICTED BY REASON (pages; owner: charged to the traced cgroup)"
        );
        for f in evicting {
            let mut reasons: Vec<String> = mmtrace_common::reason::NAMES
                .iter()
                .filter_map(|k| {
                    f.evicted_by
                        .get(k)
                        .filter(|n| **n > 0)
                        .map(|n| format!("{k} {}", count(*n)))
                })
                .collect();
            if let Some(owned) = f.evicted_owned_pages {
                reasons.push(format!("owner {}", count(owned)));
            }
            if f.readded_pages > 0 {
                reasons.push(format!(
                    "re-read after invalidation {}",
                    count(f.readded_pages)
                ));
            }
            let line = format!("  {}: {}", fit_path(&f.path, 30), reasons.join(", "));
            let _ = writeln!(s, "{}", fit_path_end(&line, WIDTH));
        }
    }
    if !r.reclaimers.is_empty() {
        let who: Vec<String> = r
            .reclaimers
            .iter()
            .map(|(c, n)| format!("{c} {}", count(*n)))
            .collect();
        let line = format!("RECLAIMERS (pages, by command): {}", who.join(", "));
        let _ = writeln!(s, "{}", fit_path_end(&line, WIDTH));
    }
    if o.mappings && !r.mappings.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>7} {:<12} {:<4} {:<7} {:<25} {:>9} {:>6} {:>7} {:>6} {:>8}",
            "PID", "START", "PERM", "KIND", "MAPPING", "MINFLT", "MAJFLT", "WRITE", "COW", "MAPPED"
        );
        for m in r.mappings.iter().take(o.top.max(1)) {
            let _ = writeln!(
                s,
                "{:>7} {:<12x} {:<4} {:<7} {:<25} {:>9} {:>6} {:>7} {:>6} {:>8}",
                m.pid,
                m.start,
                m.perms
                    .as_deref()
                    .unwrap_or(if m.shared { "???s" } else { "???p" }),
                format!("{:?}", m.kind).to_lowercase(),
                fit_path(&m.path, 25),
                count(m.minor_faults),
                count(m.major_faults),
                w(m.write_faults),
                w(m.cow_faults),
                count(m.pages_mapped)
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:>7} {:<15} {:>10} {:>10} {:>7} {:>7} {:>8} {:>10} {:>10}",
        "PID", "COMM", "MINFLT", "KERNEL", "MAJFLT", "KERNEL", "UNTRACED", "RSS-FILE", "RSS-ANON"
    );
    for p in &r.processes {
        let _ = writeln!(s, "{}", process_line(p, ps));
    }
    for line in LEGEND {
        let _ = writeln!(s, "{line}");
    }
    if r.lost_faults > 0 {
        let _ = writeln!(
            s,
            "warning: {} faults could not be attributed to a process row (map full)",
            count(r.lost_faults)
        );
    }
    for e in &r.errors {
        let _ = writeln!(s, "warning: {} × {}: {}", count(e.count), e.name, e.meaning);
    }
    s
}

fn process_line(p: &ProcessRow, ps: u64) -> String {
    let opt = |v: Option<u64>| v.map(count).unwrap_or_else(|| "-".into());
    let untraced = match (p.untraced_minor_faults, p.untraced_major_faults) {
        (Some(a), Some(b)) => format!("{:+}", a + b),
        _ => "-".into(),
    };
    let comm = if p.alive {
        p.comm.clone()
    } else {
        format!("{} †", p.comm)
    };
    format!(
        "{:>7} {:<15} {:>10} {:>10} {:>7} {:>7} {:>8} {:>10} {:>10}",
        p.pid,
        fit_path(&comm, 15),
        count(p.minor_faults),
        opt(p.kernel_minor_faults),
        count(p.major_faults),
        opt(p.kernel_major_faults),
        untraced,
        p.rss_file_pages
            .map(|v| format!("{}M", mib(v, ps)))
            .unwrap_or_else(|| "-".into()),
        p.rss_anon_pages
            .map(|v| format!("{}M", mib(v, ps)))
            .unwrap_or_else(|| "-".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FileRow, MappingKind, MappingRow};

    fn report() -> Report {
        let mut files = Vec::new();
        for i in 0..30 {
            files.push(FileRow {
                path: format!("/a/very/long/directory/name/that/goes/on/file{i}.bin"),
                path_known: i != 3,
                kind: FileKind::File,
                minor_faults: 123_456_789_012,
                major_faults: 99_999,
                pages_added: 1_000_000,
                resident_pages: Some(262_144),
                pages_evicted: 5,
                evicted_by: mmtrace_common::reason::NAMES
                    .iter()
                    .map(|n| (*n, 123_456_789))
                    .collect(),
                evicted_owned_pages: Some(1),
                ..FileRow::default()
            });
        }
        files.push(FileRow {
            path: "[anon]".into(),
            path_known: true,
            kind: FileKind::Anon,
            minor_faults: 5,
            ..FileRow::default()
        });
        Report {
            processes: vec![ProcessRow {
                pid: 4_194_303,
                comm: "a-very-long-command-name".into(),
                minor_faults: 10_000_000_000,
                kernel_minor_faults: Some(10_000_000_001),
                untraced_minor_faults: Some(1),
                untraced_major_faults: Some(0),
                rss_anon_pages: Some(1 << 30),
                ..ProcessRow::default()
            }],
            files,
            mappings: vec![MappingRow {
                pid: 1,
                kind: MappingKind::File,
                path: "/x/y/z/some/long/path/to/a/mapped/file.arrow".into(),
                start: 0x7fff_ffff_f000,
                end: 0x7fff_ffff_ffff,
                offset: 0,
                shared: false,
                perms: None,
                minor_faults: 1,
                major_faults: 0,
                write_faults: 0,
                cow_faults: 0,
                pages_mapped: 1,
            }],
            lost_faults: 7,
            errors: vec![],
            ..Report::default()
        }
    }

    #[test]
    fn every_line_fits_100_columns() {
        let o = TableOptions {
            page_size: 4096,
            top: 20,
            mappings: true,
            title: "final report (1.0 s)".into(),
            write_faults: true,
        };
        let out = render(&report(), &o);
        for line in out.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} chars: {line}",
                line.chars().count()
            );
        }
        assert!(out.contains("(10 more files)"));
        assert!(out.contains("?…"), "unknown paths are marked");
        assert!(out.contains("[anon]"));
        assert!(out.contains("faults could not be attributed"));
        assert!(out.contains("EVICTED BY REASON"));
        assert!(out.contains("memcg_reclaim 123.5M"));
    }

    #[test]
    fn numbers_are_grouped_and_abbreviated() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(999_999), "999,999");
        assert_eq!(count(1_234_567), "1.2M");
        assert_eq!(count(123_456_789), "123.5M");
        assert_eq!(count(12_345_678_901), "12.3G");
        assert_eq!(mib(256, 4096), "1.0");
        assert_eq!(fit_path("/abc/def", 5), "…/def");
    }

    #[test]
    fn write_columns_show_a_dash_when_unknown() {
        let o = TableOptions {
            page_size: 4096,
            top: 1,
            title: "t".into(),
            ..TableOptions::default()
        };
        let out = render(&report(), &o);
        let row = out.lines().find(|l| l.contains("file0.bin")).unwrap();
        assert!(row.split_whitespace().any(|c| c == "-"));
    }
}
