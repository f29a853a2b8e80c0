//! What mmap cost, as text: the WRITE PATH lines (every table) and the
//! final report's short WHAT MMAP COST summary (stall, write path, signals,
//! shootdowns), both from the report's figures only.
use super::{
    escape::display_path,
    table::{NAME_MAX_SHOWN, count, mib, name_labels},
};
use crate::model::{FileKind, FileRow, MmapCost, Report, WritePath};

/// Files with write-path lines.
const WRITE_FILES_SHOWN: usize = 5;
/// msync(MS_SYNC) calls from which a "one page per flush" note is given.
const FLUSH_NOTE_MIN_CALLS: u64 = 100;
/// Pages written per MS_SYNC call at or below which flushing is "per record".
const FLUSH_NOTE_MAX_PAGES_PER_CALL: f64 = 2.0;

fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The WRITE PATH lines: one per file with write-path activity (busiest
/// first), then the msync calls on memory that is no file of interest.
pub fn write_lines(r: &Report, page_size: u64) -> Vec<String> {
    let mut files: Vec<&FileRow> = r
        .files
        .iter()
        .filter(|f| f.write_path.is_some() || f.wp_shared_faults > 0)
        .collect();
    if files.is_empty() && r.write_path.is_none_or(|w| w.msync_calls() == 0) {
        return Vec::new();
    }
    files.sort_by_key(|f| {
        let w = f.write_path.unwrap_or_default();
        std::cmp::Reverse((w.written_back_pages + w.dirtied_pages, w.msync_calls()))
    });
    let mut out = vec![
        "WRITE PATH (pages; msync MS_SYNC writes the range and waits, MS_ASYNC does nothing on Linux)"
            .to_string(),
    ];
    let shown: Vec<&FileRow> = files.iter().take(WRITE_FILES_SHOWN).copied().collect();
    let paths: Vec<&str> = shown.iter().map(|f| f.path.as_str()).collect();
    let mut in_files = WritePath::default();
    for f in &files {
        if let Some(w) = &f.write_path {
            let mut acc = Some(in_files);
            WritePath::add_to(&mut acc, w);
            in_files = acc.unwrap_or_default();
        }
    }
    for (f, label) in shown.iter().zip(name_labels(&paths, NAME_MAX_SHOWN)) {
        let (first, msync) = file_line(f, page_size);
        out.push(format!("  {label}: {first}"));
        if let Some(m) = msync {
            out.push(format!("    {m}"));
        }
        if let Some(note) = f.write_path.as_ref().and_then(flush_note) {
            out.push(format!("    {note}"));
        }
    }
    if files.len() > WRITE_FILES_SHOWN {
        out.push(format!(
            "  ... and {} more files",
            count((files.len() - WRITE_FILES_SHOWN) as u64)
        ));
    }
    if let Some(all) = &r.write_path {
        let calls = all.msync_calls().saturating_sub(in_files.msync_calls());
        if calls > 0 {
            out.push(format!(
                "  msync on memory that is no file of interest: {} calls, {}",
                count(calls),
                ms(all.msync_ns.saturating_sub(in_files.msync_ns))
            ));
        }
    }
    out
}

/// The file's pages line, and its msync line when it had msync calls.
fn file_line(f: &FileRow, page_size: u64) -> (String, Option<String>) {
    let w = f.write_path.unwrap_or_default();
    let mut parts = vec![format!("dirtied {}", count(w.dirtied_pages))];
    let source = match w.written_back_source {
        "flusher_only" => ", flusher only: this filesystem does not report fsync/msync writes",
        _ => "",
    };
    parts.push(format!(
        "written back {} ({} MiB{source})",
        count(w.written_back_pages),
        mib(w.written_back_pages, page_size)
    ));
    if f.wp_shared_faults > 0 {
        parts.push(format!(
            "write-protect faults {}",
            count(f.wp_shared_faults)
        ));
    }
    if w.writeback_waits > 0 {
        parts.push(format!("waits on writeback {}", count(w.writeback_waits)));
    }
    if let (Some(d), Some(wb)) = (f.dirty_pages, f.writeback_pages) {
        parts.push(format!(
            "dirty now {}, under writeback {}",
            count(d),
            count(wb)
        ));
    }
    let mut msync = Vec::new();
    if w.msync_sync_calls > 0 {
        msync.push(format!(
            "msync MS_SYNC {} calls in {} (max {}), {} pages written",
            count(w.msync_sync_calls),
            ms(w.msync_ns),
            ms(w.msync_max_ns),
            count(w.msync_pages_written)
        ));
    }
    if w.msync_async_calls > 0 {
        msync.push(format!(
            "msync MS_ASYNC {} calls (no-ops)",
            count(w.msync_async_calls)
        ));
    }
    (
        parts.join(", "),
        (!msync.is_empty()).then(|| msync.join("; ")),
    )
}

/// "Flushing after every record": many MS_SYNC calls, each writing about
/// one page. Evidence: the calls and the pages they wrote.
fn flush_note(w: &WritePath) -> Option<String> {
    if w.msync_sync_calls < FLUSH_NOTE_MIN_CALLS || w.msync_pages_written == 0 {
        return None;
    }
    let per_call = w.msync_pages_written as f64 / w.msync_sync_calls as f64;
    (per_call <= FLUSH_NOTE_MAX_PAGES_PER_CALL).then(|| {
        format!(
            "write amplification: {} msync(MS_SYNC) wrote {per_call:.1} pages each: each flush writes \
             and write-protects whole pages, so the next write faults again; batch writes between flushes",
            count(w.msync_sync_calls)
        )
    })
}

/// The final report's WHAT MMAP COST lines.
pub fn summary(r: &Report) -> Vec<String> {
    let c: &MmapCost = &r.mmap_cost;
    let mut out = vec!["WHAT MMAP COST".to_string()];
    match (c.fault_stall_ns, c.fault_stall_faults) {
        (Some(ns), Some(n)) => {
            let top = r
                .files
                .iter()
                .filter(|f| f.kind == FileKind::File)
                .filter_map(|f| f.fault_stall.as_ref().map(|s| (f, s.total_ns)))
                .max_by_key(|(_, ns)| *ns)
                .filter(|(_, ns)| *ns > 0)
                .map(|(f, ns)| format!("; most in {} ({})", display_path(&f.path), ms(ns)))
                .unwrap_or_default();
            out.push(format!(
                "  fault stall: {} in {} faults ({} in major faults){top}",
                ms(ns),
                count(n),
                ms(c.major_fault_stall_ns.unwrap_or(0))
            ));
        }
        _ => out.push("  fault stall: not measured (--latency)".into()),
    }
    out.push(format!(
        "  write path: {} pages dirtied, {} written back, {} write-protect faults on shared mappings, \
         msync {} MS_SYNC + {} MS_ASYNC in {}, {} waits on writeback",
        count(c.dirtied_pages),
        count(c.written_back_pages),
        count(c.wp_shared_faults),
        count(c.msync_sync_calls),
        count(c.msync_async_calls),
        ms(c.msync_ns),
        count(c.writeback_waits)
    ));
    out.push(format!("  signals: {} SIGBUS/SIGSEGV", count(c.signals)));
    out.push(
        match (c.tlb_remote_shootdowns, c.tlb_remote_flush_requests) {
            (Some(s), Some(q)) => format!(
                "  TLB (per process): {} remote shootdowns received, {} remote flush requests",
                count(s),
                count(q)
            ),
            _ => "  TLB: not counted (tlb_flush hook not attached)".into(),
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, w: WritePath, wp: u64) -> FileRow {
        FileRow {
            path: path.into(),
            kind: FileKind::File,
            wp_shared_faults: wp,
            write_path: Some(w),
            dirty_pages: Some(3),
            writeback_pages: Some(0),
            ..FileRow::default()
        }
    }

    fn flushing() -> WritePath {
        WritePath {
            dirtied_pages: 20_000,
            written_back_pages: 20_010,
            written_back_source: "filesystem",
            msync_sync_calls: 20_000,
            msync_ns: 9_000_000_000,
            msync_max_ns: 3_000_000,
            msync_pages_written: 20_000,
            ..WritePath::default()
        }
    }

    #[test]
    fn flushing_after_every_record_is_named_with_its_evidence() {
        let mut r = Report {
            files: vec![file("/data/log.bin", flushing(), 19_990)],
            ..Report::default()
        };
        let mut all = None;
        WritePath::add_to(&mut all, &flushing());
        r.write_path = all;
        let lines = write_lines(&r, 4096);
        assert!(lines[0].starts_with("WRITE PATH"), "{lines:?}");
        assert!(lines[1].contains("dirtied 20,000"), "{}", lines[1]);
        assert!(
            lines[1].contains("written back 20,010 (78.2 MiB)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("write-protect faults 19,990"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("dirty now 3"), "{}", lines[1]);
        assert!(
            lines[2].contains(
                "msync MS_SYNC 20,000 calls in 9000 ms (max 3.0 ms), 20,000 pages written"
            ),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("wrote 1.0 pages each"), "{}", lines[3]);
        assert_eq!(lines.len(), 4, "{lines:?}");
    }

    #[test]
    fn batched_flushes_get_no_amplification_note_and_flusher_only_is_said() {
        let w = WritePath {
            msync_sync_calls: 200,
            msync_pages_written: 200 * 64,
            ..flushing()
        };
        assert!(flush_note(&w).is_none());
        let f = file(
            "/x",
            WritePath {
                written_back_source: "flusher_only",
                ..WritePath::default()
            },
            0,
        );
        assert!(file_line(&f, 4096).0.contains("flusher only"));
    }

    #[test]
    fn no_write_activity_prints_nothing_and_the_summary_says_what_was_not_measured() {
        let r = Report::default();
        assert!(write_lines(&r, 4096).is_empty());
        let s = summary(&r);
        assert_eq!(s[0], "WHAT MMAP COST");
        assert!(s[1].contains("not measured (--latency)"), "{s:?}");
        assert!(s[4].contains("not counted"), "{s:?}");
    }

    #[test]
    fn msync_outside_files_of_interest_gets_its_own_line() {
        let r = Report {
            write_path: Some(WritePath {
                msync_async_calls: 7,
                msync_ns: 1_000,
                ..WritePath::default()
            }),
            ..Report::default()
        };
        let lines = write_lines(&r, 4096);
        assert!(
            lines[1].contains("no file of interest: 7 calls"),
            "{lines:?}"
        );
    }
}
