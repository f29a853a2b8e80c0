//! The leak-or-cache verdict, from evidence gathered over the whole trace:
//! memory samples (first, peak, last, every 200 ms), OOM kills with the
//! victim's memory at the kill, evictions by reason, and how each process
//! ended. Anonymous memory is the part that can be a leak; clean page cache
//! is what the kernel takes back. Pure: inputs in, one [`Verdict`] out.
use std::collections::BTreeMap;

use mmtrace_common::reason;
use serde::Serialize;

use crate::{
    collect::cgroup_watch::CgroupWatch,
    model::{FileKind, FileRow, Ledger, OomKill},
    record::CommandExit,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Anonymous growth below this is noise (an interpreter's imports), not a
/// leak suspect.
const ANON_FLOOR: u64 = 16 << 20;
/// Anonymous growth of at least this much is named whatever else grew.
const ANON_ALWAYS: u64 = 64 << 20;

/// The answer (`kind` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The growth is clean page cache: reclaimable, and maybe reclaimed.
    CacheOnly,
    /// Anonymous memory grew (the part that can be a leak); no page cache
    /// was reclaimed.
    AnonymousGrowth,
    /// Anonymous memory grew *and* page cache was reclaimed: the anonymous
    /// part is the suspect, the cache is not the problem.
    Mixed,
    /// The OOM killer ended a traced process.
    OomKilled,
    /// Dirty file pages or shmem dominate: reclaimable only after writeback
    /// (shmem only with swap).
    DirtyOrShmem,
    /// Nothing grew.
    NoGrowth,
}

/// How the traced process (or the cgroup's processes) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Still running when the trace ended.
    Running,
    /// Exited on its own.
    Exited,
    /// Killed by a signal (not the OOM killer).
    Killed,
    /// Killed by the OOM killer.
    OomKilled,
    /// Not known (e.g. a cgroup whose processes all left).
    Unknown,
}

/// What the verdict knows of one scope (the cgroup, or one process).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence {
    /// Who: `None` for the cgroup.
    pub pid: Option<u32>,
    pub cgroup: Option<String>,
    /// First sample → peak, bytes (cgroup `file`/`anon`, process
    /// `RssFile`/`RssAnon`); the peak includes the victim's memory at an
    /// OOM kill, which no sample may have caught.
    pub file_growth: i64,
    pub anon_growth: i64,
    /// Anonymous memory was at its peak in the last sample: still growing.
    pub anon_still_growing: bool,
    /// Dirty file + shmem bytes at the end (cgroup) or shmem RSS (process).
    pub dirty_shmem: u64,
    /// The files this scope touched.
    pub files: Vec<FileRow>,
    pub page_size: u64,
    /// OOM kills of processes of this scope, in order.
    pub oom_kills: Vec<OomKill>,
    pub ending: Option<Ending>,
    /// The scope has a memory limit (memory.max / limit_in_bytes / high).
    pub has_limit: bool,
    /// Growth of the kernel's `workingset_refault_file` (cgroup only).
    pub kernel_refault_pages: Option<u64>,
}

/// A file whose pages keep coming back after reclaim.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Thrashing {
    pub path: String,
    pub refault_pages: u64,
    pub file_pages: Option<u64>,
}

/// One verdict (`"type":"verdict"` in JSON).
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Verdict {
    /// `"cgroup"` or `"process"`.
    pub scope: &'static str,
    pub pid: Option<u32>,
    pub cgroup: Option<String>,
    pub kind: Kind,
    /// A flag on any kind: some file's pages keep coming back after reclaim.
    pub thrashing: bool,
    pub thrashing_files: Vec<Thrashing>,
    /// How the process(es) ended; null when unknown.
    pub ending: Option<Ending>,
    /// Growth of file-backed memory, first sample to peak, bytes.
    pub file_growth_bytes: i64,
    /// Growth of anonymous memory, first sample to peak (the OOM victim's
    /// memory at the kill included), bytes.
    pub anon_growth_bytes: i64,
    /// Dirty file + shmem bytes at the end.
    pub dirty_shmem_bytes: u64,
    /// Page cache of the scope's files reclaimed because memory was short:
    /// a cgroup limit (memcg reclaim), global direct reclaim or kswapd.
    pub reclaimed_bytes: u64,
    /// Page cache reclaimed proactively (memory.reclaim and other cgroup
    /// writes, DAMON, other reclaimers): no shortage implied.
    pub proactive_reclaimed_bytes: u64,
    /// Reclaimed bytes by reason (`memcg_reclaim`, `kswapd`, `damon`, ...).
    pub reclaimed_by: BTreeMap<&'static str, u64>,
    /// The file most reclaimed (either way), and how much.
    pub top_file: Option<String>,
    pub top_file_reclaimed_bytes: u64,
    /// The OOM kill this verdict is about (the last one of the scope).
    pub oom_kill: Option<OomKill>,
    /// The kernel's `workingset_refault_file` growth (cgroup only).
    pub kernel_refault_pages: Option<u64>,
    /// One line for humans.
    pub message: String,
}

/// Whole MiB; under 1 MiB (but not 0) in KiB, so 100 KiB is not "0 MiB".
fn mib(b: u64) -> String {
    if b > 0 && (b as f64) < MIB {
        return format!("{} KiB", b.div_ceil(1024));
    }
    format!("{:.0} MiB", b as f64 / MIB)
}

/// Files whose refaults reach half their size (or half of what was added),
/// at least 256 pages: their pages keep coming back after reclaim.
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

/// Reclaim of the scope's files, split by reason, in pages.
#[derive(Debug, Default)]
struct Reclaim {
    by: BTreeMap<&'static str, u64>,
    pressure: u64,
    proactive: u64,
    top: Option<(String, u64)>,
}

fn reclaim(files: &[FileRow]) -> Reclaim {
    let mut r = Reclaim::default();
    for f in files.iter().filter(|f| f.kind == FileKind::File) {
        let mut of_file = 0;
        for (i, name) in reason::NAMES.iter().enumerate() {
            let n = f.evicted_by.get(name).copied().unwrap_or(0);
            if n == 0 || !reason::is_reclaim(i) {
                continue;
            }
            *r.by.entry(*name).or_default() += n;
            if reason::is_pressure(i) {
                r.pressure += n;
            } else {
                r.proactive += n;
            }
            of_file += n;
        }
        if of_file > 0 && r.top.as_ref().is_none_or(|(_, t)| of_file > *t) {
            r.top = Some((f.path.clone(), of_file));
        }
    }
    r
}

/// "under the cgroup's limit", "by proactive reclaim (DAMON)", ...: what
/// made the kernel reclaim, from the eviction reasons alone.
fn how(r: &Reclaim, has_limit: bool, page_size: u64) -> String {
    let get = |k: &str| r.by.get(k).copied().unwrap_or(0);
    let mut parts = Vec::new();
    let memcg = get("memcg_reclaim");
    let global = get("direct_reclaim") + get("kswapd");
    if memcg > 0 {
        parts.push((
            memcg,
            if has_limit {
                "under the cgroup's limit"
            } else {
                "under a cgroup's limit"
            }
            .to_string(),
        ));
    }
    if global > 0 {
        parts.push((global, "under global memory pressure".to_string()));
    }
    let mut who = Vec::new();
    for (k, label) in [
        ("damon", "DAMON"),
        ("proactive", "memory.reclaim or a lowered limit"),
        ("other_reclaim", "another reclaimer"),
    ] {
        if get(k) > 0 {
            who.push(label);
        }
    }
    if r.proactive > 0 {
        parts.push((
            r.proactive,
            format!("by proactive reclaim ({}), not a shortage", who.join(", ")),
        ));
    }
    if parts.len() == 1 {
        return parts.remove(0).1;
    }
    parts
        .iter()
        .map(|(n, s)| format!("{} {s}", mib(n * page_size)))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn significant_anon(anon: u64, file: u64) -> bool {
    anon >= ANON_FLOOR && (anon >= ANON_ALWAYS || anon * 4 >= anon + file)
}

/// Judges one scope.
pub fn judge(e: &Evidence) -> Verdict {
    let ps = e.page_size.max(1);
    let r = reclaim(&e.files);
    let anon = e.anon_growth.max(0) as u64;
    let file = e.file_growth.max(0) as u64;
    let reclaimed = (r.pressure + r.proactive) * ps;
    let (top_name, top_bytes) = match &r.top {
        Some((p, n)) => (Some(p.clone()), n * ps),
        None => (None, 0),
    };
    let name = top_name.clone().unwrap_or_else(|| "its files".into());
    let who = match e.pid {
        Some(p) => format!("process {p}"),
        None => "the cgroup".into(),
    };
    let cache_note = if reclaimed > 0 {
        format!(
            "; the {} of {name} that the kernel reclaimed {} were page cache and are not the problem",
            mib(top_bytes),
            how(&r, e.has_limit, ps)
        )
    } else {
        String::new()
    };
    let growing = if e.anon_still_growing {
        " and was still growing when the trace ended"
    } else {
        ""
    };
    let oom = e.oom_kills.last();
    let (kind, message) = if let Some(k) = oom {
        let at_kill = format!(
            "anon {}, file {}, shmem {} at the kill",
            mib(k.anon_rss_bytes),
            mib(k.file_rss_bytes),
            mib(k.shmem_rss_bytes)
        );
        let victim = format!("pid {} ({})", k.pid, k.comm);
        let msg = if k.anon_rss_bytes >= k.shmem_rss_bytes && k.anon_rss_bytes >= ANON_FLOOR {
            format!(
                "leak: anonymous memory grew by {} until the OOM killer ended {victim} ({at_kill}){cache_note}",
                mib(anon),
            )
        } else if k.shmem_rss_bytes > k.anon_rss_bytes {
            format!(
                "the OOM killer ended {victim} ({at_kill}): shmem, which the kernel cannot reclaim without swap{cache_note}"
            )
        } else {
            format!("the OOM killer ended {victim} ({at_kill}){cache_note}")
        };
        (Kind::OomKilled, msg)
    } else if significant_anon(anon, file) {
        let base = format!(
            "possible leak: {who}'s anonymous memory grew by {}{growing} — not page cache: the kernel cannot reclaim it without swap",
            mib(anon)
        );
        // Mixed only when the cache was squeezed by pressure; pages taken by
        // proactive reclaim (DAMON in the background, memory.reclaim) are
        // mentioned but say nothing about a shortage.
        if r.pressure > 0 {
            (Kind::Mixed, format!("{base}{cache_note}"))
        } else {
            (Kind::AnonymousGrowth, format!("{base}{cache_note}"))
        }
    } else if e.dirty_shmem >= ANON_FLOOR && e.dirty_shmem * 4 >= (anon + file).max(1) {
        (
            Kind::DirtyOrShmem,
            format!(
                "{} of {who}'s memory is dirty file or shmem pages: reclaimable only after writeback \
                 (shmem only with swap)",
                mib(e.dirty_shmem)
            ),
        )
    } else if reclaimed > 0 || file > 0 {
        let ending = match e.ending {
            Some(Ending::Running) => " and the process kept running",
            Some(Ending::Killed) => "; the process was killed by a signal",
            _ => "",
        };
        let msg = if reclaimed > 0 {
            format!(
                "not a leak: the kernel reclaimed {} of {name} {}{ending}",
                mib(top_bytes),
                how(&r, e.has_limit, ps)
            )
        } else {
            format!(
                "not a leak: {who}'s growth is {} of clean page cache ({name}) the kernel can reclaim{ending}",
                mib(file)
            )
        };
        (Kind::CacheOnly, msg)
    } else {
        (
            Kind::NoGrowth,
            format!("no memory growth to explain for {who}"),
        )
    };
    let thrash = thrashing(&e.files);
    let mut message = message;
    if !thrash.is_empty() {
        message.push_str(&format!(
            "; thrashing: {} keeps coming back after reclaim",
            thrash
                .iter()
                .map(|t| t.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Verdict {
        scope: if e.pid.is_some() { "process" } else { "cgroup" },
        pid: e.pid,
        cgroup: e.cgroup.clone(),
        kind,
        thrashing: !thrash.is_empty(),
        thrashing_files: thrash,
        ending: e.ending,
        file_growth_bytes: e.file_growth,
        anon_growth_bytes: e.anon_growth,
        dirty_shmem_bytes: e.dirty_shmem,
        reclaimed_bytes: r.pressure * ps,
        proactive_reclaimed_bytes: r.proactive * ps,
        reclaimed_by: r.by.iter().map(|(k, v)| (*k, v * ps)).collect(),
        top_file: top_name,
        top_file_reclaimed_bytes: top_bytes,
        oom_kill: oom.cloned(),
        kernel_refault_pages: e.kernel_refault_pages,
        message,
    }
}

/// How process `pid` ended, from what was seen.
fn ending_of(ledger: &Ledger, pid: u32, cmd: Option<&CommandExit>) -> Ending {
    if ledger.oom_kills.iter().any(|k| k.pid == pid) {
        return Ending::OomKilled;
    }
    match cmd.filter(|c| c.pid == pid) {
        Some(c) if c.signal.is_some() => Ending::Killed,
        Some(_) => Ending::Exited,
        None if ledger.procs.get(&pid).is_some_and(|p| p.alive) => Ending::Running,
        None => Ending::Exited,
    }
}

/// The verdicts of a trace: the traced cgroup's (when it has memory accounting), then
/// each target process whose memory was sampled.
pub fn assess(
    ledger: &Ledger,
    r: &crate::model::Report,
    watch: Option<&CgroupWatch>,
    cmd: Option<&CommandExit>,
    page_size: u64,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let has_limit = watch
        .and_then(|w| w.start.as_ref())
        .is_some_and(|s| s.limit_bytes.is_some() || s.high_bytes.is_some());
    if let Some(w) = watch
        && let (Some(s), Some(p), Some(l)) = (&w.start, &w.peak, &w.last)
    {
        let kills: Vec<OomKill> = ledger.oom_kills.clone();
        let victim_anon = kills.iter().map(|k| k.anon_rss_bytes).max().unwrap_or(0);
        let anon_growth = (p.anon_bytes as i64 - s.anon_bytes as i64).max(victim_anon as i64);
        let ending = if !kills.is_empty() {
            Ending::OomKilled
        } else if let Some(c) = cmd {
            ending_of(ledger, c.pid, cmd)
        } else if ledger.procs.values().any(|p| p.alive) {
            Ending::Running
        } else {
            Ending::Unknown
        };
        out.push(judge(&Evidence {
            pid: None,
            cgroup: Some(w.cg.path.display().to_string()),
            file_growth: p.file_bytes as i64 - s.file_bytes as i64,
            anon_growth,
            anon_still_growing: l.anon_bytes + (1 << 20) >= p.anon_bytes
                && p.anon_bytes > s.anon_bytes,
            dirty_shmem: l.dirty_bytes + l.shmem_bytes,
            files: r.files.clone(),
            page_size,
            oom_kills: kills,
            ending: Some(ending),
            has_limit,
            kernel_refault_pages: Some(l.refault_file.saturating_sub(s.refault_file)),
        }));
    }
    for (pid, p) in ledger.procs.iter().filter(|(_, p)| p.target) {
        let (Some(first), Some(peak), Some(last)) = (p.first_rss, p.peak_rss, p.last_rss) else {
            continue;
        };
        let kills: Vec<OomKill> = ledger
            .oom_kills
            .iter()
            .filter(|k| k.pid == *pid)
            .cloned()
            .collect();
        let at_kill = kills
            .iter()
            .map(|k| k.anon_rss_bytes / 1024)
            .max()
            .unwrap_or(0);
        let peak_anon = peak.anon_kib.max(at_kill);
        let files = r
            .files
            .iter()
            .filter(|f| r.mappings.iter().any(|m| m.pid == *pid && m.path == f.path))
            .cloned()
            .collect();
        out.push(judge(&Evidence {
            pid: Some(*pid),
            cgroup: None,
            file_growth: (peak.file_kib as i64 - first.file_kib as i64) * 1024,
            anon_growth: (peak_anon as i64 - first.anon_kib as i64) * 1024,
            anon_still_growing: p.alive
                && last.anon_kib + 1024 >= peak.anon_kib
                && peak.anon_kib > first.anon_kib,
            dirty_shmem: peak.shmem_kib * 1024,
            files,
            page_size,
            oom_kills: kills,
            ending: Some(ending_of(ledger, *pid, cmd)),
            has_limit,
            kernel_refault_pages: None,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_under_a_mib_are_not_rounded_to_zero() {
        assert_eq!(mib(25 * 4096), "100 KiB");
        assert_eq!(mib(0), "0 MiB");
        assert_eq!(mib(412 << 20), "412 MiB");
    }

    const PS: u64 = 4096;

    fn file(path: &str, reasons: &[(&'static str, u64)], refault: u64, pages: u64) -> FileRow {
        let mut evicted_by: BTreeMap<&'static str, u64> =
            reason::NAMES.iter().map(|n| (*n, 0)).collect();
        for (k, v) in reasons {
            evicted_by.insert(k, *v);
        }
        FileRow {
            path: path.into(),
            kind: FileKind::File,
            pages_added: pages,
            pages_evicted: reasons.iter().map(|r| r.1).sum(),
            refault_pages: refault,
            file_pages: Some(pages),
            evicted_by,
            ..FileRow::default()
        }
    }

    fn ev(file_growth: i64, anon_growth: i64, files: Vec<FileRow>) -> Evidence {
        Evidence {
            cgroup: Some("/sys/fs/cgroup/memory/t".into()),
            file_growth,
            anon_growth,
            files,
            page_size: PS,
            has_limit: true,
            ending: Some(Ending::Running),
            ..Evidence::default()
        }
    }

    fn victim(anon_mib: u64, file_mib: u64, shmem_mib: u64) -> OomKill {
        OomKill {
            pid: 42,
            comm: "python3".into(),
            anon_rss_bytes: anon_mib << 20,
            file_rss_bytes: file_mib << 20,
            shmem_rss_bytes: shmem_mib << 20,
            total_vm_bytes: 1 << 30,
            oom_score_adj: 0,
            in_scope: true,
            cgroup: Some("/mmt".into()),
            elapsed_s: 1.0,
        }
    }

    #[test]
    fn cache_reclaimed_under_a_limit_is_cache_only() {
        let e = ev(
            250 << 20,
            1 << 20,
            vec![
                file("/d/small", &[("memcg_reclaim", 10), ("fadvise", 5)], 0, 100),
                file("/d/data.bin", &[("memcg_reclaim", 105_472)], 0, 262_144),
            ],
        );
        let v = judge(&e);
        assert_eq!(v.kind, Kind::CacheOnly);
        assert!(!v.thrashing);
        assert_eq!(v.top_file.as_deref(), Some("/d/data.bin"));
        assert_eq!(
            v.reclaimed_bytes,
            (105_472 + 10) * PS,
            "fadvise is not reclaim"
        );
        assert_eq!(v.proactive_reclaimed_bytes, 0);
        assert_eq!(
            v.message,
            "not a leak: the kernel reclaimed 412 MiB of /d/data.bin under the cgroup's limit \
             and the process kept running"
        );
    }

    #[test]
    fn background_proactive_reclaim_does_not_make_a_leak_mixed() {
        // DAMON took one page of libc while the cgroup's anonymous memory
        // grew by 129 MiB (seen in a clean-clone CI run).
        let e = ev(
            130 << 20,
            129 << 20,
            vec![file("/usr/lib/libc.so.6", &[("damon", 1)], 0, 512)],
        );
        let v = judge(&e);
        assert_eq!(v.kind, Kind::AnonymousGrowth, "{}", v.message);
        assert!(
            v.message.contains("4 KiB of /usr/lib/libc.so.6"),
            "{}",
            v.message
        );
    }

    #[test]
    fn the_mixed_case_names_the_anonymous_growth_first() {
        let e = ev(
            256 << 20,
            250 << 20,
            vec![file(
                "/d/data.txt",
                &[("memcg_reclaim", 162_816)],
                0,
                131_072,
            )],
        );
        let v = judge(&e);
        assert_eq!(v.kind, Kind::Mixed);
        assert!(
            v.message.starts_with(
                "possible leak: the cgroup's anonymous memory grew by 250 MiB — not page cache"
            ),
            "{}",
            v.message
        );
        assert!(
            v.message.ends_with(
                "the 636 MiB of /d/data.txt that the kernel reclaimed under the cgroup's limit \
                 were page cache and are not the problem"
            ),
            "{}",
            v.message
        );
        assert!(!v.message.contains("kept running"));
    }

    #[test]
    fn an_oom_kill_is_a_leak_verdict_with_the_victim_and_never_kept_running() {
        let mut e = ev(
            256 << 20,
            250 << 20,
            vec![file(
                "/d/data.txt",
                &[("memcg_reclaim", 162_816)],
                0,
                131_072,
            )],
        );
        e.ending = Some(Ending::OomKilled);
        e.oom_kills = vec![victim(249, 30, 0)];
        let v = judge(&e);
        assert_eq!(v.kind, Kind::OomKilled);
        assert_eq!(v.ending, Some(Ending::OomKilled));
        assert_eq!(v.oom_kill.as_ref().map(|k| k.pid), Some(42));
        assert!(
            v.message.starts_with(
                "leak: anonymous memory grew by 250 MiB until the OOM killer ended pid 42 (python3) \
                 (anon 249 MiB, file 30 MiB, shmem 0 MiB at the kill); the 636 MiB of /d/data.txt"
            ),
            "{}",
            v.message
        );
        assert!(!v.message.contains("kept running"), "{}", v.message);
    }

    #[test]
    fn a_shmem_victim_is_not_called_an_anonymous_leak() {
        let mut e = ev(0, 0, vec![]);
        e.oom_kills = vec![victim(2, 0, 200)];
        let v = judge(&e);
        assert_eq!(v.kind, Kind::OomKilled);
        assert!(v.message.contains("shmem"), "{}", v.message);
        assert!(!v.message.starts_with("leak"), "{}", v.message);
    }

    #[test]
    fn anonymous_growth_without_reclaim() {
        let mut e = ev(1 << 20, 100 << 20, vec![file("/d/x", &[], 0, 10)]);
        e.anon_still_growing = true;
        let v = judge(&e);
        assert_eq!(v.kind, Kind::AnonymousGrowth);
        assert!(
            v.message.starts_with(
                "possible leak: the cgroup's anonymous memory grew by 100 MiB and was still growing"
            ),
            "{}",
            v.message
        );
    }

    #[test]
    fn small_anonymous_noise_beside_a_big_file_is_not_a_suspect() {
        let e = ev(
            900 << 20,
            20 << 20,
            vec![file("/d/big", &[("memcg_reclaim", 1000)], 0, 1000)],
        );
        assert_eq!(judge(&e).kind, Kind::CacheOnly);
    }

    #[test]
    fn proactive_reclaim_is_never_called_pressure() {
        let e = ev(
            2 << 20,
            0,
            vec![file("/usr/lib/libpython.so", &[("damon", 512)], 0, 4096)],
        );
        let v = judge(&e);
        assert_eq!(v.kind, Kind::CacheOnly);
        assert_eq!(v.reclaimed_bytes, 0);
        assert_eq!(v.proactive_reclaimed_bytes, 512 * PS);
        assert!(
            v.message
                .contains("by proactive reclaim (DAMON), not a shortage")
        );
        assert!(!v.message.contains("pressure"), "{}", v.message);
        assert!(!v.message.contains("limit"), "{}", v.message);
    }

    #[test]
    fn both_kinds_of_reclaim_are_split() {
        let e = ev(
            2 << 20,
            0,
            vec![file(
                "/d/f",
                &[("memcg_reclaim", 256), ("proactive", 512)],
                0,
                4096,
            )],
        );
        let v = judge(&e);
        assert!(
            v.message.contains(
                "1 MiB under the cgroup's limit and 2 MiB by proactive reclaim \
                 (memory.reclaim or a lowered limit), not a shortage"
            ),
            "{}",
            v.message
        );
    }

    #[test]
    fn dirty_or_shmem_and_no_growth() {
        let mut e = ev(40 << 20, 0, vec![]);
        e.dirty_shmem = 40 << 20;
        assert_eq!(judge(&e).kind, Kind::DirtyOrShmem);
        let e = ev(0, 0, vec![]);
        let v = judge(&e);
        assert_eq!(v.kind, Kind::NoGrowth);
        assert_eq!(v.message, "no memory growth to explain for the cgroup");
    }

    #[test]
    fn thrashing_is_a_flag_on_any_kind() {
        let files = vec![
            file("/d/hot", &[("memcg_reclaim", 1000)], 600, 1000),
            file("/d/cold", &[("memcg_reclaim", 1000)], 10, 1000),
            file("/d/tiny", &[], 100, 100),
        ];
        let t = thrashing(&files);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].path, "/d/hot");
        let v = judge(&ev(1 << 20, 0, files.clone()));
        assert_eq!(v.kind, Kind::CacheOnly);
        assert!(v.thrashing);
        assert!(v.message.contains("thrashing: /d/hot"), "{}", v.message);
        let v = judge(&ev(1 << 20, 200 << 20, files));
        assert_eq!(v.kind, Kind::Mixed);
        assert!(v.thrashing);
    }

    #[test]
    fn a_killed_process_did_not_keep_running() {
        let mut e = ev(10 << 20, 0, vec![file("/d/f", &[("kswapd", 256)], 0, 4096)]);
        e.ending = Some(Ending::Killed);
        let v = judge(&e);
        assert!(
            v.message.contains("under global memory pressure"),
            "{}",
            v.message
        );
        assert!(
            v.message.ends_with("the process was killed by a signal"),
            "{}",
            v.message
        );
    }
}
