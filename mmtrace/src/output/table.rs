//! The human report: per-file, per-mapping and per-process tables, busiest
//! files first, counts in pages with MiB where sizes matter. Numbers come
//! first in fixed columns that fit 100 characters; the name (file, mapping,
//! command) comes last, as in ps and top, escaped ([`display_path`]) and
//! whole up to [`NAME_MAX_SHOWN`] characters; two different files never
//! look the same ([`name_labels`]). The column legend is printed on request
//! (once per run, not under every interval table).
use std::{borrow::Cow, collections::HashMap, fmt::Write as _};

use super::escape::{display_name, display_path};
use crate::model::{FileKind, FileRow, ProcessRow, Report};

/// Width of the heading and of the free-text lines (reclaimers); the number
/// columns of every table fit in it, the name column follows them.
pub const WIDTH: usize = 100;

/// Longest name shown whole (characters, after escaping). Longer ones keep
/// their first directory and their file name and lose directories in the
/// middle (`/usr/…/x86_64-linux-gnu/libfoo.so`) — unless that would make
/// two rows of a table look the same, in which case both are shown whole.
pub const NAME_MAX_SHOWN: usize = 120;

/// Exited processes of one command name are summed into one line when there
/// are more than this many of them (a shell script's short-lived children).
pub const GROUP_EXITED_OVER: usize = 3;

const LEGEND: &[&str] = &[
    "MINFLT/MAJFLT: faults traced. KERNEL: the kernel's own count (/proc/<pid>/stat, or the task",
    "counters at exit). UNTRACED: kernel - traced (GUP faults: O_DIRECT, pinning, execve's argv).",
    "MAPPED: pages mapped by those faults, fault-around included. ADDED/EVICTED: page-cache pages.",
    "REFLT~: pages re-added after a reclaim this trace saw (refaults; estimate). RES: resident now.",
    "?[dev:ino]: a file whose path was never seen. NAME ×N (exited): N exited processes, summed.",
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

/// Shortens a (displayed) path longer than `max` characters by replacing
/// directories in the middle with `…`: the first directory and the file
/// name stay whole, then as many of the last directories as fit
/// (`/usr/…/x86_64-linux-gnu/libc.so.6`). The first directory goes too when
/// even it does not fit (`/…/name`); the file name is never cut, so the
/// result can exceed `max`. Different paths can shorten to the same text:
/// [`name_labels`] guards against that.
pub fn shorten_dirs(p: &str, max: usize) -> Cow<'_, str> {
    let len = |s: &str| s.chars().count();
    if len(p) <= max {
        return Cow::Borrowed(p);
    }
    let Some((dir, name)) = p.rsplit_once('/') else {
        return Cow::Borrowed(p);
    };
    let parts: Vec<&str> = dir.split('/').collect();
    // The leading "" of an absolute path and the first directory.
    let first = parts
        .iter()
        .position(|d| !d.is_empty())
        .map_or(parts.len(), |i| i + 1);
    let mut head = parts[..first].join("/");
    let rest = &parts[first..];
    if rest.is_empty() {
        return Cow::Borrowed(p);
    }
    let fixed = len("/…/") + len(name);
    let head_dropped = len(&head) + fixed > max;
    if head_dropped {
        head.clear();
    }
    let mut room = max.saturating_sub(len(&head) + fixed);
    let mut kept = 0;
    for d in rest.iter().rev() {
        if len(d) + 1 > room {
            break;
        }
        room -= len(d) + 1;
        kept += 1;
    }
    if kept == rest.len() && !head_dropped {
        return Cow::Borrowed(p);
    }
    let mut out = head;
    out.push_str("/…/");
    for d in &rest[rest.len() - kept..] {
        out.push_str(d);
        out.push('/');
    }
    out.push_str(name);
    Cow::Owned(out)
}

/// How the rows of one table show `names`: escaped ([`display_path`]),
/// shortened to `max` ([`shorten_dirs`]), and shown whole wherever a
/// shortened label would read like the label of a different name.
pub fn name_labels(names: &[&str], max: usize) -> Vec<String> {
    labels_of(names.iter().map(|n| display_path(n)).collect(), max)
}

/// [`name_labels`] of names already escaped (distinct names, distinct
/// escapes).
fn labels_of(whole: Vec<Cow<str>>, max: usize) -> Vec<String> {
    let mut labels: Vec<String> = whole
        .iter()
        .map(|w| shorten_dirs(w, max).into_owned())
        .collect();
    // Each round shows at least one more name whole; whole labels are
    // distinct for distinct names, so this ends.
    loop {
        let mut by_label: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, l) in labels.iter().enumerate() {
            by_label.entry(l.as_str()).or_default().push(i);
        }
        let clashing: Vec<usize> = by_label
            .values()
            .filter(|ix| ix.iter().any(|&i| whole[i] != whole[ix[0]]))
            .flatten()
            .copied()
            .filter(|&i| labels[i] != whole[i])
            .collect();
        if clashing.is_empty() {
            return labels;
        }
        for i in clashing {
            labels[i] = whole[i].to_string();
        }
    }
}

/// Cuts a line at `width` characters.
fn fit_line(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// The table with the column legend under it (see [`render_table`]).
pub fn render(r: &Report, o: &TableOptions) -> String {
    render_table(r, o, true)
}

/// The table; the column legend under it when `legend` (a caller printing
/// one table per interval passes `true` for the first one only).
pub fn render_table(r: &Report, o: &TableOptions, legend: bool) -> String {
    let mut s = String::new();
    let ps = o.page_size.max(1);
    let _ = writeln!(
        s,
        "── mmtrace: {} {}",
        o.title,
        "─".repeat(WIDTH.saturating_sub(14 + o.title.chars().count()))
    );
    let w = |n: u64| if o.write_faults { count(n) } else { "-".into() };
    let _ = writeln!(s, "{}", file_header());
    for line in file_lines(&r.files, o) {
        let _ = writeln!(s, "{line}");
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
        let paths: Vec<&str> = evicting.iter().map(|f| f.path.as_str()).collect();
        for (f, label) in evicting.iter().zip(name_labels(&paths, NAME_MAX_SHOWN)) {
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
            let _ = writeln!(s, "  {label}: {}", reasons.join(", "));
        }
    }
    if !r.reclaimers.is_empty() {
        let who: Vec<String> = r
            .reclaimers
            .iter()
            .map(|(c, n)| format!("{} {}", display_path(c), count(*n)))
            .collect();
        let line = format!("RECLAIMERS (pages, by command): {}", who.join(", "));
        let _ = writeln!(s, "{}", fit_line(&line, WIDTH));
    }
    if o.mappings && !r.mappings.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>7} {:<12} {:<4} {:<7} {:>9} {:>6} {:>7} {:>6} {:>8}  MAPPING",
            "PID", "START", "PERM", "KIND", "MINFLT", "MAJFLT", "WRITE", "COW", "MAPPED"
        );
        let shown: Vec<_> = r.mappings.iter().take(o.top.max(1)).collect();
        let paths: Vec<&str> = shown.iter().map(|m| m.path.as_str()).collect();
        for (m, label) in shown.iter().zip(name_labels(&paths, NAME_MAX_SHOWN)) {
            let _ = writeln!(
                s,
                "{:>7} {:<12x} {:<4} {:<7} {:>9} {:>6} {:>7} {:>6} {:>8}  {label}",
                m.pid,
                m.start,
                m.perms
                    .as_deref()
                    .unwrap_or(if m.shared { "???s" } else { "???p" }),
                format!("{:?}", m.kind).to_lowercase(),
                count(m.minor_faults),
                count(m.major_faults),
                w(m.write_faults),
                w(m.cow_faults),
                count(m.pages_mapped)
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", process_header());
    for line in process_table(&r.processes, ps) {
        let _ = writeln!(s, "{line}");
    }
    for line in super::cost::write_lines(r, ps)
        .into_iter()
        .chain(cost_lines(r))
    {
        let _ = writeln!(s, "{}", fit_line(&line, WIDTH * 2));
    }
    if legend {
        for line in LEGEND {
            let _ = writeln!(s, "{line}");
        }
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

/// Signals shown in the table (the JSON lists up to 100).
const SIGNALS_SHOWN: usize = 10;
/// Processes with TLB flush lines.
const TLB_SHOWN: usize = 5;

/// The SIGNALS section (which process got SIGBUS/SIGSEGV where, and what it
/// means) and the TLB FLUSHES lines (per process, remote shootdowns first).
pub fn cost_lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if !r.signals.is_empty() {
        out.push("SIGNALS (kernel-generated SIGBUS/SIGSEGV of traced processes)".into());
        for g in r.signals.iter().take(SIGNALS_SHOWN) {
            out.push(format!(
                "  pid {} ({}) {} {} at 0x{:x}: {}",
                g.pid,
                display_path(&g.comm),
                g.signal,
                g.code_name,
                g.address,
                display_path(&g.explanation)
            ));
        }
        let more = (r.signals.len().saturating_sub(SIGNALS_SHOWN)) as u64 + r.signals_not_listed;
        if more > 0 {
            out.push(format!("  ... and {} more", count(more)));
        }
    }
    let mut tlb: Vec<(&ProcessRow, &crate::tlb::TlbFlushes)> = r
        .processes
        .iter()
        .filter_map(|p| p.tlb_flushes.as_ref().map(|t| (p, t)))
        .filter(|(_, t)| t.remote_shootdowns + t.remote_flush_requests > 0)
        .collect();
    tlb.sort_by_key(|(p, t)| {
        (
            std::cmp::Reverse(t.remote_shootdowns),
            std::cmp::Reverse(t.remote_flush_requests),
            p.pid,
        )
    });
    if !tlb.is_empty() {
        out.push(
            "TLB FLUSHES (per process, not per file; a flush request is logged even when no \
             other CPU needed an interrupt)"
                .into(),
        );
        for (p, t) in tlb.iter().take(TLB_SHOWN) {
            out.push(format!("  pid {} ({}): {}", p.pid, comm(p), t.line()));
        }
    }
    out
}

/// The heading of the file table (the live view marks its sort column in it).
pub fn file_header() -> String {
    format!(
        "{:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}  FILE",
        "MINFLT", "MAJFLT", "WRITE", "COW", "MAPPED", "ADDED", "EVICTED", "REFLT~", "RES MiB"
    )
}

/// The rows of the file table for `files` in their order: the first
/// `o.top` listed files, one line summing the rest, then the special rows
/// (anonymous memory, shmem...). Shared by the table and the live view.
pub fn file_lines(files: &[FileRow], o: &TableOptions) -> Vec<String> {
    let mut out = Vec::new();
    let ps = o.page_size.max(1);
    // Files of unknown path that took no fault (page-cache traffic only:
    // metadata, pipes, short-lived scratch files) go to the summary line;
    // JSON keeps every row.
    let listed = |f: &&FileRow| {
        f.kind == FileKind::File && (f.path_known || f.minor_faults + f.major_faults > 0)
    };
    let mut rows: Vec<&FileRow> = files.iter().filter(listed).take(o.top.max(1)).collect();
    let hidden: Vec<&FileRow> = files
        .iter()
        .filter(|f| f.kind == FileKind::File && !rows.iter().any(|s| std::ptr::eq(*s, *f)))
        .collect();
    rows.extend(files.iter().filter(|f| f.kind != FileKind::File));
    let w = |n: u64| {
        if o.write_faults {
            count(n)
        } else {
            "-".to_string()
        }
    };
    let names = rows
        .iter()
        .map(|f| display_name(&f.path, f.path_bytes_hex.as_deref()))
        .collect();
    for (f, label) in rows.iter().zip(labels_of(names, NAME_MAX_SHOWN)) {
        let mark = if f.path_known { "" } else { "?" };
        let note = if f.deleted { " (deleted)" } else { "" };
        let res = match f.resident_pages {
            Some(p) => mib(p, ps),
            None => "-".into(),
        };
        let cache = |n: u64| {
            if f.kind == FileKind::File {
                count(n)
            } else {
                "-".into()
            }
        };
        out.push(format!(
            "{:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}  {mark}{label}{note}",
            count(f.minor_faults),
            count(f.major_faults),
            w(f.write_faults),
            w(f.cow_faults),
            count(f.pages_mapped),
            cache(f.pages_added),
            cache(f.pages_evicted),
            cache(f.refault_pages),
            res
        ));
    }
    if !hidden.is_empty() {
        let sum = |g: fn(&FileRow) -> u64| hidden.iter().map(|f| g(f)).sum::<u64>();
        out.push(format!(
            "{:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}  ({} more files)",
            count(sum(|f| f.minor_faults)),
            count(sum(|f| f.major_faults)),
            w(sum(|f| f.write_faults)),
            w(sum(|f| f.cow_faults)),
            count(sum(|f| f.pages_mapped)),
            count(sum(|f| f.pages_added)),
            count(sum(|f| f.pages_evicted)),
            count(sum(|f| f.refault_pages)),
            "",
            hidden.len(),
        ));
    }
    out
}

/// The heading of the process table.
pub fn process_header() -> String {
    format!(
        "{:>7} {:>10} {:>10} {:>7} {:>7} {:>8} {:>10} {:>10}  COMM",
        "PID", "MINFLT", "KERNEL", "MAJFLT", "KERNEL", "UNTRACED", "RSS-FILE", "RSS-ANON"
    )
}

/// The rows of the process table, in the report's order (many exited
/// processes of one name summed in one line). Shared with the live view.
pub fn process_table(rows: &[ProcessRow], page_size: u64) -> Vec<String> {
    process_lines(rows)
        .iter()
        .map(|l| l.render(page_size.max(1)))
        .collect()
}

/// One line of the process table: a process, or exited processes of one
/// command name summed.
enum ProcessLine<'a> {
    One(&'a ProcessRow),
    Exited(Vec<&'a ProcessRow>),
}

/// The process table's lines in the report's order (a group where its first
/// member was). Processes named by the user and live ones stay individual.
fn process_lines(rows: &[ProcessRow]) -> Vec<ProcessLine<'_>> {
    let groupable = |p: &ProcessRow| !p.alive && !p.target;
    let mut exited: HashMap<&str, Vec<&ProcessRow>> = HashMap::new();
    for p in rows.iter().filter(|p| groupable(p)) {
        exited.entry(p.comm.as_str()).or_default().push(p);
    }
    let mut lines = Vec::new();
    for p in rows {
        match exited.get_mut(p.comm.as_str()) {
            Some(group) if groupable(p) && group.len() > GROUP_EXITED_OVER => {
                lines.push(ProcessLine::Exited(std::mem::take(group)));
            }
            // The rest of a group already printed.
            Some(group) if groupable(p) && group.is_empty() => {}
            _ => lines.push(ProcessLine::One(p)),
        }
    }
    lines
}

impl ProcessLine<'_> {
    fn render(&self, ps: u64) -> String {
        match self {
            ProcessLine::One(p) => {
                let note = if p.alive { "" } else { " (exited)" };
                process_line(&p.pid.to_string(), p, &format!("{}{note}", comm(p)), ps)
            }
            ProcessLine::Exited(group) => {
                let sum = sum_processes(group);
                let label = format!("{} ×{} (exited)", comm(&sum), group.len());
                process_line("-", &sum, &label, ps)
            }
        }
    }
}

fn comm(p: &ProcessRow) -> Cow<'_, str> {
    if p.comm.is_empty() {
        Cow::Borrowed("?")
    } else {
        display_path(&p.comm)
    }
}

/// The counters of `group` added up; a count unknown for one member is
/// unknown for the sum.
fn sum_processes(group: &[&ProcessRow]) -> ProcessRow {
    fn all<T: std::iter::Sum<T>>(v: impl Iterator<Item = Option<T>>) -> Option<T> {
        v.sum()
    }
    ProcessRow {
        comm: group.first().map(|p| p.comm.clone()).unwrap_or_default(),
        minor_faults: group.iter().map(|p| p.minor_faults).sum(),
        major_faults: group.iter().map(|p| p.major_faults).sum(),
        write_faults: group.iter().map(|p| p.write_faults).sum(),
        cow_faults: group.iter().map(|p| p.cow_faults).sum(),
        kernel_minor_faults: all(group.iter().map(|p| p.kernel_minor_faults)),
        kernel_major_faults: all(group.iter().map(|p| p.kernel_major_faults)),
        untraced_minor_faults: all(group.iter().map(|p| p.untraced_minor_faults)),
        untraced_major_faults: all(group.iter().map(|p| p.untraced_major_faults)),
        rss_file_pages: all(group.iter().map(|p| p.rss_file_pages)),
        rss_anon_pages: all(group.iter().map(|p| p.rss_anon_pages)),
        rss_shmem_pages: all(group.iter().map(|p| p.rss_shmem_pages)),
        ..ProcessRow::default()
    }
}

fn process_line(pid: &str, p: &ProcessRow, label: &str, ps: u64) -> String {
    let opt = |v: Option<u64>| v.map(count).unwrap_or_else(|| "-".into());
    let untraced = match (p.untraced_minor_faults, p.untraced_major_faults) {
        (Some(a), Some(b)) => format!("{:+}", a + b),
        _ => "-".into(),
    };
    let rss = |v: Option<u64>| {
        v.map(|v| format!("{}M", mib(v, ps)))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{:>7} {:>10} {:>10} {:>7} {:>7} {:>8} {:>10} {:>10}  {label}",
        pid,
        count(p.minor_faults),
        opt(p.kernel_minor_faults),
        count(p.major_faults),
        opt(p.kernel_major_faults),
        untraced,
        rss(p.rss_file_pages),
        rss(p.rss_anon_pages),
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

    fn opts(top: usize) -> TableOptions {
        TableOptions {
            page_size: 4096,
            top,
            mappings: true,
            title: "final report (1.0 s)".into(),
            write_faults: true,
        }
    }

    /// Where the name column starts in the line under `header` (all name
    /// columns follow two spaces after fixed-width number columns).
    fn name_column(out: &str, header: &str) -> usize {
        let h = out.lines().find(|l| l.ends_with(header)).unwrap();
        h.chars().count() - header.chars().count()
    }

    #[test]
    fn number_columns_fit_100_columns_and_names_come_last() {
        let out = render(&report(), &opts(20));
        let at = name_column(&out, "  FILE") + 2;
        assert!(at <= WIDTH);
        let rows = out
            .lines()
            .filter(|l| l.contains("/a/very/") && !l.starts_with("  "));
        for line in rows {
            let (numbers, name) = line.split_at(line.char_indices().nth(at).unwrap().0);
            assert!(numbers.ends_with("  ") && !name.starts_with(' '), "{line}");
            if !line.starts_with("  ") {
                assert!(name.starts_with('/') || name.starts_with('?'), "{line}");
            }
        }
        // Every line but the named rows fits the width.
        for line in out.lines() {
            let names = ["/a/very/", "/x/y/z/", "a-very-long-command-name"];
            if !names.iter().any(|n| line.contains(n)) {
                assert!(line.chars().count() <= WIDTH, "{line}");
            }
        }
        assert!(out.contains("  /a/very/long/directory/name/that/goes/on/file0.bin\n"));
        assert!(out.contains("  /x/y/z/some/long/path/to/a/mapped/file.arrow\n"));
        assert!(out.contains("(10 more files)"));
        assert!(out.contains("  ?/a/very/long/directory/name/that/goes/on/file3.bin"));
        assert!(out.contains("  [anon]"));
        assert!(out.contains("  a-very-long-command-name (exited)\n"));
        assert!(out.contains("faults could not be attributed"));
        assert!(out.contains("EVICTED BY REASON"));
        assert!(out.contains("memcg_reclaim 123.5M"));
    }

    fn lib(path: &str, minor: u64) -> FileRow {
        FileRow {
            path: path.into(),
            path_known: true,
            minor_faults: minor,
            ..FileRow::default()
        }
    }

    #[test]
    fn files_with_the_same_tail_stay_told_apart() {
        let paths = [
            "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
            "/home/u/.pyenv/versions/3.11.9/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
        ];
        let r = Report {
            files: paths.iter().map(|p| lib(p, 10)).collect(),
            ..Report::default()
        };
        let out = render(&r, &opts(10));
        for p in paths {
            assert_eq!(
                out.matches(&format!("  {p}\n")).count(),
                1,
                "{p} whole:\n{out}"
            );
        }
    }

    #[test]
    fn very_long_paths_lose_middle_directories_but_never_their_file_name() {
        let deep = format!("/srv{}/data.bin", "/d".repeat(2000));
        let short = shorten_dirs(&deep, NAME_MAX_SHOWN);
        assert!(short.starts_with("/srv/…/d/d/"), "{short}");
        assert!(short.ends_with("/d/data.bin"), "{short}");
        assert!((NAME_MAX_SHOWN - 1..=NAME_MAX_SHOWN).contains(&short.chars().count()));
        assert_eq!(
            shorten_dirs("/usr/lib/x86_64-linux-gnu/libfoo.so", 20),
            "/usr/…/libfoo.so"
        );
        assert_eq!(
            shorten_dirs("/usr/lib/x86_64-linux-gnu/python3/libfoo.so", 30),
            "/usr/…/python3/libfoo.so"
        );
        assert_eq!(
            shorten_dirs("/usr/lib/libfoo.so", 100),
            "/usr/lib/libfoo.so"
        );
        // A file name is never cut, even alone over the limit; nor is a
        // path with nothing to take out.
        let name = format!("/tmp/{}", "n".repeat(300));
        assert!(shorten_dirs(&name, 50).ends_with(&"n".repeat(300)));
        assert_eq!(shorten_dirs(&name, 50), name);
        let in_deep_dir = format!("/{}/{}/f", "a".repeat(200), "b".repeat(10));
        assert_eq!(shorten_dirs(&in_deep_dir, 20), "/…/bbbbbbbbbb/f");
        assert_eq!(shorten_dirs(&"x".repeat(4000), 10), "x".repeat(4000));
        // In a table, a 4,000-character path is one line that ends with the file name.
        let r = Report {
            files: vec![lib(&deep, 5), lib("/etc/hosts", 1)],
            ..Report::default()
        };
        let out = render(&r, &opts(10));
        let row = out.lines().find(|l| l.ends_with("/data.bin")).unwrap();
        assert!(row.chars().count() < 78 + NAME_MAX_SHOWN + 2, "{row}");
        assert!(out.contains("  /etc/hosts\n"));
    }

    #[test]
    fn shortened_names_that_would_clash_are_shown_whole() {
        let mid = |m: &str| format!("/srv/{m}{}/data.bin", "/d".repeat(100));
        let (a, b) = (mid("a"), mid("b"));
        assert_eq!(shorten_dirs(&a, 60), shorten_dirs(&b, 60));
        let literal = shorten_dirs(&a, 60).into_owned(); // a real name with "…" in it
        let names = [
            a.as_str(),
            b.as_str(),
            "/etc/passwd",
            a.as_str(),
            literal.as_str(),
        ];
        let labels = name_labels(&names, 60);
        assert_eq!(labels[0], a);
        assert_eq!(labels[1], b);
        assert_eq!(labels[2], "/etc/passwd");
        assert_eq!(labels[3], a, "the same name twice is the same label");
        assert_eq!(labels[4], literal);
        // Unique short labels stay short.
        assert_eq!(
            name_labels(&[a.as_str(), "/x"], 60)[0],
            shorten_dirs(&a, 60)
        );
    }

    fn has_no_terminal_controls(s: &str) -> bool {
        !s.chars()
            .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
    }

    #[test]
    fn hostile_names_cannot_break_lines_or_drive_the_terminal() {
        let hostile = [
            "/tmp/new\nline.so",
            "/tmp/tab\there",
            "/tmp/\x1b[2J\x1b]0;pwned\x07clear",
            "/tmp/del\x7f and c1 \u{9b}31m",
            "/tmp/\"quoted\" and 'single'",
            "/tmp/invalid-\u{fffd}\u{fffd}.bin",
            "/tmp/rlo-\u{202e}os.exe",
        ];
        let mut files: Vec<FileRow> = hostile.iter().map(|p| lib(p, 3)).collect();
        files[0].pages_evicted = 1;
        files[0].evicted_by.insert("kswapd", 1);
        let r = Report {
            files,
            mappings: vec![MappingRow {
                pid: 9,
                kind: MappingKind::File,
                path: hostile[2].into(),
                start: 0x1000,
                end: 0x2000,
                offset: 0,
                shared: false,
                perms: Some("r--p".into()),
                minor_faults: 1,
                major_faults: 0,
                write_faults: 0,
                cow_faults: 0,
                pages_mapped: 1,
            }],
            processes: vec![ProcessRow {
                pid: 9,
                comm: "ev\x1bil\ncomm".into(),
                alive: true,
                ..ProcessRow::default()
            }],
            reclaimers: [("kd\x1b[1m".to_string(), 4)].into(),
            ..Report::default()
        };
        let out = render(&r, &opts(20));
        assert!(has_no_terminal_controls(&out), "{out:?}");
        // The same report with plain names has as many lines.
        let mut plain = r.clone();
        for (i, f) in plain.files.iter_mut().enumerate() {
            f.path = format!("/tmp/{i}");
        }
        plain.mappings[0].path = "/tmp/m".into();
        plain.processes[0].comm = "x".into();
        plain.reclaimers = [("k".to_string(), 4)].into();
        let plain = render(&plain, &opts(20));
        assert_eq!(
            out.lines().count(),
            plain.lines().count(),
            "one line per row"
        );
        for want in [
            r"  /tmp/new\nline.so",
            r"  /tmp/tab\there",
            r"  /tmp/\x1b[2J\x1b]0;pwned\x07clear",
            r"  /tmp/del\x7f and c1 \u{9b}31m",
            "  /tmp/\"quoted\" and 'single'",
            "  /tmp/invalid-\u{fffd}\u{fffd}.bin",
            r"  /tmp/rlo-\u{202e}os.exe",
            r"  ev\x1bil\ncomm",
            r"kd\x1b[1m 4",
            r"  /tmp/new\nline.so: kswapd 1",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    fn proc(pid: u32, comm: &str, alive: bool, minor: u64) -> ProcessRow {
        ProcessRow {
            pid,
            comm: comm.into(),
            alive,
            minor_faults: minor,
            kernel_minor_faults: Some(minor + 1),
            kernel_major_faults: Some(0),
            untraced_minor_faults: Some(1),
            untraced_major_faults: Some(0),
            ..ProcessRow::default()
        }
    }

    #[test]
    fn many_exited_processes_of_one_name_are_one_line() {
        let mut processes = vec![ProcessRow {
            target: true,
            rss_anon_pages: Some(256),
            ..proc(100, "python3", true, 1000)
        }];
        processes.extend((0..40).map(|i| proc(200 + i, "bash", false, 10)));
        processes.push(proc(300, "bash", true, 7)); // alive: its own line
        processes.push(ProcessRow {
            target: true,
            ..proc(301, "bash", false, 8) // named by the user: its own line
        });
        processes.extend((0..3).map(|i| proc(400 + i, "uname", false, 2)));
        let r = Report {
            processes,
            ..Report::default()
        };
        let out = render(&r, &opts(10));
        let group: Vec<&str> = out.lines().filter(|l| l.contains("bash ×")).collect();
        assert_eq!(group.len(), 1, "{out}");
        let cols: Vec<&str> = group[0].split_whitespace().collect();
        // PID MINFLT KERNEL MAJFLT KERNEL UNTRACED RSS-FILE RSS-ANON COMM
        assert_eq!(
            cols,
            [
                "-", "400", "440", "0", "0", "+40", "-", "-", "bash", "×40", "(exited)"
            ],
            "{out}"
        );
        assert!(out.contains("  bash\n"), "the live bash stays");
        assert!(out.contains("  bash (exited)\n"), "the target bash stays");
        assert_eq!(
            out.matches("  uname (exited)\n").count(),
            3,
            "three are not many"
        );
        assert!(out.contains("  python3\n"));
        // The group sits where its first member was: after python3.
        let at = |s: &str| out.find(s).unwrap();
        assert!(at("  python3\n") < at("bash ×40") && at("bash ×40") < at("  uname"));
    }

    #[test]
    fn signals_and_tlb_shootdowns_get_their_own_lines() {
        let mut r = Report::default();
        assert!(cost_lines(&r).is_empty(), "nothing to say, no section");
        let mut g = crate::signals::SignalRecord {
            pid: 42,
            comm: "db".into(),
            signal: "SIGBUS".into(),
            code: 2,
            code_name: "BUS_ADRERR".into(),
            code_meaning: "access beyond the end of the file".into(),
            address: 0x7f00_0000_3000,
            mapping: crate::signals::SignalMapping::File,
            path: Some("/data/t.bin".into()),
            offset_pages: Some(3),
            file_size_pages: Some(1),
            ..Default::default()
        };
        g.explanation = crate::signals::explain(&g);
        r.signals = vec![g; 12];
        r.signals_not_listed = 3;
        let mut c = mmtrace_common::TlbCounters::default();
        c.flushes[1] = 3996;
        c.flushes[4] = 3998;
        c.flushes[3] = 4030;
        c.pages[3] = 64_000;
        let mut quiet = c;
        quiet.flushes[1] = 0;
        quiet.flushes[4] = 0;
        r.processes = vec![
            ProcessRow {
                pid: 7,
                comm: "quiet".into(),
                tlb_flushes: Some(crate::tlb::TlbFlushes::from_counters(&quiet)),
                ..ProcessRow::default()
            },
            ProcessRow {
                pid: 42,
                comm: "db".into(),
                tlb_flushes: Some(crate::tlb::TlbFlushes::from_counters(&c)),
                ..ProcessRow::default()
            },
            ProcessRow {
                pid: 8,
                comm: "no-hook".into(),
                ..ProcessRow::default()
            },
        ];
        let lines = cost_lines(&r);
        assert!(lines[0].starts_with("SIGNALS"));
        assert!(
            lines[1].contains("pid 42 (db) SIGBUS BUS_ADRERR at 0x7f0000003000: page 3 of /data/t.bin is beyond the end of the file (1 page now)"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains("BUS_ADRERR")).count(),
            10
        );
        assert!(lines.iter().any(|l| l == "  ... and 5 more"), "{lines:#?}");
        let tlb: Vec<&String> = lines.iter().skip_while(|l| !l.starts_with("TLB")).collect();
        assert!(tlb[0].contains("per process, not per file"));
        // Only processes with remote activity get a line.
        assert_eq!(tlb.len(), 2, "{tlb:#?}");
        assert!(
            tlb[1].starts_with(
                "  pid 42 (db): 3,996 remote shootdowns received, 3,998 remote flush requests"
            ),
            "{}",
            tlb[1]
        );
        assert!(render(&r, &opts(5)).contains("TLB FLUSHES"));
    }

    #[test]
    fn the_legend_is_printed_only_when_asked() {
        let r = report();
        let with = render_table(&r, &opts(5), true);
        let without = render_table(&r, &opts(5), false);
        assert!(with.contains(LEGEND[0]));
        assert!(!without.contains(LEGEND[0]));
        assert_eq!(render(&r, &opts(5)), with, "render keeps the legend");
        assert_eq!(with.lines().count(), without.lines().count() + LEGEND.len());
        for line in LEGEND {
            assert!(line.chars().count() <= WIDTH, "{line}");
        }
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
