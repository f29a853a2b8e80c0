//! The leak-or-cache verdict: how much of a memory growth is clean page
//! cache the kernel can (and did) take back, how much is dirty file or shmem
//! memory, and how much is anonymous memory — the only part that can be a
//! leak. Pure: the inputs are the report and memory samples.
use serde::Serialize;

use crate::{
    cgroup::MemoryState,
    model::{FileKind, FileRow, Report},
};

const MIB: f64 = 1024.0 * 1024.0;

/// Anonymous growth below this is noise, not a leak suspect.
const ANON_FLOOR: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The growth is clean file cache: reclaimable (and maybe reclaimed).
    ReclaimableCache,
    /// Anonymous memory grew: the part that can be a leak.
    AnonymousGrowth,
    /// Dirty file pages or shmem dominate: reclaimable only after
    /// writeback (shmem: only with swap).
    DirtyOrShmem,
    /// Nothing grew.
    NoGrowth,
}

/// A file whose pages keep coming back after eviction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Thrashing {
    pub path: String,
    pub refault_pages: u64,
    pub file_pages: Option<u64>,
}

/// One verdict (`"type":"verdict"` in JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// `"cgroup"` or `"process"`.
    pub scope: &'static str,
    pub pid: Option<u32>,
    pub cgroup: Option<String>,
    pub kind: Kind,
    /// Growth of file-backed memory (cgroup `file` / process `RssFile`), bytes.
    pub file_growth_bytes: i64,
    /// Growth of anonymous memory (cgroup `anon` / process `RssAnon`), bytes.
    pub anon_growth_bytes: i64,
    /// Dirty file + shmem bytes at the end (cgroup only).
    pub dirty_shmem_bytes: u64,
    /// File pages the kernel reclaimed from the traced files during the
    /// trace (evictions by memcg, direct, kswapd and other reclaim), bytes.
    pub reclaimed_bytes: u64,
    /// The file most reclaimed, and how much.
    pub top_file: Option<String>,
    pub top_file_reclaimed_bytes: u64,
    pub thrashing: Vec<Thrashing>,
    /// The kernel's `workingset_refault_file` growth (cgroup only): the
    /// authority for refault totals.
    pub kernel_refault_pages: Option<u64>,
    /// One line for humans.
    pub message: String,
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / MIB)
}

fn reclaimed_pages(f: &FileRow) -> u64 {
    ["memcg_reclaim", "direct_reclaim", "kswapd", "other_reclaim"]
        .iter()
        .map(|k| f.evicted_by.get(k).copied().unwrap_or(0))
        .sum()
}

/// Files whose refaults reach half their size (or half of what was added):
/// their pages keep coming back.
pub fn thrashing(files: &[FileRow]) -> Vec<Thrashing> {
    files
        .iter()
        .filter(|f| f.kind == FileKind::File && f.refault_pages >= 256)
        .filter(|f| {
            let base = f.file_pages.filter(|p| *p > 0).unwrap_or(f.pages_added);
            base > 0 && f.refault_pages * 2 >= base
        })
        .map(|f| Thrashing {
            path: f.path.clone(),
            refault_pages: f.refault_pages,
            file_pages: f.file_pages,
        })
        .collect()
}

/// What the growth was made of, and the sentence that says it.
#[allow(clippy::too_many_arguments, reason = "one flat set of measured inputs")]
fn judge(
    scope: &'static str,
    pid: Option<u32>,
    cgroup: Option<String>,
    file_growth: i64,
    anon_growth: i64,
    dirty_shmem: u64,
    files: &[FileRow],
    page_size: u64,
    kept_running: bool,
    under: &str,
) -> Verdict {
    let mut top: Option<(&FileRow, u64)> = None;
    let mut reclaimed = 0;
    for f in files.iter().filter(|f| f.kind == FileKind::File) {
        let r = reclaimed_pages(f);
        reclaimed += r;
        if r > 0 && top.is_none_or(|(_, t)| r > t) {
            top = Some((f, r));
        }
    }
    let reclaimed_bytes = reclaimed * page_size;
    let top_file = top.map(|(f, _)| f.path.clone());
    let top_bytes = top.map(|(_, r)| r * page_size).unwrap_or(0);
    let anon = anon_growth.max(0) as u64;
    let file = file_growth.max(0) as u64;
    let total = anon + file + reclaimed_bytes;
    let name = top_file.clone().unwrap_or_else(|| "its files".into());
    let who = match pid {
        Some(p) => format!("process {p}"),
        None => "the cgroup".into(),
    };
    let running = if kept_running {
        " and the process kept running"
    } else {
        ""
    };
    let (kind, message) = if anon >= ANON_FLOOR && anon * 4 >= total {
        (
            Kind::AnonymousGrowth,
            format!(
                "possible leak: {who}'s anonymous memory grew by {} — not page cache, the kernel cannot \
                 reclaim it without swap (file cache: {} grown, {} reclaimed)",
                mib(anon),
                mib(file),
                mib(reclaimed_bytes)
            ),
        )
    } else if dirty_shmem > 0 && dirty_shmem * 4 >= total.max(1) && dirty_shmem >= ANON_FLOOR {
        (
            Kind::DirtyOrShmem,
            format!(
                "{} of {who}'s memory is dirty file or shmem pages: reclaimable only after writeback \
                 (shmem only with swap)",
                mib(dirty_shmem)
            ),
        )
    } else if reclaimed_bytes > 0 {
        (
            Kind::ReclaimableCache,
            format!(
                "not a leak: the kernel reclaimed {} of {name} {under}{running}",
                mib(top_bytes)
            ),
        )
    } else if file > 0 {
        (
            Kind::ReclaimableCache,
            format!(
                "not a leak: {who}'s growth is {} of clean page cache ({name}) the kernel can reclaim",
                mib(file)
            ),
        )
    } else {
        (
            Kind::NoGrowth,
            format!("no memory growth to explain for {who}"),
        )
    };
    Verdict {
        scope,
        pid,
        cgroup,
        kind,
        file_growth_bytes: file_growth,
        anon_growth_bytes: anon_growth,
        dirty_shmem_bytes: dirty_shmem,
        reclaimed_bytes,
        top_file,
        top_file_reclaimed_bytes: top_bytes,
        thrashing: thrashing(files),
        kernel_refault_pages: None,
        message,
    }
}

/// The verdict for a traced cgroup, from its memory state at the start, at
/// its peak and at the end.
pub fn for_cgroup(
    name: &str,
    start: &MemoryState,
    peak: &MemoryState,
    end: &MemoryState,
    r: &Report,
    page_size: u64,
) -> Verdict {
    // Growth to the peak: what was seen climbing, before reclaim or exit
    // released it.
    let file_growth = peak.file_bytes as i64 - start.file_bytes as i64;
    let anon_growth = peak.anon_bytes as i64 - start.anon_bytes as i64;
    let under = if start.limit_bytes.is_some() {
        "under the cgroup's limit"
    } else {
        "under memory pressure"
    };
    let kept = r
        .processes
        .iter()
        .any(|p| p.alive || p.kernel_source.is_some());
    let mut v = judge(
        "cgroup",
        None,
        Some(name.to_string()),
        file_growth,
        anon_growth,
        end.dirty_bytes + end.shmem_bytes,
        &r.files,
        page_size,
        kept,
        under,
    );
    v.kernel_refault_pages = Some(end.refault_file.saturating_sub(start.refault_file));
    if !v.thrashing.is_empty() {
        v.message.push_str(&format!(
            "; thrashing: {} keeps coming back",
            v.thrashing
                .iter()
                .map(|t| t.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    v
}

/// The verdict for one process, from its RSS growth (first → peak) and
/// the files it mapped. `under` says what forced the reclaim.
pub fn for_process(
    pid: u32,
    file_growth_bytes: i64,
    anon_growth_bytes: i64,
    kept_running: bool,
    r: &Report,
    page_size: u64,
    under: &str,
) -> Verdict {
    let mapped: Vec<FileRow> = r
        .files
        .iter()
        .filter(|f| r.mappings.iter().any(|m| m.pid == pid && m.path == f.path))
        .cloned()
        .collect();
    judge(
        "process",
        Some(pid),
        None,
        file_growth_bytes,
        anon_growth_bytes,
        0,
        &mapped,
        page_size,
        kept_running,
        under,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn file(path: &str, memcg: u64, refault: u64, pages: u64) -> FileRow {
        let mut evicted_by = BTreeMap::new();
        evicted_by.insert("memcg_reclaim", memcg);
        evicted_by.insert("fadvise", 5);
        FileRow {
            path: path.into(),
            kind: FileKind::File,
            pages_added: pages,
            pages_evicted: memcg + 5,
            refault_pages: refault,
            file_pages: Some(pages),
            evicted_by,
            ..FileRow::default()
        }
    }

    fn state(file: u64, anon: u64, limit: Option<u64>) -> MemoryState {
        MemoryState {
            file_bytes: file,
            anon_bytes: anon,
            limit_bytes: limit,
            ..MemoryState::default()
        }
    }

    #[test]
    fn reclaimed_cache_under_a_limit_is_not_a_leak() {
        let r = Report {
            files: vec![
                file("/d/small", 10, 0, 100),
                file("/d/data.bin", 105_472, 0, 262_144),
            ],
            ..Report::default()
        };
        let v = for_cgroup(
            "demo",
            &state(0, 0, Some(256 << 20)),
            &state(250 << 20, 1 << 20, None),
            &state(250 << 20, 1 << 20, None),
            &r,
            4096,
        );
        assert_eq!(v.kind, Kind::ReclaimableCache);
        assert_eq!(v.top_file.as_deref(), Some("/d/data.bin"));
        assert_eq!(v.reclaimed_bytes, (105_472 + 10) * 4096);
        assert_eq!(
            v.message,
            "not a leak: the kernel reclaimed 412 MiB of /d/data.bin under the cgroup's limit"
        );
        assert_eq!(v.kernel_refault_pages, Some(0));
    }

    #[test]
    fn anonymous_growth_without_reclaim_is_flagged() {
        let r = Report {
            files: vec![file("/d/x", 0, 0, 10)],
            ..Report::default()
        };
        let v = for_cgroup(
            "leaky",
            &state(1 << 20, 0, Some(1 << 30)),
            &state(2 << 20, 100 << 20, None),
            &state(2 << 20, 100 << 20, None),
            &r,
            4096,
        );
        assert_eq!(v.kind, Kind::AnonymousGrowth);
        assert!(
            v.message
                .starts_with("possible leak: the cgroup's anonymous memory grew by 100 MiB"),
            "{}",
            v.message
        );
    }

    #[test]
    fn small_anonymous_noise_does_not_flag_a_leak() {
        let r = Report {
            files: vec![file("/d/x", 0, 0, 10)],
            ..Report::default()
        };
        let v = for_process(
            7,
            64 << 20,
            2 << 20,
            true,
            &r,
            4096,
            "under memory pressure",
        );
        assert_eq!(v.kind, Kind::ReclaimableCache);
        assert!(
            v.message.contains("64 MiB of clean page cache"),
            "{}",
            v.message
        );
    }

    #[test]
    fn dirty_or_shmem_and_no_growth() {
        let r = Report::default();
        let mut end = state(0, 0, None);
        end.dirty_bytes = 40 << 20;
        let v = for_cgroup(
            "w",
            &state(0, 0, None),
            &state(40 << 20, 0, None),
            &end,
            &r,
            4096,
        );
        assert_eq!(v.kind, Kind::DirtyOrShmem);
        let v = for_process(1, 0, 0, true, &r, 4096, "under memory pressure");
        assert_eq!(v.kind, Kind::NoGrowth);
    }

    #[test]
    fn thrashing_files_are_named() {
        let files = vec![
            file("/d/hot", 1000, 600, 1000),
            file("/d/cold", 1000, 10, 1000),
            file("/d/tiny", 0, 100, 100),
        ];
        let t = thrashing(&files);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].path, "/d/hot");
        let r = Report {
            files,
            ..Report::default()
        };
        let v = for_cgroup(
            "t",
            &state(0, 0, Some(1)),
            &state(1, 0, None),
            &state(1, 0, None),
            &r,
            4096,
        );
        assert!(v.message.contains("thrashing: /d/hot"), "{}", v.message);
    }
}
