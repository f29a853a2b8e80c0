//! `/metrics`: cumulative records folded into counters that never go back,
//! then rendered with the official `prometheus-client` crate (Prometheus
//! text 0.0.4 by default, OpenMetrics when asked).
//!
//! Records carry cumulative per-process and per-file rows; this keeps the
//! last value seen of each row and adds only the growth to the exported
//! series, so rows that leave a record (exited processes folded away, files
//! that drop out of the top N) never make a sum shrink.
use std::collections::{BTreeMap, HashMap};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{
    collect::loader::ProgramStats,
    devnum::Dev,
    model::{FileKind, FileRow, Report},
    record::{CgroupRecord, CgroupRow},
};

/// `--serve-files` default and hard cap.
pub const DEFAULT_FILES: usize = 50;
pub const MAX_FILES: usize = 500;
/// A file series (or a process series of processes that all exited) idle
/// this long stops being exported (it goes stale in Prometheus).
pub const IDLE_S: f64 = 600.0;
/// Cgroup labels at most (then `cgroup="other"`).
pub const MAX_CGROUPS: usize = 200;
/// Per-process series kept at most (label sets of cgroup × comm).
const MAX_PROCESS_SERIES: usize = 1000;
/// The label of everything outside the top N files.
pub const OTHER: &str = "other";

/// The counters of one file row the metrics export.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileCounts {
    pub minor: u64,
    pub major: u64,
    pub added: u64,
    pub evicted_by: BTreeMap<&'static str, u64>,
}

impl FileCounts {
    fn of(f: &FileRow) -> Self {
        Self {
            minor: f.minor_faults,
            major: f.major_faults,
            added: f.pages_added,
            evicted_by: f.evicted_by.clone(),
        }
    }
    /// Growth from `prev` to `self`, field by field (a field that shrank
    /// grew by 0).
    fn growth(&self, prev: &Self) -> Self {
        let mut evicted_by = BTreeMap::new();
        for (k, v) in &self.evicted_by {
            let p = prev.evicted_by.get(k).copied().unwrap_or(0);
            evicted_by.insert(*k, v.saturating_sub(p));
        }
        Self {
            minor: self.minor.saturating_sub(prev.minor),
            major: self.major.saturating_sub(prev.major),
            added: self.added.saturating_sub(prev.added),
            evicted_by,
        }
    }
    fn add(&mut self, d: &Self) {
        self.minor += d.minor;
        self.major += d.major;
        self.added += d.added;
        for (k, v) in &d.evicted_by {
            *self.evicted_by.entry(k).or_default() += v;
        }
    }
    fn is_zero(&self) -> bool {
        self.minor == 0
            && self.major == 0
            && self.added == 0
            && self.evicted_by.values().all(|v| *v == 0)
    }
}

/// One file as the metrics see it.
#[derive(Clone, Debug)]
struct FileAcc {
    label: String,
    /// Its cumulative counters in the last record.
    last: FileCounts,
    /// Growth that went to `file="other"` while it had no series of its own
    /// (its series shows `last - base`, so the sum over files stays right).
    base: FileCounts,
    admitted: bool,
    resident_bytes: Option<u64>,
    /// `elapsed_s` of its last growth.
    changed_s: f64,
    /// Present in the last record.
    present: bool,
}

/// The per-cgroup counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupCounts {
    pub minor: u64,
    pub major: u64,
    pub added: u64,
    pub evicted_by: BTreeMap<&'static str, u64>,
    pub refault: u64,
}

/// The per-cgroup gauges (memory from the traced cgroup's memory files,
/// RSS summed over its processes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupGauges {
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub file: Option<u64>,
    pub anon: Option<u64>,
    pub rss_file: Option<u64>,
    pub rss_anon: Option<u64>,
    pub psi_some_us: Option<u64>,
    pub psi_full_us: Option<u64>,
}

#[derive(Clone, Debug)]
struct ProcLast {
    cgroup: String,
    comm: String,
    minor: u64,
    major: u64,
    seen_s: f64,
}

#[derive(Clone, Debug, Default)]
struct ProcSeries {
    minor: u64,
    major: u64,
    changed_s: f64,
}

/// Everything `/metrics` shows, kept up to date record by record.
#[derive(Debug)]
pub struct Accum {
    files_cap: usize,
    page_size: u64,
    files: HashMap<(Option<Dev>, u64, String), FileAcc>,
    other: FileCounts,
    /// The records' own `others` row (host-wide: files beyond the busiest
    /// 500) as last seen; its growth goes to `file="other"`.
    others_row: FileCounts,
    other_resident: Option<u64>,
    cgroups: BTreeMap<String, CgroupCounts>,
    gauges: BTreeMap<String, CgroupGauges>,
    procs: HashMap<u32, ProcLast>,
    proc_series: BTreeMap<(String, String), ProcSeries>,
    /// Per cgroup, the last sum of its rows' faults.
    cgroup_rows: HashMap<String, (u64, u64)>,
    /// The file rows' sums in the last record, per scope label.
    cgroup_file_totals: HashMap<String, FileCounts>,
    cgroup_refaults: HashMap<String, u64>,
    events_dropped: u64,
    lost_faults: u64,
    /// What mmap cost (the records' `mmap_cost`), never going back.
    cost: crate::model::MmapCost,
    bpf: Vec<ProgramStats>,
    version: String,
    kernel: String,
}

/// What one interval (or the summary) brings.
pub struct Input<'a> {
    pub elapsed_s: f64,
    pub report: &'a Report,
    pub cgroups: &'a [CgroupRow],
    pub cgroup: Option<&'a CgroupRecord>,
    /// The traced cgroup's label (its path inside its hierarchy).
    pub cgroup_label: Option<&'a str>,
    pub events_dropped: Option<u64>,
    pub all: bool,
}

impl Accum {
    pub fn new(files_cap: usize) -> Self {
        Self {
            files_cap: files_cap.min(MAX_FILES),
            page_size: 4096,
            files: HashMap::new(),
            other: FileCounts::default(),
            others_row: FileCounts::default(),
            other_resident: None,
            cgroups: BTreeMap::new(),
            gauges: BTreeMap::new(),
            procs: HashMap::new(),
            proc_series: BTreeMap::new(),
            cgroup_rows: HashMap::new(),
            cgroup_file_totals: HashMap::new(),
            cgroup_refaults: HashMap::new(),
            events_dropped: 0,
            lost_faults: 0,
            cost: crate::model::MmapCost::default(),
            bpf: Vec::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: String::new(),
        }
    }

    pub fn set_meta(&mut self, page_size: u64, version: &str, kernel: &str) {
        self.page_size = page_size.max(1);
        self.version = version.into();
        self.kernel = kernel.into();
    }

    pub fn set_bpf_stats(&mut self, s: &[ProgramStats]) {
        self.bpf = s.to_vec();
    }

    /// Folds one cumulative record in.
    pub fn apply(&mut self, i: &Input<'_>) {
        // The label of the scope: the traced cgroup; else the cgroup of the
        // first process that has one.
        let scope = i
            .cgroup_label
            .map(str::to_string)
            .or_else(|| i.report.processes.iter().find_map(|p| p.cgroup.clone()))
            .unwrap_or_else(|| "(unknown)".into());
        self.lost_faults = self.lost_faults.max(i.report.lost_faults);
        if let Some(d) = i.events_dropped {
            self.events_dropped = self.events_dropped.max(d);
        }
        self.apply_cost(&i.report.mmap_cost);
        self.apply_processes(i, &scope);
        self.apply_files(i, &scope);
        self.apply_gauges(i, &scope);
    }

    /// The cost counters: each the largest value seen (rows folded or
    /// bounded away never make them go back).
    fn apply_cost(&mut self, c: &crate::model::MmapCost) {
        let m = &mut self.cost;
        for (a, b) in [
            (&mut m.wp_shared_faults, c.wp_shared_faults),
            (&mut m.dirtied_pages, c.dirtied_pages),
            (&mut m.written_back_pages, c.written_back_pages),
            (&mut m.writeback_waits, c.writeback_waits),
            (&mut m.msync_sync_calls, c.msync_sync_calls),
            (&mut m.msync_async_calls, c.msync_async_calls),
            (&mut m.msync_ns, c.msync_ns),
            (&mut m.signals, c.signals),
        ] {
            *a = (*a).max(b);
        }
        for (a, b) in [
            (&mut m.tlb_remote_shootdowns, c.tlb_remote_shootdowns),
            (
                &mut m.tlb_remote_flush_requests,
                c.tlb_remote_flush_requests,
            ),
            (&mut m.fault_stall_ns, c.fault_stall_ns),
            (&mut m.major_fault_stall_ns, c.major_fault_stall_ns),
        ] {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0).max(b));
            }
        }
    }

    fn register_cost(&self, reg: &mut Registry) {
        let c = &self.cost;
        let one = |reg: &mut Registry, name: &str, help: &str, v: u64| {
            let x: Counter = Counter::default();
            x.inc_by(v);
            reg.register(name, help, x);
        };
        one(
            reg,
            "mmtrace_write_protect_faults",
            "Write faults on clean, write-protected pages of shared file mappings (re-dirtying after writeback)",
            c.wp_shared_faults,
        );
        one(
            reg,
            "mmtrace_pages_dirtied",
            "Pages of the traced files that went from clean to dirty",
            c.dirtied_pages,
        );
        one(
            reg,
            "mmtrace_pages_written_back",
            "Pages of the traced files written back (ext4/iomap: flusher, fsync and msync; elsewhere the flusher only)",
            c.written_back_pages,
        );
        one(
            reg,
            "mmtrace_writeback_waits",
            "Times a traced task waited for a page of a traced file under writeback",
            c.writeback_waits,
        );
        let calls = Family::<Labels, Counter>::default();
        calls
            .get_or_create(&labels(&[("flags", "MS_SYNC")]))
            .inc_by(c.msync_sync_calls);
        calls
            .get_or_create(&labels(&[("flags", "MS_ASYNC")]))
            .inc_by(c.msync_async_calls);
        reg.register(
            "mmtrace_msync_calls",
            "msync calls of traced threads (MS_ASYNC does nothing on Linux)",
            calls,
        );
        let secs: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        secs.inc_by(c.msync_ns as f64 / 1e9);
        reg.register(
            "mmtrace_msync_seconds",
            "Time traced threads spent in msync",
            secs,
        );
        one(
            reg,
            "mmtrace_signals",
            "Kernel-generated SIGBUS/SIGSEGV of traced processes",
            c.signals,
        );
        if let (Some(s), Some(q)) = (c.tlb_remote_shootdowns, c.tlb_remote_flush_requests) {
            one(
                reg,
                "mmtrace_tlb_remote_shootdowns",
                "TLB flushes traced processes' threads did because another CPU asked (per process, not per file)",
                s,
            );
            one(
                reg,
                "mmtrace_tlb_remote_flush_requests",
                "Times traced processes asked other CPUs to flush (logged even when no interrupt was sent)",
                q,
            );
        }
        if let (Some(all), Some(major)) = (c.fault_stall_ns, c.major_fault_stall_ns) {
            let f = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
            f.get_or_create(&labels(&[("kind", "minor")]))
                .inc_by(all.saturating_sub(major) as f64 / 1e9);
            f.get_or_create(&labels(&[("kind", "major")]))
                .inc_by(major as f64 / 1e9);
            reg.register(
                "mmtrace_fault_stall_seconds",
                "--latency: time from fault entry to the kernel's accounting of the fault, summed over traced faults",
                f,
            );
        }
    }

    /// Past [`MAX_CGROUPS`] labels, a new cgroup counts under
    /// `cgroup="other"` (cgroups keep their label once they have one).
    fn cap_cgroup(&self, label: String) -> String {
        if self.cgroups.len() < MAX_CGROUPS
            || self.cgroups.contains_key(&label)
            || self.gauges.contains_key(&label)
        {
            label
        } else {
            OTHER.into()
        }
    }

    fn apply_processes(&mut self, i: &Input<'_>, scope: &str) {
        let now = i.elapsed_s;
        let mut rss: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        // Per cgroup, the sum of its rows: processes plus the `exited (N
        // processes)` row that processes are folded into a while after
        // they exit (folding moves counts between rows, the sum only
        // grows). Under --all the per-cgroup rows are those sums already.
        let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        // Under --all a process whose cgroup was never read is
        // "(unknown)", as in the per-cgroup rows; elsewhere it is in the
        // traced scope.
        let label_of = |p: &crate::model::ProcessRow| {
            p.cgroup
                .clone()
                .unwrap_or_else(|| if i.all { "(unknown)" } else { scope }.to_string())
        };
        if i.all {
            for row in i.cgroups {
                let s = sums.entry(row.cgroup.clone()).or_default();
                s.0 += row.minor_faults;
                s.1 += row.major_faults;
                let r = rss.entry(row.cgroup.clone()).or_default();
                r.0 += row.rss_file_pages;
                r.1 += row.rss_anon_pages;
            }
        } else {
            for p in &i.report.processes {
                let s = sums.entry(label_of(p)).or_default();
                s.0 += p.minor_faults;
                s.1 += p.major_faults;
                if p.alive {
                    let r = rss.entry(label_of(p)).or_default();
                    r.0 += p.rss_file_pages.unwrap_or(0);
                    r.1 += p.rss_anon_pages.unwrap_or(0);
                }
            }
        }
        for (raw, (minor, major)) in sums {
            let last = self.cgroup_rows.entry(raw.clone()).or_default();
            let (dmin, dmaj) = (minor.saturating_sub(last.0), major.saturating_sub(last.1));
            *last = (last.0.max(minor), last.1.max(major));
            let label = self.cap_cgroup(raw);
            let c = self.cgroups.entry(label).or_default();
            c.minor += dmin;
            c.major += dmaj;
        }
        // Per command name: each process's growth while it has a row of
        // its own. Rows with pid 0 (the `exited` rows, and the `others`
        // row of --all) mix processes and are left out: a process's counts
        // stay in its comm's series after it is folded away.
        for p in i.report.processes.iter().filter(|p| p.pid != 0) {
            let cgroup = self.cap_cgroup(label_of(p));
            // A pid whose counts went back is a new process (a recycled
            // pid): all of its count is growth.
            let grow = |cur: u64, last: u64| if cur >= last { cur - last } else { cur };
            let (dmin, dmaj) = match self.procs.get(&p.pid) {
                Some(l) => (grow(p.minor_faults, l.minor), grow(p.major_faults, l.major)),
                None => (p.minor_faults, p.major_faults),
            };
            self.procs.insert(
                p.pid,
                ProcLast {
                    cgroup: cgroup.clone(),
                    comm: p.comm.clone(),
                    minor: p.minor_faults,
                    major: p.major_faults,
                    seen_s: now,
                },
            );
            let key = (cgroup, p.comm.clone());
            if self.proc_series.len() < MAX_PROCESS_SERIES || self.proc_series.contains_key(&key) {
                let s = self.proc_series.entry(key).or_default();
                s.minor += dmin;
                s.major += dmaj;
                if dmin + dmaj > 0 || p.alive {
                    s.changed_s = now;
                }
            }
        }
        let rss: BTreeMap<String, (u64, u64)> =
            rss.into_iter().fold(BTreeMap::new(), |mut m, (raw, v)| {
                let e = m.entry(self.cap_cgroup(raw)).or_insert((0, 0));
                e.0 += v.0;
                e.1 += v.1;
                m
            });
        for (cg, (file, anon)) in rss {
            let g = self.gauges.entry(cg).or_default();
            g.rss_file = Some(file * self.page_size);
            g.rss_anon = Some(anon * self.page_size);
        }
        // Processes gone from the records for a while: their growth is in
        // the series already; forget their last values.
        self.procs.retain(|_, l| now - l.seen_s < IDLE_S);
        let live: std::collections::HashSet<(&str, &str)> = self
            .procs
            .values()
            .map(|l| (l.cgroup.as_str(), l.comm.as_str()))
            .collect();
        let idle: Vec<_> = self
            .proc_series
            .iter()
            .filter(|(k, s)| {
                now - s.changed_s >= IDLE_S && !live.contains(&(k.0.as_str(), k.1.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle {
            self.proc_series.remove(&k);
        }
    }

    fn apply_files(&mut self, i: &Input<'_>, scope: &str) {
        let now = i.elapsed_s;
        for f in self.files.values_mut() {
            f.present = false;
        }
        if let Some(o) = i.report.files.iter().find(|f| f.kind == FileKind::Others) {
            let cur = FileCounts::of(o);
            self.other.add(&cur.growth(&self.others_row));
            self.others_row = cur;
        }
        let mut rows: Vec<&FileRow> = i
            .report
            .files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .collect();
        rows.sort_by_key(|f| std::cmp::Reverse(f.activity()));
        let mut admitted = self.files.values().filter(|f| f.admitted).count();
        let mut total = FileCounts::default();
        let mut refault = 0;
        let mut other_resident = None;
        for f in rows {
            let key = (f.dev, f.ino, f.path.clone());
            let cur = FileCounts::of(f);
            total.add(&cur);
            refault += f.refault_pages;
            let acc = self.files.entry(key).or_insert_with(|| FileAcc {
                label: label_of(f),
                last: FileCounts::default(),
                base: FileCounts::default(),
                admitted: false,
                resident_bytes: None,
                changed_s: now,
                present: true,
            });
            let d = cur.growth(&acc.last);
            if !d.is_zero() {
                acc.changed_s = now;
            }
            acc.present = true;
            acc.resident_bytes = f.resident_pages.map(|p| p * self.page_size);
            if !acc.admitted && admitted < self.files_cap && now - acc.changed_s < IDLE_S {
                acc.admitted = true;
                admitted += 1;
            }
            if !acc.admitted {
                self.other.add(&d);
                acc.base.add(&d);
                if let Some(b) = acc.resident_bytes {
                    *other_resident.get_or_insert(0) += b;
                }
            }
            // Never back: a field that shrank keeps its old value.
            acc.last.add(&d);
        }
        self.other_resident = other_resident;
        // Idle series stop being exported; their slot goes to the next
        // busiest file.
        for f in self.files.values_mut() {
            if f.admitted && now - f.changed_s >= IDLE_S {
                f.admitted = false;
            }
        }
        // Per-cgroup page-cache counters: the file rows are the scope's
        // (under `--all`, the host's: cgroup "/"). Growth of the sum, so
        // rows leaving the record never make it shrink.
        let scope = if i.all { "/" } else { scope };
        let last = self
            .cgroup_file_totals
            .entry(scope.to_string())
            .or_default();
        let grown = total.growth(last);
        let (last_added, last_ref) = (
            last.added,
            self.cgroup_refaults.get(scope).copied().unwrap_or(0),
        );
        last.added = last_added.max(total.added);
        for (k, v) in &total.evicted_by {
            let e = last.evicted_by.entry(k).or_default();
            *e = (*e).max(*v);
        }
        self.cgroup_refaults
            .insert(scope.to_string(), last_ref.max(refault));
        let c = self.cgroups.entry(scope.to_string()).or_default();
        c.added += grown.added;
        for (k, v) in &grown.evicted_by {
            *c.evicted_by.entry(k).or_default() += v;
        }
        c.refault += refault.saturating_sub(last_ref);
    }

    fn apply_gauges(&mut self, i: &Input<'_>, scope: &str) {
        let Some(cg) = i.cgroup else { return };
        let Some(m) = &cg.memory else { return };
        let label = if i.all { "/" } else { scope };
        let g = self.gauges.entry(label.to_string()).or_default();
        g.usage = Some(m.usage_bytes);
        g.limit = m.limit_bytes;
        g.file = Some(m.file_bytes);
        g.anon = Some(m.anon_bytes);
        if let Some(p) = &m.psi {
            g.psi_some_us = Some(p.some_total_us.max(g.psi_some_us.unwrap_or(0)));
            g.psi_full_us = Some(p.full_total_us.max(g.psi_full_us.unwrap_or(0)));
        }
    }
}

/// Longest label value exported; longer ones are cut and end in a hash of
/// the whole, so they stay unique.
const MAX_LABEL: usize = 200;

/// A file's label: its path (invalid UTF-8 shown as U+FFFD, as in the
/// JSON; the crate escapes `\`, `"` and newlines), " (deleted)" when it
/// was, cut to 200 bytes.
fn label_of(f: &FileRow) -> String {
    let mut s = f.path.clone();
    if f.deleted {
        s.push_str(" (deleted)");
    }
    if let Some(h) = &f.path_bytes_hex {
        // Two non-UTF-8 names may read alike once replaced: the hash of the
        // exact bytes keeps them apart.
        s.push_str(&format!(" [{:08x}]", fnv(h.as_bytes()) as u32));
    }
    bounded_label(s)
}

pub fn bounded_label(s: String) -> String {
    if s.len() <= MAX_LABEL {
        return s;
    }
    let mut cut = MAX_LABEL - 12;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…{:08x}", &s[..cut], fnv(s.as_bytes()) as u32)
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

type Labels = Vec<(String, String)>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Accum {
    /// The registry of the current values (built under the state's lock,
    /// encoded outside it).
    pub fn registry(&self, sse_clients: usize, sse_lagged: u64) -> Registry {
        let mut reg = Registry::default();
        let counter = || Family::<Labels, Counter>::default();
        let gauge = || Family::<Labels, Gauge>::default();

        let faults = counter();
        let added = counter();
        let evicted = counter();
        let refault = counter();
        for (cg, c) in &self.cgroups {
            faults
                .get_or_create(&labels(&[("cgroup", cg), ("kind", "minor")]))
                .inc_by(c.minor);
            faults
                .get_or_create(&labels(&[("cgroup", cg), ("kind", "major")]))
                .inc_by(c.major);
            if self.cgroup_file_totals.contains_key(cg) {
                added
                    .get_or_create(&labels(&[("cgroup", cg)]))
                    .inc_by(c.added);
                for r in mmtrace_common::reason::NAMES {
                    let v = c.evicted_by.get(r).copied().unwrap_or(0);
                    evicted
                        .get_or_create(&labels(&[("cgroup", cg), ("reason", r)]))
                        .inc_by(v);
                }
                refault
                    .get_or_create(&labels(&[("cgroup", cg)]))
                    .inc_by(c.refault);
            }
        }
        reg.register(
            "mmtrace_cgroup_faults",
            "Page faults taken by traced processes, by memory cgroup (minor: page already in memory; major: waited for disk)",
            faults,
        );
        reg.register(
            "mmtrace_cgroup_pages_added",
            "Pages of the traced files added to the page cache, by cgroup (under --all: cgroup=\"/\", the host)",
            added,
        );
        reg.register(
            "mmtrace_cgroup_pages_evicted",
            "Pages of the traced files removed from the page cache, by cgroup and by who removed them",
            evicted,
        );
        reg.register(
            "mmtrace_cgroup_refault_pages",
            "Estimate: pages of the traced files read back after a reclaim eviction seen during the trace, by cgroup",
            refault,
        );

        let proc_faults = counter();
        for ((cg, comm), s) in &self.proc_series {
            proc_faults
                .get_or_create(&labels(&[
                    ("cgroup", cg),
                    ("comm", comm),
                    ("kind", "minor"),
                ]))
                .inc_by(s.minor);
            proc_faults
                .get_or_create(&labels(&[
                    ("cgroup", cg),
                    ("comm", comm),
                    ("kind", "major"),
                ]))
                .inc_by(s.major);
        }
        reg.register(
            "mmtrace_process_faults",
            "Page faults of traced processes, summed per command name within a cgroup",
            proc_faults,
        );

        let f_faults = counter();
        let f_added = counter();
        let f_evicted = counter();
        let f_resident = gauge();
        let put = |label: &str, c: &FileCounts, resident: Option<u64>| {
            f_faults
                .get_or_create(&labels(&[("file", label), ("kind", "minor")]))
                .inc_by(c.minor);
            f_faults
                .get_or_create(&labels(&[("file", label), ("kind", "major")]))
                .inc_by(c.major);
            f_added
                .get_or_create(&labels(&[("file", label)]))
                .inc_by(c.added);
            for (r, v) in &c.evicted_by {
                if *v > 0 {
                    f_evicted
                        .get_or_create(&labels(&[("file", label), ("reason", r)]))
                        .inc_by(*v);
                }
            }
            if let Some(b) = resident {
                f_resident
                    .get_or_create(&labels(&[("file", label)]))
                    .set(gauge_i64(b));
            }
        };
        let mut seen = std::collections::HashSet::new();
        for f in self.files.values().filter(|f| f.admitted) {
            // Two files with one label (replaced at the same path): the
            // first keeps it, the other shows under "other" this time.
            if !seen.insert(f.label.as_str()) {
                continue;
            }
            let mut c = f.last.clone();
            c.minor -= f.base.minor.min(c.minor);
            c.major -= f.base.major.min(c.major);
            c.added -= f.base.added.min(c.added);
            for (k, v) in c.evicted_by.iter_mut() {
                *v -= f.base.evicted_by.get(k).copied().unwrap_or(0).min(*v);
            }
            put(&f.label, &c, f.resident_bytes.filter(|_| f.present));
        }
        if !self.files.is_empty() {
            put(OTHER, &self.other, Some(self.other_resident.unwrap_or(0)));
        }
        reg.register(
            "mmtrace_file_faults",
            "Page faults on each traced file (top files by activity; file=\"other\" sums the rest)",
            f_faults,
        );
        reg.register(
            "mmtrace_file_pages_added",
            "Pages of each file added to the page cache (top files; file=\"other\" sums the rest)",
            f_added,
        );
        reg.register(
            "mmtrace_file_pages_evicted",
            "Pages of each file removed from the page cache, by who removed them (top files; file=\"other\" sums the rest)",
            f_evicted,
        );
        reg.register(
            "mmtrace_file_resident_bytes",
            "Bytes of each file in the page cache at the last look (top files; file=\"other\" sums the rest)",
            f_resident,
        );

        let g =
            |name: &str, help: &str, get: fn(&CgroupGauges) -> Option<u64>, reg: &mut Registry| {
                let fam = gauge();
                for (cg, v) in &self.gauges {
                    if let Some(x) = get(v) {
                        fam.get_or_create(&labels(&[("cgroup", cg)]))
                            .set(gauge_i64(x));
                    }
                }
                reg.register(name, help, fam);
            };
        g(
            "mmtrace_cgroup_memory_usage_bytes",
            "Memory charged to the traced cgroup (memory.current; v1 memory.usage_in_bytes)",
            |v| v.usage,
            &mut reg,
        );
        g(
            "mmtrace_cgroup_memory_limit_bytes",
            "The traced cgroup's hard limit (memory.max; v1 memory.limit_in_bytes); absent when unlimited",
            |v| v.limit,
            &mut reg,
        );
        g(
            "mmtrace_cgroup_memory_file_bytes",
            "Page cache charged to the traced cgroup (memory.stat file; v1 total_cache)",
            |v| v.file,
            &mut reg,
        );
        g(
            "mmtrace_cgroup_memory_anon_bytes",
            "Anonymous memory charged to the traced cgroup (memory.stat anon; v1 total_rss)",
            |v| v.anon,
            &mut reg,
        );
        g(
            "mmtrace_cgroup_rss_file_bytes",
            "File-backed resident memory of the traced live processes, summed per cgroup (RssFile)",
            |v| v.rss_file,
            &mut reg,
        );
        g(
            "mmtrace_cgroup_rss_anon_bytes",
            "Anonymous resident memory of the traced live processes, summed per cgroup (RssAnon)",
            |v| v.rss_anon,
            &mut reg,
        );

        let psi = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        for (cg, v) in &self.gauges {
            if let Some(us) = v.psi_some_us {
                psi.get_or_create(&labels(&[("cgroup", cg), ("kind", "some")]))
                    .inc_by(us as f64 / 1e6);
            }
            if let Some(us) = v.psi_full_us {
                psi.get_or_create(&labels(&[("cgroup", cg), ("kind", "full")]))
                    .inc_by(us as f64 / 1e6);
            }
        }
        reg.register(
            "mmtrace_memory_pressure_stalled_seconds",
            "Time tasks stalled waiting for memory (PSI memory.pressure total; some: at least one task, full: all), since boot",
            psi,
        );

        let dropped: Counter = Counter::default();
        dropped.inc_by(self.events_dropped);
        reg.register(
            "mmtrace_events_dropped",
            "Raw events (--events) the ring buffer had no room for",
            dropped,
        );
        self.register_cost(&mut reg);
        let lost: Counter = Counter::default();
        lost.inc_by(self.lost_faults);
        reg.register(
            "mmtrace_lost_faults",
            "Faults of traced processes that found no room in the kernel's mapping map",
            lost,
        );
        if !self.bpf.is_empty() {
            let secs = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
            let runs = counter();
            for p in &self.bpf {
                let l = labels(&[("program", &p.program)]);
                secs.get_or_create(&l).inc_by(p.run_time_ns as f64 / 1e9);
                runs.get_or_create(&l).inc_by(p.run_count);
            }
            reg.register(
                "mmtrace_bpf_run_seconds",
                "Time the kernel spent in each mmtrace eBPF program (--bpf-stats; known at the end of the trace)",
                secs,
            );
            reg.register(
                "mmtrace_bpf_runs",
                "Runs of each mmtrace eBPF program (--bpf-stats; known at the end of the trace)",
                runs,
            );
        }
        let clients: Gauge = Gauge::default();
        clients.set(sse_clients as i64);
        reg.register(
            "mmtrace_sse_clients",
            "Clients connected to /events now",
            clients,
        );
        let lagged: Counter = Counter::default();
        lagged.inc_by(sse_lagged);
        reg.register(
            "mmtrace_sse_lagged",
            "Times an /events client fell more than 128 records behind and was sent the state again",
            lagged,
        );
        reg.register(
            "mmtrace_build",
            "mmtrace's version and the kernel it runs on",
            Info::new(vec![
                ("version".to_string(), self.version.clone()),
                ("kernel".to_string(), self.kernel.clone()),
            ]),
        );
        reg
    }
}

/// Prometheus text 0.0.4 (what promtool 2.42 lints) or OpenMetrics 1.0.
pub fn encode(reg: &Registry, openmetrics: bool) -> (String, &'static str) {
    let mut out = String::new();
    if openmetrics {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, reg);
        (
            out,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, reg);
        (
            out,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProcessRow;

    fn proc(pid: u32, comm: &str, cg: &str, minor: u64, alive: bool) -> ProcessRow {
        ProcessRow {
            pid,
            comm: comm.into(),
            cgroup: Some(cg.into()),
            alive,
            minor_faults: minor,
            major_faults: minor / 10,
            rss_file_pages: Some(2),
            rss_anon_pages: Some(3),
            ..Default::default()
        }
    }

    fn file(path: &str, ino: u64, minor: u64, added: u64, memcg: u64) -> FileRow {
        let mut evicted_by: BTreeMap<&'static str, u64> = mmtrace_common::reason::NAMES
            .iter()
            .map(|r| (*r, 0))
            .collect();
        evicted_by.insert("memcg_reclaim", memcg);
        FileRow {
            path: path.into(),
            path_known: true,
            dev: Some(Dev::new(8, 1)),
            ino,
            minor_faults: minor,
            pages_added: added,
            pages_evicted: memcg,
            evicted_by,
            resident_pages: Some(added - memcg),
            ..Default::default()
        }
    }

    fn apply(a: &mut Accum, t: f64, processes: Vec<ProcessRow>, files: Vec<FileRow>) {
        let report = Report {
            processes,
            files,
            ..Default::default()
        };
        apply_report(a, t, &report, Some(3));
    }

    /// One record of the `/app` cgroup's trace.
    fn apply_report(a: &mut Accum, t: f64, report: &Report, events_dropped: Option<u64>) {
        a.apply(&Input {
            elapsed_s: t,
            report,
            cgroups: &[],
            cgroup: None,
            cgroup_label: Some("/app"),
            events_dropped,
            all: false,
        });
    }

    fn text(a: &Accum) -> String {
        encode(&a.registry(2, 0), false).0
    }

    fn apply_cost(a: &mut Accum, t: f64, mmap_cost: crate::model::MmapCost) {
        let report = Report {
            mmap_cost,
            ..Default::default()
        };
        apply_report(a, t, &report, None);
    }

    #[test]
    fn what_mmap_cost_is_exported_and_never_goes_back() {
        let mut a = Accum::new(50);
        let cost = crate::model::MmapCost {
            wp_shared_faults: 1998,
            dirtied_pages: 2047,
            written_back_pages: 2047,
            msync_sync_calls: 2000,
            msync_async_calls: 3,
            msync_ns: 1_500_000_000,
            signals: 2,
            tlb_remote_shootdowns: Some(7),
            tlb_remote_flush_requests: Some(9),
            ..Default::default()
        };
        apply_cost(&mut a, 1.0, cost);
        // A later record with less (rows folded away) changes nothing.
        apply_cost(&mut a, 2.0, crate::model::MmapCost::default());
        let t = text(&a);
        let v = |s| value(&t, s);
        assert_eq!(v("mmtrace_write_protect_faults_total"), Some(1998.0));
        assert_eq!(v("mmtrace_pages_written_back_total"), Some(2047.0));
        assert_eq!(
            v("mmtrace_msync_calls_total{flags=\"MS_SYNC\"}"),
            Some(2000.0)
        );
        assert_eq!(
            v("mmtrace_msync_calls_total{flags=\"MS_ASYNC\"}"),
            Some(3.0)
        );
        assert_eq!(v("mmtrace_msync_seconds_total"), Some(1.5));
        assert_eq!(v("mmtrace_signals_total"), Some(2.0));
        assert_eq!(v("mmtrace_tlb_remote_shootdowns_total"), Some(7.0));
        assert_eq!(
            v("mmtrace_fault_stall_seconds_total{kind=\"major\"}"),
            None,
            "no --latency"
        );
    }

    /// The value of the series whose line starts with `series` (`name{labels}`).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
    }

    #[test]
    fn records_render_as_the_documented_series() {
        let mut a = Accum::new(50);
        a.set_meta(4096, "9.9.9", "6.18.0");
        apply(
            &mut a,
            1.0,
            vec![
                proc(10, "db", "/app", 100, true),
                proc(11, "db", "/app", 50, true),
            ],
            vec![file("/data/a", 1, 7, 20, 5)],
        );
        let t = text(&a);
        let v = |s| value(&t, s);
        assert_eq!(
            v("mmtrace_cgroup_faults_total{cgroup=\"/app\",kind=\"minor\"}"),
            Some(150.0)
        );
        assert_eq!(
            v("mmtrace_cgroup_faults_total{cgroup=\"/app\",kind=\"major\"}"),
            Some(15.0)
        );
        assert_eq!(
            v("mmtrace_process_faults_total{cgroup=\"/app\",comm=\"db\",kind=\"minor\"}"),
            Some(150.0),
            "per comm, no pid"
        );
        assert_eq!(
            v("mmtrace_cgroup_pages_added_total{cgroup=\"/app\"}"),
            Some(20.0)
        );
        assert_eq!(
            v("mmtrace_cgroup_pages_evicted_total{cgroup=\"/app\",reason=\"memcg_reclaim\"}"),
            Some(5.0)
        );
        assert_eq!(
            v("mmtrace_file_faults_total{file=\"/data/a\",kind=\"minor\"}"),
            Some(7.0)
        );
        assert_eq!(
            v("mmtrace_file_pages_added_total{file=\"/data/a\"}"),
            Some(20.0)
        );
        assert_eq!(
            v("mmtrace_file_pages_evicted_total{file=\"/data/a\",reason=\"memcg_reclaim\"}"),
            Some(5.0)
        );
        assert_eq!(
            v("mmtrace_file_resident_bytes{file=\"/data/a\"}"),
            Some(15.0 * 4096.0)
        );
        assert_eq!(
            v("mmtrace_file_pages_added_total{file=\"other\"}"),
            Some(0.0)
        );
        assert_eq!(
            v("mmtrace_cgroup_rss_anon_bytes{cgroup=\"/app\"}"),
            Some(6.0 * 4096.0)
        );
        assert_eq!(v("mmtrace_events_dropped_total"), Some(3.0));
        assert_eq!(v("mmtrace_sse_clients"), Some(2.0));
        assert_eq!(
            v("mmtrace_build_info{version=\"9.9.9\",kernel=\"6.18.0\"}"),
            Some(1.0)
        );
        assert!(
            t.contains("# TYPE mmtrace_cgroup_faults_total counter"),
            "{t}"
        );
        let om = encode(&a.registry(0, 0), true).0;
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE mmtrace_build info"));
    }

    /// The `exited (N processes)` row processes are folded into.
    fn exited(cg: &str, n: u64, minor: u64) -> ProcessRow {
        ProcessRow {
            pid: 0,
            comm: format!("exited ({n} processes)"),
            cgroup: Some(cg.into()),
            minor_faults: minor,
            major_faults: minor / 10,
            folded_processes: n,
            ..Default::default()
        }
    }

    #[test]
    fn counters_never_go_back_nor_double_when_rows_are_folded() {
        let mut a = Accum::new(50);
        let cg = "mmtrace_cgroup_faults_total{cgroup=\"/app\",kind=\"minor\"}";
        let job = "mmtrace_process_faults_total{cgroup=\"/app\",comm=\"job\",kind=\"minor\"}";
        apply(
            &mut a,
            1.0,
            vec![proc(10, "job", "/app", 100, false)],
            vec![],
        );
        // pid 10 exited a while ago: folded into the exited row; another runs.
        apply(
            &mut a,
            2.0,
            vec![proc(12, "job", "/app", 30, true), exited("/app", 1, 100)],
            vec![],
        );
        let t = text(&a);
        assert_eq!(value(&t, cg), Some(130.0), "{t}");
        assert_eq!(
            value(&t, job),
            Some(130.0),
            "folded counts stay in the comm's series"
        );
        assert!(!t.contains("exited ("), "the exited row is no comm: {t}");
        // pid 12 exits and is folded, its pid is recycled by a new process.
        apply(
            &mut a,
            3.0,
            vec![proc(12, "job", "/app", 5, true), exited("/app", 2, 130)],
            vec![],
        );
        let t = text(&a);
        assert_eq!(value(&t, cg), Some(135.0));
        assert_eq!(value(&t, job), Some(135.0));
        // A row that shrank (it should not) never takes the counter back.
        apply(&mut a, 4.0, vec![exited("/app", 2, 100)], vec![]);
        assert_eq!(value(&text(&a), cg), Some(135.0));
        // Long after everyone exited, the per-comm series goes (stale) but
        // the cgroup keeps the count.
        apply(&mut a, 4.0 + IDLE_S, vec![exited("/app", 3, 135)], vec![]);
        apply(
            &mut a,
            5.0 + 2.0 * IDLE_S,
            vec![exited("/app", 3, 135)],
            vec![],
        );
        let t = text(&a);
        assert!(!t.contains("comm=\"job\""), "{t}");
        assert_eq!(value(&t, cg), Some(135.0));
    }

    #[test]
    fn files_beyond_the_top_n_sum_into_other_and_sums_stay_right() {
        let mut a = Accum::new(2);
        let files = |n: u64| {
            vec![
                file("/a", 1, 10 * n, 100, 0),
                file("/b", 2, 5 * n, 50, 0),
                file("/c", 3, n, 10, 0),
                file("/d", 4, n, 10, 0),
            ]
        };
        apply(&mut a, 1.0, vec![], files(1));
        apply(&mut a, 2.0, vec![], files(3));
        let t = text(&a);
        let m = |f: &str| {
            value(
                &t,
                &format!("mmtrace_file_faults_total{{file=\"{f}\",kind=\"minor\"}}"),
            )
        };
        assert_eq!(m("/a"), Some(30.0));
        assert_eq!(m("/b"), Some(15.0));
        assert_eq!(m("/c"), None, "beyond the top 2");
        assert_eq!(m("other"), Some(6.0));
        assert_eq!(
            value(&t, "mmtrace_file_resident_bytes{file=\"other\"}"),
            Some(20.0 * 4096.0)
        );
        // /a goes idle long enough to lose its series: a slot frees, the
        // next busy file takes it showing only what "other" did not count.
        apply(
            &mut a,
            2.0 + IDLE_S,
            vec![],
            vec![
                file("/a", 1, 30, 100, 0),
                file("/b", 2, 20, 50, 0),
                file("/c", 3, 4, 10, 0),
                file("/d", 4, 3, 10, 0),
            ],
        );
        apply(
            &mut a,
            3.0 + IDLE_S,
            vec![],
            vec![
                file("/a", 1, 30, 100, 0),
                file("/b", 2, 21, 50, 0),
                file("/c", 3, 9, 10, 0),
                file("/d", 4, 3, 10, 0),
            ],
        );
        let t = text(&a);
        let m = |f: &str| {
            value(
                &t,
                &format!("mmtrace_file_faults_total{{file=\"{f}\",kind=\"minor\"}}"),
            )
        };
        assert_eq!(m("/a"), None, "idle: no longer exported");
        let sum: f64 = ["/b", "/c", "/d", "other"]
            .iter()
            .filter_map(|f| m(f))
            .sum();
        assert!(m("other").unwrap() >= 6.0, "other never goes back");
        // Exported series + other = every count except idle /a's 30.
        assert_eq!(sum, 21.0 + 9.0 + 3.0);
    }

    #[test]
    fn cgroups_past_the_cap_count_as_other() {
        let mut a = Accum::new(50);
        let rows: Vec<ProcessRow> = (0..MAX_CGROUPS as u32 + 5)
            .map(|i| proc(i + 1, "w", &format!("/c{i}"), 10, true))
            .collect();
        apply(&mut a, 1.0, rows, vec![]);
        let t = text(&a);
        assert_eq!(
            value(
                &t,
                "mmtrace_cgroup_faults_total{cgroup=\"other\",kind=\"minor\"}"
            ),
            Some(50.0),
            "{t}"
        );
        assert_eq!(
            value(
                &t,
                "mmtrace_cgroup_faults_total{cgroup=\"/c0\",kind=\"minor\"}"
            ),
            Some(10.0)
        );
    }

    #[test]
    fn hostile_names_stay_valid_labels() {
        let mut a = Accum::new(50);
        let long = format!("/{}", "x".repeat(400));
        apply(
            &mut a,
            1.0,
            vec![proc(1, "we\"ird\\", "/app", 1, true)],
            vec![
                file("/d/new\nline\"q\\", 1, 1, 1, 0),
                file(&long, 2, 1, 1, 0),
            ],
        );
        let t = text(&a);
        assert!(t.contains(r#"file="/d/new\nline\"q\\""#), "{t}");
        assert!(t.contains(r#"comm="we\"ird\\""#), "{t}");
        let l = t
            .lines()
            .find(|l| l.starts_with("mmtrace_file_pages_added_total{file=\"/xxx"))
            .unwrap();
        assert!(l.len() < 260 && l.contains('…'), "{l}");
        assert_eq!(bounded_label("short".into()), "short");
    }
}
