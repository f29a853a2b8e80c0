//! The ledger: pure aggregation of what the kernel counted (a [`Snapshot`])
//! with what userspace saw in `/proc` (paths, perms, the kernel's own fault
//! counters, RSS) and residency, into a [`Report`] per process, mapping and
//! file. No aya types and no I/O here: everything is tested on synthetic input.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use mmtrace_common::{FaultCounters, MappingKey, kind};
use serde::Serialize;

use crate::{
    collect::Snapshot,
    devnum::Dev,
    procfs::{MapEntry, OpenFile, ProcStat, ProcStatus},
    residency::Residency,
    signals::SignalRecord,
    stall::{self, FaultStall},
    tlb::TlbFlushes,
};

/// A file as the kernel names it: (`s_dev` in kernel encoding, inode number).
pub type FileId = (u32, u64);

/// Where a process's kernel fault counts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KernelSource {
    /// `/proc/<pid>/stat` fields 10 and 12, read while the process lived.
    ProcStat,
    /// `task_struct.min_flt`/`maj_flt` of every thread, captured by the eBPF
    /// exit hook (the process has exited).
    Exit,
    /// The last `/proc/<pid>/stat` read before the process vanished.
    LastSample,
}

/// What userspace knows of one traced process.
#[derive(Clone, Debug, Default)]
pub struct ProcState {
    pub comm: String,
    /// Named by the user (`--pid` or the command), not a child found later.
    pub target: bool,
    /// Kernel (minor, major) when the process entered the scope: 0 for a
    /// process born inside the trace.
    pub baseline: (u64, u64),
    /// Sum over the threads alive at attach (subtracted from exit totals).
    pub baseline_threads: (u64, u64),
    pub last_stat: Option<(u64, u64)>,
    pub alive: bool,
    pub maps: Vec<MapEntry>,
    pub status: Option<ProcStatus>,
    /// (RssFile, RssAnon, RssShmem) KiB at the first look, the
    /// componentwise peak and the last look (sampled every 200 ms).
    pub first_rss: Option<Rss>,
    pub peak_rss: Option<Rss>,
    pub last_rss: Option<Rss>,
    /// Its memory cgroup (`/system.slice/x.service`), read when first seen.
    pub cgroup: Option<String>,
}

/// Resident memory of a process, KiB (`/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rss {
    pub file_kib: u64,
    pub anon_kib: u64,
    pub shmem_kib: u64,
}

impl Rss {
    fn max(self, o: Self) -> Self {
        Self {
            file_kib: self.file_kib.max(o.file_kib),
            anon_kib: self.anon_kib.max(o.anon_kib),
            shmem_kib: self.shmem_kib.max(o.shmem_kib),
        }
    }
}

/// The OOM killer ended a process (`oom:mark_victim`): a `"type":"oom_kill"`
/// record, and evidence for the verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct OomKill {
    pub pid: u32,
    pub comm: String,
    /// The victim's memory at the kill, bytes.
    pub anon_rss_bytes: u64,
    pub file_rss_bytes: u64,
    pub shmem_rss_bytes: u64,
    pub total_vm_bytes: u64,
    pub oom_score_adj: i32,
    /// The victim was traced (in scope when it was marked).
    pub in_scope: bool,
    /// The victim's memory cgroup (`/proc/<pid>/cgroup`, read when the
    /// record arrived), null if it was already gone.
    pub cgroup: Option<String>,
    /// Seconds since the trace started.
    pub elapsed_s: f64,
}

/// Last known path of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: String,
    /// The exact bytes, when the name is not UTF-8.
    pub raw: Option<Vec<u8>>,
    pub deleted: bool,
}

impl PathInfo {
    /// The name to give the file system: the exact bytes.
    pub fn fs_path(&self) -> std::path::PathBuf {
        match &self.raw {
            Some(b) => <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b).into(),
            None => self.path.clone().into(),
        }
    }
}

/// The aggregation state of one trace.
#[derive(Debug)]
pub struct Ledger {
    pub page_size: u64,
    pub procs: BTreeMap<u32, ProcState>,
    pub paths: HashMap<FileId, PathInfo>,
    pub residency: HashMap<FileId, Residency>,
    /// Evictions are charged to their owner cgroup (`--cgroup` with a
    /// readable owner): report `evicted_owned_pages`.
    pub owner_known: bool,
    /// OOM kills of traced processes, in order.
    pub oom_kills: Vec<OomKill>,
    /// Processes that exited a while ago, folded away.
    pub retired: Retired,
    /// Kernel-generated SIGBUS/SIGSEGV of traced processes, the first
    /// [`crate::signals::LISTED`] in order...
    pub signals: Vec<SignalRecord>,
    /// ...and how many there were in all.
    pub signals_total: u64,
    /// `tlb:tlb_flush` is attached: process rows carry `tlb_flushes`.
    pub tlb_known: bool,
    /// `--latency`: report fault stall per file and per process.
    pub latency: bool,
}

/// Processes that exited a while ago, folded away so that a long trace
/// stays bounded (their kernel map entries are deleted, their userspace
/// state dropped): one row per cgroup and their faults per file, so every
/// total still adds up.
#[derive(Debug, Default)]
pub struct Retired {
    /// Per cgroup (`None`: not known), the sums of its folded processes.
    pub rows: BTreeMap<Option<String>, ProcessRow>,
    /// Their faults by (kind bits, file) with the number of mappings.
    pub faults: BTreeMap<(u32, FileId), (FaultCounters, u64)>,
}

impl Retired {
    /// Adds the row of one exited process (`counted`: it was a process of
    /// its own here, not a remainder flushed after it was folded once).
    fn add_process(&mut self, p: &ProcessRow, counted: bool) {
        let r = self
            .rows
            .entry(p.cgroup.clone())
            .or_insert_with(|| ProcessRow {
                pid: 0,
                cgroup: p.cgroup.clone(),
                ..Default::default()
            });
        r.folded_processes += u64::from(counted);
        r.comm = format!("exited ({} processes)", r.folded_processes);
        r.minor_faults += p.minor_faults;
        r.major_faults += p.major_faults;
        r.write_faults += p.write_faults;
        r.cow_faults += p.cow_faults;
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        let addi = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        r.kernel_minor_faults = add(r.kernel_minor_faults, p.kernel_minor_faults);
        r.kernel_major_faults = add(r.kernel_major_faults, p.kernel_major_faults);
        r.untraced_minor_faults = addi(r.untraced_minor_faults, p.untraced_minor_faults);
        r.untraced_major_faults = addi(r.untraced_major_faults, p.untraced_major_faults);
        r.kernel_source = r.kernel_source.or(p.kernel_source);
        r.tlb_flushes = TlbFlushes::sum(r.tlb_flushes.as_ref(), p.tlb_flushes.as_ref());
        if let Some(st) = &p.fault_stall {
            r.fault_stall
                .get_or_insert_with(Default::default)
                .add_totals(st);
        }
    }
}

impl Ledger {
    pub fn new(page_size: u64) -> Self {
        Self {
            page_size,
            procs: BTreeMap::new(),
            paths: HashMap::new(),
            residency: HashMap::new(),
            owner_known: false,
            oom_kills: Vec::new(),
            retired: Retired::default(),
            signals: Vec::new(),
            signals_total: 0,
            tlb_known: false,
            latency: false,
        }
    }

    /// Records a signal (the first [`crate::signals::LISTED`] are kept).
    pub fn add_signal(&mut self, s: SignalRecord) {
        self.signals_total += 1;
        if self.signals.len() < crate::signals::LISTED {
            self.signals.push(s);
        }
    }

    /// Records a process entering the scope with its kernel counters then.
    pub fn add_process(
        &mut self,
        pid: u32,
        target: bool,
        baseline: Option<&ProcStat>,
        threads: (u64, u64),
    ) {
        let p = self.procs.entry(pid).or_default();
        p.target |= target;
        p.alive = true;
        if let Some(s) = baseline {
            p.comm = s.comm.clone();
            p.baseline = (s.minflt, s.majflt);
            p.last_stat = Some((s.minflt, s.majflt));
        }
        p.baseline_threads = threads;
    }

    /// Records one look at `/proc/<pid>`. `None` parts were unreadable.
    pub fn observe(
        &mut self,
        pid: u32,
        stat: Option<&ProcStat>,
        status: Option<ProcStatus>,
        maps: Option<Vec<MapEntry>>,
        fds: &[OpenFile],
    ) {
        let p = self.procs.entry(pid).or_default();
        p.alive = true;
        if let Some(s) = stat {
            p.comm = s.comm.clone();
            p.last_stat = Some((s.minflt, s.majflt));
        }
        if let Some(st) = &status {
            let now = Rss {
                file_kib: st.rss_file_kib,
                anon_kib: st.rss_anon_kib,
                shmem_kib: st.rss_shmem_kib,
            };
            p.first_rss.get_or_insert(now);
            p.peak_rss = Some(p.peak_rss.unwrap_or(now).max(now));
            p.last_rss = Some(now);
            p.status = status;
        }
        if let Some(maps) = maps {
            p.maps = maps;
        }
        learn(&mut self.paths, &p.maps, fds, true);
    }

    /// Learns file paths from a process's maps and fds without touching its
    /// counters (used on notices and for the final look-up of unknown files).
    pub fn learn_paths(&mut self, maps: &[MapEntry], fds: &[OpenFile]) {
        learn(&mut self.paths, maps, fds, false);
    }

    /// Whether the path of `id` is known.
    pub fn knows(&self, id: FileId) -> bool {
        self.paths.contains_key(&id)
    }

    /// Records the cgroup a process runs in (`None`, unreadable: the last
    /// one known stays).
    pub fn set_cgroup(&mut self, pid: u32, cgroup: Option<String>) {
        if let (Some(p), Some(cg)) = (self.procs.get_mut(&pid), cgroup) {
            p.cgroup = Some(cg);
        }
    }

    /// The cgroup a process died in, for one whose cgroup was never read
    /// (it lived between two looks at /proc).
    pub fn cgroup_at_exit(&mut self, pid: u32, cgroup: String) {
        let p = self.procs.entry(pid).or_default();
        p.cgroup.get_or_insert(cgroup);
    }

    pub fn mark_gone(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.alive = false;
            p.status = None;
        }
    }

    /// Files userspace knows the targets map or hold open.
    pub fn known_files(&self) -> Vec<FileId> {
        let mut v: Vec<FileId> = self.paths.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// One row per process seen by userspace or by the kernel (`only`:
    /// just those pids).
    fn process_rows(&self, snap: &Snapshot, only: Option<&BTreeSet<u32>>) -> Vec<ProcessRow> {
        let pages = |kib: u64| kib * 1024 / self.page_size;
        let mut traced: BTreeMap<u32, FaultCounters> = BTreeMap::new();
        for (k, c) in &snap.mappings {
            traced.entry(k.tgid).or_default().add(c);
        }
        let mut pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.extend(traced.keys().copied());
        pids.extend(snap.exits.keys().copied());
        pids.extend(snap.tlb.keys().copied());
        pids.sort_unstable();
        pids.dedup();
        pids.retain(|p| only.is_none_or(|o| o.contains(p)));
        pids.into_iter()
            .map(|pid| {
                let st = self.procs.get(&pid);
                let t = traced.get(&pid).copied().unwrap_or_default();
                let exit = snap.exits.get(&pid).filter(|e| e.group_dead != 0);
                let alive = st.is_some_and(|s| s.alive) && exit.is_none();
                let base = st.map(|s| s.baseline).unwrap_or_default();
                let (kernel, source) = match (exit, st) {
                    (Some(e), _) => {
                        let bt = st.map(|s| s.baseline_threads).unwrap_or_default();
                        (
                            Some((
                                e.min_flt.saturating_sub(bt.0),
                                e.maj_flt.saturating_sub(bt.1),
                            )),
                            Some(KernelSource::Exit),
                        )
                    }
                    (None, Some(s)) => match s.last_stat {
                        Some((mi, ma)) => (
                            Some((mi.saturating_sub(base.0), ma.saturating_sub(base.1))),
                            Some(if s.alive {
                                KernelSource::ProcStat
                            } else {
                                KernelSource::LastSample
                            }),
                        ),
                        None => (None, None),
                    },
                    (None, None) => (None, None),
                };
                let comm = match (st, exit) {
                    (Some(s), _) if !s.comm.is_empty() => s.comm.clone(),
                    (_, Some(e)) => crate::collect::maps::comm_string(&e.comm),
                    _ => String::new(),
                };
                let status = st.and_then(|s| s.status.as_ref()).filter(|_| alive);
                ProcessRow {
                    pid,
                    comm,
                    cgroup: st.and_then(|s| s.cgroup.clone()),
                    alive,
                    target: st.is_some_and(|s| s.target),
                    minor_faults: t.minor,
                    major_faults: t.major,
                    write_faults: t.write,
                    cow_faults: t.cow,
                    kernel_minor_faults: kernel.map(|k| k.0),
                    kernel_major_faults: kernel.map(|k| k.1),
                    kernel_source: source,
                    untraced_minor_faults: kernel.map(|k| k.0 as i64 - t.minor as i64),
                    untraced_major_faults: kernel.map(|k| k.1 as i64 - t.major as i64),
                    rss_file_pages: status.map(|s| pages(s.rss_file_kib)),
                    rss_anon_pages: status.map(|s| pages(s.rss_anon_kib)),
                    rss_shmem_pages: status.map(|s| pages(s.rss_shmem_kib)),
                    folded_processes: 0,
                    tlb_flushes: self.tlb_known.then(|| {
                        snap.tlb
                            .get(&pid)
                            .map(TlbFlushes::from_counters)
                            .unwrap_or_default()
                    }),
                    fault_stall: self.latency.then(|| {
                        FaultStall::from_totals(
                            &snap.proc_stall.get(&pid).copied().unwrap_or_default(),
                        )
                    }),
                }
            })
            .collect()
    }

    /// Folds exited processes away: `deleted` holds the mapping counters
    /// the kernel's map held for them (now deleted there), `snap` their
    /// exit records. Their rows become their cgroup's `exited` row, their
    /// faults stay on their files, their state here is dropped. Targets
    /// are never folded.
    pub fn fold(
        &mut self,
        pids: &BTreeSet<u32>,
        deleted: &BTreeMap<MappingKey, FaultCounters>,
        snap: &Snapshot,
    ) {
        let only_deleted = Snapshot {
            mappings: deleted.clone(),
            exits: snap
                .exits
                .iter()
                .filter(|(p, _)| pids.contains(p))
                .map(|(p, e)| (*p, *e))
                .collect(),
            tlb: snap
                .tlb
                .iter()
                .filter(|(p, _)| pids.contains(p))
                .map(|(p, t)| (*p, *t))
                .collect(),
            // Their fault stall totals (--latency), deleted from the kernel
            // with their mapping counters.
            proc_stall: snap
                .proc_stall
                .iter()
                .filter(|(p, _)| pids.contains(p))
                .map(|(p, s)| (*p, *s))
                .collect(),
            ..Default::default()
        };
        for row in self.process_rows(&only_deleted, Some(pids)) {
            let counted =
                self.procs.contains_key(&row.pid) || only_deleted.exits.contains_key(&row.pid);
            self.retired.add_process(&row, counted);
        }
        for (k, c) in deleted {
            let bucket = k.kind & (kind::FILE | kind::UNATTRIBUTED);
            let e = self
                .retired
                .faults
                .entry((bucket, (k.dev, k.ino)))
                .or_default();
            e.0.add(c);
            e.1 += 1;
        }
        for p in pids {
            self.procs.remove(p);
        }
    }

    /// Builds the report from the kernel's counters and everything observed.
    pub fn report(&self, snap: &Snapshot) -> Report {
        let mut processes = self.process_rows(snap, None);
        processes.extend(self.retired.rows.values().cloned());

        // Mappings and files.
        let mut mappings = Vec::new();
        let mut by_file: BTreeMap<FileId, FileRow> = BTreeMap::new();
        let mut anon = FileRow::special("[anon]", FileKind::Anon);
        let mut unattributed = FileRow::special("[unattributed]", FileKind::Unattributed);
        for (k, c) in &snap.mappings {
            let row = self.mapping_row(k, c);
            let target = if k.kind & kind::UNATTRIBUTED != 0 {
                &mut unattributed
            } else if k.kind & kind::FILE != 0 {
                let id = (k.dev, k.ino);
                by_file.entry(id).or_insert_with(|| self.file_row(id))
            } else {
                &mut anon
            };
            target.add_faults(c);
            target.mappings += 1;
            mappings.push(row);
        }
        for (&(bucket, id), (c, n)) in &self.retired.faults {
            let target = if bucket & kind::UNATTRIBUTED != 0 {
                &mut unattributed
            } else if bucket & kind::FILE != 0 {
                by_file.entry(id).or_insert_with(|| self.file_row(id))
            } else {
                &mut anon
            };
            target.add_faults(c);
            target.mappings += n;
        }
        for (fk, c) in &snap.files {
            let r = by_file
                .entry((fk.dev, fk.ino))
                .or_insert_with(|| self.file_row((fk.dev, fk.ino)));
            r.pages_added += c.added;
            r.pages_evicted += c.evicted;
            r.refault_pages += c.refaulted;
            r.readded_pages += c.readded;
            for (name, n) in mmtrace_common::reason::NAMES.iter().zip(c.evicted_by) {
                *r.evicted_by.entry(name).or_default() += n;
            }
            if self.owner_known {
                *r.evicted_owned_pages.get_or_insert(0) += c.evicted_owned;
            }
        }
        let mut write_path: Option<WritePath> = None;
        for (fk, c) in &snap.writes {
            let w = WritePath::from_counters(c);
            WritePath::add_to(&mut write_path, &w);
            if fk.ino == 0 && fk.dev == 0 {
                continue; // msync of memory that is no file of interest
            }
            let r = by_file
                .entry((fk.dev, fk.ino))
                .or_insert_with(|| self.file_row((fk.dev, fk.ino)));
            WritePath::add_to(&mut r.write_path, &w);
        }
        if self.latency {
            self.add_stall(snap, &mut by_file, &mut anon, &mut unattributed);
        }
        let mut files: Vec<FileRow> = by_file
            .into_values()
            .filter(|f| f.activity() > 0 || f.mappings > 0 || f.write_path.is_some())
            .collect();
        files.sort_by(|a, b| {
            b.activity()
                .cmp(&a.activity())
                .then_with(|| a.path.cmp(&b.path))
        });
        anon.resident_pages = Some(processes.iter().filter_map(|p| p.rss_anon_pages).sum());
        if anon.mappings > 0 || anon.resident_pages.unwrap_or(0) > 0 {
            files.push(anon);
        }
        if unattributed.mappings > 0 {
            files.push(unattributed);
        }
        mappings.sort_by(|a, b| {
            (b.minor_faults + b.major_faults)
                .cmp(&(a.minor_faults + a.major_faults))
                .then(a.pid.cmp(&b.pid))
                .then(a.start.cmp(&b.start))
        });

        let errors = snap
            .errors
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| ErrorRow {
                name: crate::collect::maps::error_name(i as u32),
                count: *n,
                meaning: crate::collect::maps::error_advice(i as u32),
            })
            .collect();
        let mut r = Report {
            processes,
            files,
            mappings,
            lost_faults: snap.lost_faults.minor + snap.lost_faults.major,
            errors,
            reclaimers: snap
                .reclaimers
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            signals: self.signals.clone(),
            signals_not_listed: self.signals_total - self.signals.len() as u64,
            mmap_cost: MmapCost::default(),
            write_path,
            fault_stall_unpaired: self.latency.then(|| {
                mmtrace_common::latency_miss::NAMES
                    .iter()
                    .zip(snap.latency_misses)
                    .map(|(k, n)| (*k, n))
                    .collect()
            }),
        };
        r.mmap_cost = MmapCost::of(&r);
        r
    }

    /// `--latency`: each file's (and anonymous memory's) stall from the
    /// kernel's histograms; a file with none gets zeros.
    fn add_stall(
        &self,
        snap: &Snapshot,
        by_file: &mut BTreeMap<FileId, FileRow>,
        anon: &mut FileRow,
        unattributed: &mut FileRow,
    ) {
        let mut h: BTreeMap<FileId, [mmtrace_common::LatencyHist; 2]> = BTreeMap::new();
        for (k, v) in &snap.latency {
            h.entry((k.dev, k.ino)).or_default()[k.major.min(1) as usize].add(v);
        }
        let stall = |id: FileId| {
            h.get(&id)
                .map(|[mi, ma]| {
                    FaultStall::new(stall::class_from_hist(mi), stall::class_from_hist(ma))
                })
                .unwrap_or_default()
        };
        for &id in h.keys() {
            if id != ANON_STALL && id != UNATTRIBUTED_STALL {
                by_file.entry(id).or_insert_with(|| self.file_row(id));
            }
        }
        for (id, row) in by_file.iter_mut() {
            row.fault_stall = Some(stall(*id));
        }
        anon.fault_stall = Some(stall(ANON_STALL));
        unattributed.fault_stall = Some(stall(UNATTRIBUTED_STALL));
    }

    fn file_row(&self, id: FileId) -> FileRow {
        let dev = Dev::from_kernel(id.0);
        let (path, path_known, deleted) = match self.paths.get(&id) {
            Some(p) => (p.path.clone(), true, p.deleted),
            None => (format!("[{dev}:{}]", id.1), false, false),
        };
        let path_bytes_hex = self.paths.get(&id).and_then(|p| p.raw.as_deref()).map(hex);
        let res = self.residency.get(&id);
        FileRow {
            path,
            path_bytes_hex,
            path_known,
            deleted,
            kind: FileKind::File,
            dev: Some(dev),
            ino: id.1,
            resident_pages: res.map(|r| r.cached_pages),
            file_pages: res.map(|r| r.total_pages),
            dirty_pages: res
                .filter(|r| r.method == crate::residency::Method::Cachestat)
                .map(|r| r.dirty_pages),
            writeback_pages: res
                .filter(|r| r.method == crate::residency::Method::Cachestat)
                .map(|r| r.writeback_pages),
            ..FileRow::default()
        }
    }

    fn mapping_row(&self, k: &MappingKey, c: &FaultCounters) -> MappingRow {
        let entry = self.procs.get(&k.tgid).and_then(|p| {
            p.maps.iter().find(|m| {
                m.start <= k.vm_start
                    && k.vm_start < m.end
                    && (k.kind & kind::FILE == 0 || m.ino == k.ino)
            })
        });
        let label = if k.kind & kind::UNATTRIBUTED != 0 {
            MappingKind::Unattributed
        } else if k.kind & kind::FILE != 0 {
            MappingKind::File
        } else {
            match entry.and_then(|e| e.path.as_deref()) {
                Some("[heap]") => MappingKind::Heap,
                Some(p) if p.starts_with("[stack") => MappingKind::Stack,
                _ => MappingKind::Anon,
            }
        };
        let path = if k.kind & kind::FILE != 0 {
            self.paths
                .get(&(k.dev, k.ino))
                .map(|p| p.path.clone())
                .unwrap_or_else(|| format!("[{}:{}]", Dev::from_kernel(k.dev), k.ino))
        } else {
            entry.and_then(|e| e.path.clone()).unwrap_or_default()
        };
        MappingRow {
            pid: k.tgid,
            kind: label,
            path,
            start: k.vm_start,
            end: k.vm_end,
            offset: k.pgoff * self.page_size,
            shared: k.kind & kind::SHARED != 0,
            perms: entry.map(|e| e.perms()),
            minor_faults: c.minor,
            major_faults: c.major,
            write_faults: c.write,
            cow_faults: c.cow,
            pages_mapped: c.pages_mapped,
        }
    }
}

/// Records the paths of mapped and open files. A path from the maps
/// replaces an older one when `refresh` (the file may have been deleted or
/// renamed since); fds only fill in unknown files.
fn learn(
    paths: &mut HashMap<FileId, PathInfo>,
    maps: &[MapEntry],
    fds: &[OpenFile],
    refresh: bool,
) {
    for m in maps.iter().filter(|m| m.is_file()) {
        if let Some(path) = &m.path {
            let info = PathInfo {
                path: path.clone(),
                raw: m.path_raw.clone(),
                deleted: m.deleted,
            };
            let id = (m.dev.to_kernel(), m.ino);
            if refresh {
                paths.insert(id, info);
            } else {
                paths.entry(id).or_insert(info);
            }
        }
    }
    for f in fds {
        paths
            .entry((f.dev.to_kernel(), f.ino))
            .or_insert_with(|| PathInfo {
                path: f.path.clone(),
                raw: f.path_raw.clone(),
                deleted: false,
            });
    }
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The bytes of [`hex`]'s output (`None` if it is not that).
pub fn unhex(h: &str) -> Option<Vec<u8>> {
    h.len()
        .is_multiple_of(2)
        .then(|| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// One process's line of the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    /// Its memory cgroup, when known (always under `--all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub alive: bool,
    pub target: bool,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub write_faults: u64,
    pub cow_faults: u64,
    pub kernel_minor_faults: Option<u64>,
    pub kernel_major_faults: Option<u64>,
    pub kernel_source: Option<KernelSource>,
    /// Kernel count minus traced count: faults the kernel counted that fire
    /// no perf event (GUP: O_DIRECT, pinning, execve's argv copy).
    pub untraced_minor_faults: Option<i64>,
    pub untraced_major_faults: Option<i64>,
    pub rss_file_pages: Option<u64>,
    pub rss_anon_pages: Option<u64>,
    pub rss_shmem_pages: Option<u64>,
    /// For an `exited` row (pid 0): how many processes that exited a while
    /// ago it sums (they were folded away to keep a long trace bounded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folded_processes: u64,
    /// TLB flushes of the process by reason (`tlb:tlb_flush`): per
    /// process, not per file. Null when the hook is not attached.
    #[serde(default)]
    pub tlb_flushes: Option<TlbFlushes>,
    /// `--latency` only: the stall totals of its faults (fault entry to the
    /// kernel's accounting), no percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_stall: Option<FaultStall>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    #[default]
    File,
    Anon,
    Unattributed,
    /// Host-wide traces: the files beyond the busiest, summed.
    Others,
}

/// One file's line (or the anonymous-memory line) of the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FileRow {
    /// The name as text (invalid UTF-8 replaced by U+FFFD).
    pub path: String,
    /// The name's exact bytes in lowercase hex, only when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes_hex: Option<String>,
    pub path_known: bool,
    pub deleted: bool,
    pub kind: FileKind,
    pub dev: Option<Dev>,
    pub ino: u64,
    pub mappings: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub write_faults: u64,
    pub cow_faults: u64,
    /// Write faults on present, write-protected pages of shared mappings of
    /// the file (x86): re-dirtying a page that writeback cleaned (or that
    /// fault-around mapped read-only). Each one dirties the page again.
    #[serde(default)]
    pub wp_shared_faults: u64,
    pub pages_mapped: u64,
    pub pages_added: u64,
    pub pages_evicted: u64,
    /// Estimate: pages re-added after a reclaim eviction seen during this
    /// trace (a refault in the kernel's sense).
    pub refault_pages: u64,
    /// Pages re-added after an invalidation (fadvise, truncate, ...) seen
    /// during this trace: re-reads, not refaults.
    pub readded_pages: u64,
    /// `pages_evicted` by reason (every reason present, zeros included).
    pub evicted_by: BTreeMap<&'static str, u64>,
    /// Evicted pages charged to a memcg of the traced cgroup tree (null
    /// unless a cgroup is traced and the owner can be read).
    pub evicted_owned_pages: Option<u64>,
    pub resident_pages: Option<u64>,
    pub file_pages: Option<u64>,
    /// Dirty pages and pages under writeback now (cachestat(2); null where
    /// only mincore(2) is available, or not measured).
    #[serde(default)]
    pub dirty_pages: Option<u64>,
    #[serde(default)]
    pub writeback_pages: Option<u64>,
    /// The write path of the file during the trace (null: no write-path
    /// event for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_path: Option<WritePath>,
    /// `--latency` only: the time from fault entry to the kernel's
    /// accounting of the fault, per minor/major, with percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_stall: Option<FaultStall>,
}

impl FileRow {
    fn special(path: &str, kind: FileKind) -> Self {
        Self {
            path: path.into(),
            path_known: true,
            kind,
            ..Self::default()
        }
    }
    fn add_faults(&mut self, c: &FaultCounters) {
        self.minor_faults += c.minor;
        self.major_faults += c.major;
        self.write_faults += c.write;
        self.cow_faults += c.cow;
        self.wp_shared_faults += c.wp_shared;
        self.pages_mapped += c.pages_mapped;
    }
    /// Sort key: busiest first.
    pub fn activity(&self) -> u64 {
        self.minor_faults + self.major_faults + self.pages_added + self.pages_evicted
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MappingKind {
    File,
    Heap,
    Stack,
    Anon,
    Unattributed,
}

/// One vma's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct MappingRow {
    pub pid: u32,
    pub kind: MappingKind,
    pub path: String,
    pub start: u64,
    pub end: u64,
    /// File offset of `start`, bytes.
    pub offset: u64,
    pub shared: bool,
    /// `rwxp` as in /proc/<pid>/maps, when the mapping was seen there.
    pub perms: Option<String>,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub write_faults: u64,
    pub cow_faults: u64,
    pub pages_mapped: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ErrorRow {
    pub name: &'static str,
    pub count: u64,
    pub meaning: &'static str,
}

/// Everything a report shows, cumulative since the trace started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Report {
    pub processes: Vec<ProcessRow>,
    pub files: Vec<FileRow>,
    pub mappings: Vec<MappingRow>,
    /// Faults of traced processes that found no room in the mapping map.
    pub lost_faults: u64,
    pub errors: Vec<ErrorRow>,
    /// Pages of files of interest evicted by tasks outside syscalls and
    /// cgroup/global reclaim, by command name (kdamond.0, khugepaged, ...).
    pub reclaimers: BTreeMap<String, u64>,
    /// Kernel-generated SIGBUS/SIGSEGV of traced processes, in order (the
    /// first 100; the same records as the `signal` records).
    #[serde(default)]
    pub signals: Vec<SignalRecord>,
    /// Signals beyond the listed ones.
    #[serde(default)]
    pub signals_not_listed: u64,
    /// What mmap cost the traced processes, in one place (the final
    /// report's WHAT MMAP COST section).
    #[serde(default)]
    pub mmap_cost: MmapCost,
    /// The write path summed over every file, msync calls on memory that
    /// is no file of interest included (null: no write-path event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_path: Option<WritePath>,
    /// `--latency` only: accounted faults whose latency was not measured,
    /// by why (`no_entry`, `address_mismatch`, `implausible_time`,
    /// `map_full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_stall_unpaired: Option<BTreeMap<&'static str, u64>>,
}

/// What mmap cost, summed over the report: fault stall (`--latency`), the
/// write path, signals and TLB shootdowns. Every figure has its unit in
/// its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MmapCost {
    /// `--latency` only: the summed fault stall of the traced faults, ns,
    /// and the faults measured (null without `--latency`).
    pub fault_stall_ns: Option<u64>,
    pub fault_stall_faults: Option<u64>,
    /// The same for major faults only.
    pub major_fault_stall_ns: Option<u64>,
    /// Write faults that re-dirtied a clean page of a shared file mapping.
    pub wp_shared_faults: u64,
    pub dirtied_pages: u64,
    pub written_back_pages: u64,
    pub writeback_waits: u64,
    pub msync_sync_calls: u64,
    pub msync_async_calls: u64,
    /// Total time in msync calls, ns.
    pub msync_ns: u64,
    /// Kernel-generated SIGBUS/SIGSEGV of traced processes.
    pub signals: u64,
    /// Remote TLB shootdowns received and remote flush requests sent
    /// (null: the TLB hook is not attached).
    pub tlb_remote_shootdowns: Option<u64>,
    pub tlb_remote_flush_requests: Option<u64>,
}

impl MmapCost {
    pub fn of(r: &Report) -> Self {
        let stalls: Vec<&FaultStall> = r
            .files
            .iter()
            .filter_map(|f| f.fault_stall.as_ref())
            .collect();
        let latency = !stalls.is_empty();
        let w = r.write_path.unwrap_or_default();
        let tlb: Vec<_> = r
            .processes
            .iter()
            .filter_map(|p| p.tlb_flushes.as_ref())
            .collect();
        Self {
            fault_stall_ns: latency.then(|| stalls.iter().map(|s| s.total_ns).sum()),
            fault_stall_faults: latency
                .then(|| stalls.iter().map(|s| s.minor.faults + s.major.faults).sum()),
            major_fault_stall_ns: latency.then(|| stalls.iter().map(|s| s.major.total_ns).sum()),
            wp_shared_faults: r.files.iter().map(|f| f.wp_shared_faults).sum(),
            dirtied_pages: w.dirtied_pages,
            written_back_pages: w.written_back_pages,
            writeback_waits: w.writeback_waits,
            msync_sync_calls: w.msync_sync_calls,
            msync_async_calls: w.msync_async_calls,
            msync_ns: w.msync_ns,
            signals: r.signals.len() as u64 + r.signals_not_listed,
            tlb_remote_shootdowns: (!tlb.is_empty())
                .then(|| tlb.iter().map(|t| t.remote_shootdowns).sum()),
            tlb_remote_flush_requests: (!tlb.is_empty())
                .then(|| tlb.iter().map(|t| t.remote_flush_requests).sum()),
        }
    }
}

/// The write path of a file (or of all files), from the kernel's
/// per-file counters. Pages are base pages (4 KiB here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct WritePath {
    /// Pages that went from clean to dirty (`writeback_dirty_folio`,
    /// weighted by folio size), whoever dirtied them.
    pub dirtied_pages: u64,
    /// Pages written back during the trace. From the filesystem's own
    /// writeback events where it has them (ext4, XFS and other iomap
    /// filesystems: flusher, fsync and msync alike); on other filesystems
    /// only the flusher's and sync(2)'s (`written_back_source`).
    pub written_back_pages: u64,
    /// `filesystem`, `flusher_only` or `none`: where `written_back_pages`
    /// came from.
    pub written_back_source: &'static str,
    /// Pages the flusher and sync(2) wrote (any filesystem; a part of
    /// `written_back_pages` where the filesystem reports its own).
    pub flusher_pages: u64,
    /// Times a traced task waited for a page of the file under writeback.
    pub writeback_waits: u64,
    /// msync(2) calls with `MS_SYNC` (an fsync of the range: writes the
    /// dirty pages and waits) and without (`MS_ASYNC`: does nothing on
    /// Linux since 2.6.19).
    pub msync_sync_calls: u64,
    pub msync_async_calls: u64,
    /// Total and longest time in those msync calls, ns.
    pub msync_ns: u64,
    pub msync_max_ns: u64,
    /// Pages the filesystem wrote back while those calls ran (ext4/iomap).
    pub msync_pages_written: u64,
}

impl WritePath {
    fn from_counters(c: &mmtrace_common::WriteCounters) -> Self {
        let (written, source) = if c.written_pages > 0 {
            (c.written_pages, "filesystem")
        } else if c.flusher_pages > 0 {
            (c.flusher_pages, "flusher_only")
        } else {
            (0, "none")
        };
        Self {
            dirtied_pages: c.dirtied_pages,
            written_back_pages: written,
            written_back_source: source,
            flusher_pages: c.flusher_pages,
            writeback_waits: c.wb_waits,
            msync_sync_calls: c.msync_sync,
            msync_async_calls: c.msync_async,
            msync_ns: c.msync_ns,
            msync_max_ns: c.msync_max_ns,
            msync_pages_written: c.msync_pages,
        }
    }

    /// Adds `w` into `acc` (created on first use).
    pub fn add_to(acc: &mut Option<WritePath>, w: &WritePath) {
        let a = acc.get_or_insert_with(WritePath::default);
        a.dirtied_pages += w.dirtied_pages;
        a.written_back_pages += w.written_back_pages;
        a.written_back_source = match (a.written_back_source, w.written_back_source) {
            ("filesystem", _) | (_, "filesystem") => "filesystem",
            ("flusher_only", _) | (_, "flusher_only") => "flusher_only",
            _ => "none",
        };
        a.flusher_pages += w.flusher_pages;
        a.writeback_waits += w.writeback_waits;
        a.msync_sync_calls += w.msync_sync_calls;
        a.msync_async_calls += w.msync_async_calls;
        a.msync_ns += w.msync_ns;
        a.msync_max_ns = a.msync_max_ns.max(w.msync_max_ns);
        a.msync_pages_written += w.msync_pages_written;
    }

    /// msync calls of either kind.
    pub fn msync_calls(&self) -> u64 {
        self.msync_sync_calls + self.msync_async_calls
    }
}

/// Stall histogram keys of anonymous memory and of unattributed faults.
const ANON_STALL: FileId = (0, 0);
const UNATTRIBUTED_STALL: FileId = (u32::MAX, 0);

/// Processes summed by cgroup, busiest (most faults) first.
pub fn by_cgroup(processes: &[ProcessRow]) -> Vec<crate::record::CgroupRow> {
    let mut m: BTreeMap<&str, crate::record::CgroupRow> = BTreeMap::new();
    for p in processes {
        let name = p.cgroup.as_deref().unwrap_or("(unknown)");
        let r = m.entry(name).or_insert_with(|| crate::record::CgroupRow {
            cgroup: name.to_string(),
            ..Default::default()
        });
        r.processes += p.folded_processes.max(1);
        r.alive += p.alive as u64;
        r.minor_faults += p.minor_faults;
        r.major_faults += p.major_faults;
        r.rss_file_pages += p.rss_file_pages.unwrap_or(0);
        r.rss_anon_pages += p.rss_anon_pages.unwrap_or(0);
    }
    let mut v: Vec<_> = m.into_values().collect();
    v.sort_by(|a, b| {
        (b.minor_faults + b.major_faults)
            .cmp(&(a.minor_faults + a.major_faults))
            .then_with(|| a.cgroup.cmp(&b.cgroup))
    });
    v
}

/// Keeps the special rows and the `keep` busiest files; the rest become one
/// `others` row (kind `others`) whose counters are their sums, so totals
/// still add up. For host-wide traces, where every file the host's
/// reclaim touches is counted (DAMON alone: thousands of files, a page
/// each).
pub fn bound_files(mut rows: Vec<FileRow>, keep: usize) -> Vec<FileRow> {
    let files = rows.iter().filter(|f| f.kind == FileKind::File).count();
    if files <= keep {
        return rows;
    }
    rows.sort_by(|a, b| {
        (a.kind != FileKind::File)
            .cmp(&(b.kind != FileKind::File))
            .then_with(|| b.activity().cmp(&a.activity()))
            .then_with(|| (a.dev, a.ino).cmp(&(b.dev, b.ino)))
    });
    let specials = rows.split_off(files);
    let rest = rows.split_off(keep);
    let mut others = FileRow::special(&format!("others ({} files)", rest.len()), FileKind::Others);
    others.path_known = false;
    for f in &rest {
        others.mappings += f.mappings;
        others.minor_faults += f.minor_faults;
        others.major_faults += f.major_faults;
        others.write_faults += f.write_faults;
        others.cow_faults += f.cow_faults;
        others.wp_shared_faults += f.wp_shared_faults;
        if let Some(w) = &f.write_path {
            WritePath::add_to(&mut others.write_path, w);
        }
        others.pages_mapped += f.pages_mapped;
        others.pages_added += f.pages_added;
        others.pages_evicted += f.pages_evicted;
        others.refault_pages += f.refault_pages;
        others.readded_pages += f.readded_pages;
        for (r, n) in &f.evicted_by {
            *others.evicted_by.entry(r).or_default() += n;
        }
    }
    rows.extend(specials);
    rows.push(others);
    rows
}

/// Keeps targets and the `top` busiest processes; the rest become one
/// `others` row (pid 0) whose counters are their sums, so totals still add
/// up. For host-wide traces, whose records would otherwise grow with the
/// host.
pub fn bound_processes(mut rows: Vec<ProcessRow>, top: usize) -> Vec<ProcessRow> {
    if rows.len() <= top {
        return rows;
    }
    rows.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.target),
            std::cmp::Reverse(p.minor_faults + p.major_faults),
            p.pid,
        )
    });
    let rest = rows.split_off(top);
    let sum_opt = |f: fn(&ProcessRow) -> Option<u64>| -> Option<u64> {
        rest.iter().filter_map(f).reduce(|a, b| a + b)
    };
    let others = ProcessRow {
        pid: 0,
        comm: format!(
            "others ({} processes)",
            rest.iter().map(|p| p.folded_processes.max(1)).sum::<u64>()
        ),
        alive: rest.iter().any(|p| p.alive),
        minor_faults: rest.iter().map(|p| p.minor_faults).sum(),
        major_faults: rest.iter().map(|p| p.major_faults).sum(),
        write_faults: rest.iter().map(|p| p.write_faults).sum(),
        cow_faults: rest.iter().map(|p| p.cow_faults).sum(),
        rss_file_pages: sum_opt(|p| p.rss_file_pages),
        rss_anon_pages: sum_opt(|p| p.rss_anon_pages),
        rss_shmem_pages: sum_opt(|p| p.rss_shmem_pages),
        tlb_flushes: rest.iter().fold(None, |a, p| {
            TlbFlushes::sum(a.as_ref(), p.tlb_flushes.as_ref())
        }),
        fault_stall: rest.iter().filter_map(|p| p.fault_stall.as_ref()).fold(
            None,
            |acc: Option<FaultStall>, s| {
                let mut a = acc.unwrap_or_default();
                a.add_totals(s);
                Some(a)
            },
        ),
        ..Default::default()
    };
    rows.push(others);
    rows
}

#[cfg(test)]
mod tests {
    use mmtrace_common::{CacheCounters, ExitRecord, FileKey};

    use super::*;

    fn map_entry(start: u64, end: u64, path: &str, ino: u64, shared: bool) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared,
            offset: 0,
            dev: if ino == 0 {
                Dev::default()
            } else {
                Dev {
                    major: 254,
                    minor: 0,
                }
            },
            ino,
            path: if path.is_empty() {
                None
            } else {
                Some(path.into())
            },
            path_raw: None,
            deleted: false,
        }
    }

    fn stat(pid: u32, comm: &str, min: u64, maj: u64) -> ProcStat {
        ProcStat {
            pid,
            comm: comm.into(),
            state: 'S',
            ppid: 1,
            minflt: min,
            majflt: maj,
            num_threads: 1,
            starttime: 0,
        }
    }

    fn key(tgid: u32, k: u32, start: u64, ino: u64) -> MappingKey {
        let dev = if ino == 0 {
            0
        } else {
            Dev {
                major: 254,
                minor: 0,
            }
            .to_kernel()
        };
        MappingKey {
            tgid,
            kind: k,
            vm_start: start,
            vm_end: start + 0x10000,
            pgoff: 0,
            ino,
            dev,
            _pad: 0,
        }
    }

    fn faults(minor: u64, major: u64, write: u64, cow: u64) -> FaultCounters {
        FaultCounters {
            minor,
            major,
            write,
            cow,
            pages_mapped: minor + major,
            wp_shared: 0,
        }
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::new(4096);
        l.add_process(10, true, Some(&stat(10, "app", 100, 2)), (100, 2));
        l.observe(
            10,
            Some(&stat(10, "app", 1100, 7)),
            Some(ProcStatus {
                tgid: 10,
                ppid: 1,
                rss_anon_kib: 400,
                rss_file_kib: 800,
                rss_shmem_kib: 0,
                vm_rss_kib: 1200,
            }),
            Some(vec![
                map_entry(0x1000, 0x9000, "/data/a.bin", 42, true),
                map_entry(0x20000, 0x30000, "[heap]", 0, false),
                map_entry(0x40000, 0x50000, "/data/b.bin", 43, false),
            ]),
            &[],
        );
        l
    }

    #[test]
    fn processes_reconcile_against_the_baseline() {
        let l = ledger();
        let mut s = Snapshot::default();
        s.mappings.insert(
            key(10, kind::FILE | kind::SHARED, 0x1000, 42),
            faults(900, 5, 0, 0),
        );
        s.mappings
            .insert(key(10, 0, 0x20000, 0), faults(97, 0, 97, 0));
        let r = l.report(&s);
        let p = &r.processes[0];
        assert_eq!((p.pid, p.comm.as_str(), p.alive), (10, "app", true));
        assert_eq!((p.minor_faults, p.major_faults), (997, 5));
        assert_eq!(
            (p.kernel_minor_faults, p.kernel_major_faults),
            (Some(1000), Some(5))
        );
        assert_eq!(p.untraced_minor_faults, Some(3));
        assert_eq!(p.kernel_source, Some(KernelSource::ProcStat));
        assert_eq!(p.rss_anon_pages, Some(100));
        assert_eq!(p.rss_file_pages, Some(200));
    }

    #[test]
    fn an_exited_process_uses_the_exit_counters_minus_its_threads_at_attach() {
        let mut l = ledger();
        l.mark_gone(10);
        let mut s = Snapshot::default();
        s.exits.insert(
            10,
            ExitRecord {
                min_flt: 1500,
                maj_flt: 9,
                threads: 2,
                group_dead: 1,
                comm: [0; 16],
                memcg_id: 0,
            },
        );
        let r = l.report(&s);
        let p = &r.processes[0];
        assert!(!p.alive);
        assert_eq!(p.kernel_source, Some(KernelSource::Exit));
        assert_eq!(
            (p.kernel_minor_faults, p.kernel_major_faults),
            (Some(1400), Some(7))
        );
        assert_eq!(p.rss_anon_pages, None);
    }

    #[test]
    fn host_wide_files_are_bounded_with_an_others_row_that_keeps_the_sums() {
        let file = |ino: u64, minor: u64, evicted: u64| {
            let mut f = FileRow {
                path: format!("/f{ino}"),
                ino,
                minor_faults: minor,
                pages_evicted: evicted,
                ..Default::default()
            };
            f.evicted_by.insert("damon", evicted);
            f
        };
        let mut rows: Vec<FileRow> = (1..=10).map(|i| file(i, i * 10, 1)).collect();
        rows.push(FileRow::special("[anon]", FileKind::Anon));
        let sum = |r: &[FileRow], f: fn(&FileRow) -> u64| r.iter().map(f).sum::<u64>();
        let out = bound_files(rows.clone(), 3);
        assert_eq!(out.len(), 3 + 1 + 1);
        let kept: Vec<u64> = out.iter().take(3).map(|f| f.ino).collect();
        assert_eq!(kept, [10, 9, 8]);
        assert_eq!(out[3].kind, FileKind::Anon);
        let o = &out[4];
        assert_eq!(
            (o.kind, o.path.as_str()),
            (FileKind::Others, "others (7 files)")
        );
        assert_eq!(
            sum(&out, |f| f.minor_faults),
            sum(&rows, |f| f.minor_faults)
        );
        assert_eq!(sum(&out, |f| f.pages_evicted), 10);
        assert_eq!(o.evicted_by["damon"], 7);
        assert_eq!(bound_files(rows.clone(), 10), rows);
    }

    #[test]
    fn folding_exited_processes_keeps_every_total_and_bounds_the_state() {
        let mut l = ledger();
        l.set_cgroup(10, Some("/svc".into()));
        l.add_process(11, false, None, (0, 0));
        l.set_cgroup(11, Some("/svc".into()));
        let mut s = Snapshot::default();
        for (pid, n) in [(10, 900), (11, 50)] {
            s.mappings.insert(
                key(pid, kind::FILE | kind::SHARED, 0x1000, 42),
                faults(n, 5, 0, 0),
            );
            s.mappings
                .insert(key(pid, 0, 0x20000, 0), faults(97, 0, 97, 0));
            s.exits.insert(
                pid,
                ExitRecord {
                    min_flt: 1100 + n,
                    maj_flt: 7,
                    threads: 1,
                    group_dead: 1,
                    comm: [0; 16],
                    memcg_id: 0,
                },
            );
        }
        let before = l.report(&s);
        let totals = |r: &Report| {
            r.files
                .iter()
                .map(|f| (f.path.clone(), f.minor_faults, f.major_faults, f.mappings))
                .collect::<Vec<_>>()
        };
        // 11 exited: the kernel's entries for it are deleted (what the
        // collector passes as `deleted`), the rest of the snapshot stays.
        let gone: BTreeSet<u32> = [11].into();
        let deleted: BTreeMap<MappingKey, FaultCounters> = s
            .mappings
            .iter()
            .filter(|(k, _)| k.tgid == 11)
            .map(|(k, c)| (*k, *c))
            .collect();
        l.fold(&gone, &deleted, &s);
        s.mappings.retain(|k, _| k.tgid != 11);
        s.exits.remove(&11);
        let after = l.report(&s);
        assert_eq!(totals(&after), totals(&before));
        assert!(!l.procs.contains_key(&11));
        let row = after.processes.iter().find(|p| p.pid == 0).unwrap();
        assert_eq!((row.folded_processes, row.minor_faults), (1, 147));
        assert_eq!(row.kernel_minor_faults, Some(1150));
        assert_eq!(row.cgroup.as_deref(), Some("/svc"));
        let cg = by_cgroup(&after.processes);
        assert_eq!((cg[0].processes, cg[0].minor_faults), (2, 997 + 147));
        assert_eq!(by_cgroup(&before.processes)[0].minor_faults, 997 + 147);
    }

    #[test]
    fn folded_processes_keep_their_tlb_flushes_in_the_exited_row() {
        let mut l = ledger();
        l.tlb_known = true;
        l.set_cgroup(10, Some("/svc".into()));
        l.add_process(11, false, None, (0, 0));
        l.set_cgroup(11, Some("/svc".into()));
        let mut s = Snapshot::default();
        for (pid, n) in [(10, 3), (11, 5)] {
            let mut t = mmtrace_common::TlbCounters::default();
            t.flushes[mmtrace_common::tlb_reason::REMOTE_SHOOTDOWN] = n;
            t.flushes[mmtrace_common::tlb_reason::LOCAL_MM_SHOOTDOWN] = 2 * n;
            t.pages[mmtrace_common::tlb_reason::LOCAL_MM_SHOOTDOWN] = 10 * n;
            s.tlb.insert(pid, t);
        }
        let before = l.report(&s);
        let remote = |r: &Report| -> u64 {
            r.processes
                .iter()
                .filter_map(|p| p.tlb_flushes.as_ref())
                .map(|t| t.remote_shootdowns)
                .sum()
        };
        assert_eq!(remote(&before), 8);
        // What the collector does: the deleted entry's counts are in the
        // snapshot when folding, and gone from it afterwards.
        let gone: BTreeSet<u32> = [11].into();
        l.fold(&gone, &BTreeMap::new(), &s);
        s.tlb.remove(&11);
        let after = l.report(&s);
        assert_eq!(remote(&after), 8);
        let row = after.processes.iter().find(|p| p.pid == 0).unwrap();
        let t = row.tlb_flushes.as_ref().unwrap();
        assert_eq!((t.remote_shootdowns, t.flushes), (5, 15));
        assert_eq!(t.by_reason["local_mm_shootdown"].pages, 50);
        // Without the hook the rows say so (null), not zero.
        l.tlb_known = false;
        assert!(
            l.report(&s)
                .processes
                .iter()
                .all(|p| p.pid == 0 || p.tlb_flushes.is_none())
        );
        // Bounded rows sum it into `others`.
        let rows = bound_processes(before.processes.clone(), 1);
        let others = rows.last().unwrap();
        assert!(others.comm.starts_with("others"));
        assert!(others.tlb_flushes.is_some());
    }

    #[test]
    fn signals_are_listed_up_to_the_bound_and_counted_beyond() {
        let mut l = ledger();
        for i in 0..(crate::signals::LISTED as u32 + 7) {
            l.add_signal(SignalRecord {
                pid: i,
                ..Default::default()
            });
        }
        let r = l.report(&Snapshot::default());
        assert_eq!(r.signals.len(), crate::signals::LISTED);
        assert_eq!(r.signals_not_listed, 7);
        assert_eq!(r.signals[0].pid, 0);
    }

    #[test]
    fn latency_gives_files_anon_and_processes_their_stall_and_folding_keeps_it() {
        use mmtrace_common::{LatencyHist, LatencyKey, ProcStall};
        let mut l = ledger();
        l.latency = true;
        l.add_process(11, false, None, (0, 0));
        l.set_cgroup(11, Some("/svc".into()));
        let mut s = Snapshot::default();
        s.mappings.insert(
            key(10, kind::FILE | kind::SHARED, 0x1000, 42),
            faults(10, 4, 0, 0),
        );
        s.mappings
            .insert(key(11, 0, 0x20000, 0), faults(97, 0, 97, 0));
        let hist = |n: u64, bucket: usize, max_ns: u64| {
            let mut h = LatencyHist {
                count: n,
                sum_ns: n * max_ns,
                max_ns,
                ..Default::default()
            };
            h.buckets[bucket] = n;
            h
        };
        let dev = key(10, kind::FILE, 0, 42).dev;
        let fk = |ino, major| LatencyKey { ino, dev, major };
        s.latency.insert(fk(42, 0), hist(10, 11, 2000));
        s.latency.insert(fk(42, 1), hist(4, 20, 1_000_000));
        s.latency.insert(LatencyKey::default(), hist(97, 10, 900));
        s.proc_stall.insert(
            10,
            ProcStall {
                minor_count: 10,
                minor_sum_ns: 20_000,
                minor_max_ns: 2000,
                major_count: 4,
                major_sum_ns: 4_000_000,
                major_max_ns: 1_000_000,
            },
        );
        s.proc_stall.insert(
            11,
            ProcStall {
                minor_count: 97,
                minor_sum_ns: 97 * 900,
                minor_max_ns: 900,
                ..Default::default()
            },
        );
        s.latency_misses[mmtrace_common::latency_miss::ADDR_MISMATCH as usize] = 2;
        let r = l.report(&s);
        let file = r.files.iter().find(|f| f.ino == 42).unwrap();
        let st = file.fault_stall.as_ref().unwrap();
        assert_eq!((st.minor.faults, st.major.faults), (10, 4));
        assert_eq!(st.total_ns, 20_000 + 4_000_000);
        assert_eq!(st.major.p99_us, Some(1000.0));
        assert_eq!(st.minor.p50_us, Some(2.0));
        let anon = r.files.iter().find(|f| f.kind == FileKind::Anon).unwrap();
        assert_eq!(anon.fault_stall.as_ref().unwrap().minor.faults, 97);
        assert_eq!(
            r.fault_stall_unpaired.as_ref().unwrap()["address_mismatch"],
            2
        );
        let p10 = r.processes.iter().find(|p| p.pid == 10).unwrap();
        assert_eq!(p10.fault_stall.as_ref().unwrap().total_ns, 4_020_000);

        // 11 exits and is folded: its stall totals move to the exited row.
        let gone: BTreeSet<u32> = [11].into();
        let deleted: BTreeMap<MappingKey, FaultCounters> = s
            .mappings
            .iter()
            .filter(|(k, _)| k.tgid == 11)
            .map(|(k, c)| (*k, *c))
            .collect();
        l.fold(&gone, &deleted, &s);
        s.mappings.retain(|k, _| k.tgid != 11);
        s.proc_stall.remove(&11);
        let r = l.report(&s);
        let exited = r.processes.iter().find(|p| p.pid == 0).unwrap();
        let st = exited.fault_stall.as_ref().unwrap();
        assert_eq!((st.minor.faults, st.minor.total_ns), (97, 97 * 900));
        assert_eq!(st.minor.max_us, Some(0.9));
        let total: u64 = r
            .processes
            .iter()
            .filter_map(|p| p.fault_stall.as_ref())
            .map(|s| s.total_ns)
            .sum();
        assert_eq!(total, 4_020_000 + 97 * 900);

        // Without --latency: no stall fields at all.
        let r = ledger().report(&s);
        assert!(r.files.iter().all(|f| f.fault_stall.is_none()));
        assert!(r.processes.iter().all(|p| p.fault_stall.is_none()));
        assert!(r.fault_stall_unpaired.is_none());
    }

    #[test]
    fn a_child_known_only_to_the_kernel_still_gets_a_row_with_its_comm() {
        let l = Ledger::new(4096);
        let mut s = Snapshot::default();
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"child");
        s.exits.insert(
            77,
            ExitRecord {
                min_flt: 12,
                maj_flt: 0,
                threads: 1,
                group_dead: 1,
                comm,
                memcg_id: 0,
            },
        );
        s.mappings
            .insert(key(77, 0, 0x5000, 0), faults(11, 0, 11, 0));
        let r = l.report(&s);
        assert_eq!(r.processes.len(), 1);
        assert_eq!(r.processes[0].comm, "child");
        assert_eq!(r.processes[0].untraced_minor_faults, Some(1));
    }

    #[test]
    fn files_join_faults_and_cache_and_sort_busiest_first() {
        let l = ledger();
        let dev = Dev {
            major: 254,
            minor: 0,
        }
        .to_kernel();
        let mut s = Snapshot::default();
        s.mappings.insert(
            key(10, kind::FILE | kind::SHARED, 0x1000, 42),
            faults(10, 1, 0, 0),
        );
        s.mappings
            .insert(key(10, kind::FILE, 0x40000, 43), faults(300, 0, 256, 256));
        s.mappings
            .insert(key(10, 0, 0x20000, 0), faults(5, 0, 5, 0));
        s.files.insert(
            FileKey {
                ino: 42,
                dev,
                _pad: 0,
            },
            CacheCounters {
                added: 5000,
                evicted: 100,
                refaulted: 50,
                evicted_by: [60, 0, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0],
                evicted_owned: 60,
                readded: 7,
            },
        );
        s.files.insert(
            FileKey {
                ino: 99,
                dev,
                _pad: 0,
            },
            CacheCounters {
                added: 1,
                ..Default::default()
            },
        );
        let r = l.report(&s);
        assert_eq!(r.files[0].evicted_by["memcg_reclaim"], 60);
        assert_eq!(r.files[0].evicted_by["fadvise"], 40);
        assert_eq!(r.files[0].evicted_by.len(), mmtrace_common::reason::COUNT);
        assert_eq!(r.files[0].evicted_owned_pages, None, "no cgroup traced");
        let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/data/a.bin", "/data/b.bin", "[254:0:99]", "[anon]"]
        );
        let a = &r.files[0];
        assert_eq!(
            (
                a.pages_added,
                a.pages_evicted,
                a.refault_pages,
                a.readded_pages
            ),
            (5000, 100, 50, 7)
        );
        assert_eq!((a.minor_faults, a.major_faults), (10, 1));
        let b = &r.files[1];
        assert_eq!(b.cow_faults, 256);
        assert!(!r.files[2].path_known);
        assert_eq!(r.files[3].kind, FileKind::Anon);
        assert_eq!(r.files[3].minor_faults, 5);
        assert_eq!(r.files[3].resident_pages, Some(100));
    }

    #[test]
    fn mappings_are_labelled_from_proc_maps_even_after_the_stack_grows() {
        let mut l = ledger();
        l.observe(
            10,
            None,
            None,
            Some(vec![map_entry(
                0x7000_0000,
                0x7002_0000,
                "[stack]",
                0,
                false,
            )]),
            &[],
        );
        let mut s = Snapshot::default();
        // vm_start recorded when the stack was smaller (higher start).
        s.mappings
            .insert(key(10, 0, 0x7001_0000, 0), faults(3, 0, 3, 0));
        s.mappings
            .insert(key(10, kind::UNATTRIBUTED, 0, 0), faults(1, 0, 0, 0));
        let r = l.report(&s);
        let kinds: Vec<MappingKind> = r.mappings.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, [MappingKind::Stack, MappingKind::Unattributed]);
        assert_eq!(r.mappings[0].perms.as_deref(), Some("rw-p"));
        assert!(r.files.iter().any(|f| f.kind == FileKind::Unattributed));
    }

    #[test]
    fn paths_outlive_their_mappings() {
        let mut l = ledger();
        l.observe(10, None, None, Some(vec![]), &[]);
        l.mark_gone(10);
        let mut s = Snapshot::default();
        s.mappings.insert(
            key(10, kind::FILE | kind::SHARED, 0x1000, 42),
            faults(1, 0, 0, 0),
        );
        let r = l.report(&s);
        assert_eq!(r.files[0].path, "/data/a.bin");
        assert!(r.files[0].path_known);
        assert_eq!(r.processes[0].kernel_source, Some(KernelSource::LastSample));
    }

    #[test]
    fn errors_are_reported_with_meaning() {
        let l = Ledger::new(4096);
        let mut s = Snapshot::default();
        s.errors[mmtrace_common::errors::MAPPING_FULL as usize] = 3;
        s.lost_faults = faults(3, 0, 0, 0);
        let r = l.report(&s);
        assert_eq!(r.lost_faults, 3);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].name, "mapping_map_full");
    }

    fn prow(pid: u32, cg: &str, faults: u64, target: bool) -> ProcessRow {
        ProcessRow {
            pid,
            comm: format!("p{pid}"),
            cgroup: Some(cg.into()),
            alive: pid.is_multiple_of(2),
            target,
            minor_faults: faults,
            rss_anon_pages: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn processes_sum_by_cgroup_busiest_first() {
        let rows = [
            prow(1, "/a", 5, false),
            prow(2, "/b", 50, false),
            prow(3, "/a", 10, false),
        ];
        let v = by_cgroup(&rows);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].cgroup.as_str(), v[0].minor_faults), ("/b", 50));
        assert_eq!((v[1].processes, v[1].alive, v[1].minor_faults), (2, 0, 15));
        assert_eq!(v[1].rss_anon_pages, 2);
    }

    #[test]
    fn bounded_processes_keep_targets_and_sum_the_rest() {
        let rows: Vec<ProcessRow> = (1..=10).map(|i| prow(i, "/a", i as u64, i == 1)).collect();
        let total: u64 = rows.iter().map(|p| p.minor_faults).sum();
        let v = bound_processes(rows, 3);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].pid, 1, "the target stays");
        assert_eq!((v[1].pid, v[2].pid), (10, 9));
        assert_eq!(v[3].pid, 0);
        assert_eq!(v[3].comm, "others (7 processes)");
        assert_eq!(v.iter().map(|p| p.minor_faults).sum::<u64>(), total);
        assert_eq!(v[3].rss_anon_pages, Some(7));
        assert_eq!(bound_processes(vec![prow(1, "/a", 1, false)], 3).len(), 1);
    }
}
