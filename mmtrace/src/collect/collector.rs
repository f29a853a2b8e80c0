//! The collector: every tick it reads the kernel's maps, looks at `/proc`
//! for the processes in scope (new children, paths, RSS), keeps the cgroup
//! tree in step and samples its memory, and drains the notice ring buffer
//! (new files, OOM kills). It feeds the model (the [`Ledger`]) and builds
//! the records from it. Nothing here prints.
use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use mmtrace_common::{FaultCounters, Notice, SignalNotice, notice};

use crate::model::FileId;
use tokio::io::unix::AsyncFd;

use super::{
    Snapshot,
    cgroup_watch::CgroupWatch,
    events::{self, Kinds, RawEvent},
    loader::Tracer,
};
use crate::{
    cgroup,
    devnum::Dev,
    model::{self, Ledger, OomKill, Report},
    names::Names,
    procfs::{self, ProcError},
    record::{CgroupRecord, CgroupRow},
    residency,
    signals::{self, SignalRecord},
};

pub struct Collector {
    tracer: Tracer,
    notices: AsyncFd<RingBuf<MapData>>,
    /// The raw-event ring buffer (`--events`).
    events: AsyncFd<RingBuf<MapData>>,
    kinds: Kinds,
    /// `CLOCK_MONOTONIC` at the start: raw events' time origin.
    start_ns: u64,
    write_faults: bool,
    pub ledger: Ledger,
    names: Names,
    pub watch: Option<CgroupWatch>,
    root: PathBuf,
    start: Instant,
    self_pid: u32,
    follow: bool,
    /// `--all`: the scope is every process; /proc is read for the ones the
    /// kernel saw fault (and those already known), not for all of them.
    all: bool,
    /// The last map snapshot.
    pub snap: Snapshot,
    page_size: u64,
    retain_exited: Duration,
    /// Clock ticks since boot when tracing began (`starttime` of a process
    /// born later is larger: its counters started at zero, all traced).
    start_ticks: u64,
    /// `--all`: counters of the processes alive at the attach, taken when
    /// each is first looked at.
    baselines: HashMap<u32, Baseline>,
    /// When each process was first seen gone (it is folded away after
    /// `retain_exited`).
    gone_since: HashMap<u32, Instant>,
    /// Signal records not handed out yet ([`Collector::take_signals`]).
    new_signals: Vec<SignalRecord>,
}

/// Which ring buffer has data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    Notices,
    Events,
}

/// What the collector starts from.
pub struct Setup {
    pub tracer: Tracer,
    pub watch: Option<CgroupWatch>,
    pub page_size: u64,
    pub self_pid: u32,
    pub follow: bool,
    pub all: bool,
    pub owner_known: bool,
    /// Raw events asked for.
    pub kinds: Kinds,
    /// Write faults are told apart on this kernel.
    pub write_faults: bool,
    /// Exited processes are folded away after this long.
    pub retain_exited: Duration,
    /// `--latency`: fault stall is reported.
    pub latency: bool,
    /// `--all`: every process's counters taken just before the attach.
    pub baselines: HashMap<u32, Baseline>,
}

/// A process's kernel fault counters at one moment: its stat and the sum
/// over its threads.
pub type Baseline = (procfs::ProcStat, (u64, u64));

/// The counters of every process on the host now (`--all`, before attach).
pub fn host_baselines(root: &Path) -> HashMap<u32, Baseline> {
    procfs::list_pids(root)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|pid| {
            let stat = procfs::read_stat(root, pid).ok()?;
            Some((pid, (stat, thread_faults(root, pid))))
        })
        .collect()
}

impl Collector {
    pub fn new(s: Setup) -> Result<Self> {
        let mut tracer = s.tracer;
        // SAFETY: the ring buffer's fd lives inside the AsyncFd until it drops.
        let notices = unsafe { AsyncFd::register(tracer.take_notices()?) }
            .map_err(|e| anyhow::anyhow!("polling the notice ring buffer: {e}"))?;
        // SAFETY: as above.
        let events = unsafe { AsyncFd::register(tracer.take_events()?) }
            .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
        let mut ledger = Ledger::new(s.page_size);
        ledger.owner_known = s.owner_known;
        ledger.tlb_known = tracer
            .probes()
            .iter()
            .any(|p| p.program == "tlb_flush" && p.attached);
        ledger.latency = s.latency;
        Ok(Self {
            tracer,
            notices,
            events,
            kinds: s.kinds,
            start_ns: events::monotonic_ns(),
            write_faults: s.write_faults,
            ledger,
            names: Names::default(),
            watch: s.watch,
            root: PathBuf::from("/proc"),
            start: Instant::now(),
            self_pid: s.self_pid,
            follow: s.follow,
            all: s.all,
            snap: Snapshot::default(),
            page_size: s.page_size,
            retain_exited: s.retain_exited,
            start_ticks: boot_ticks_now(),
            baselines: s.baselines,
            gone_since: HashMap::new(),
            new_signals: Vec::new(),
        })
    }

    pub fn tracer(&mut self) -> &mut Tracer {
        &mut self.tracer
    }

    /// The probe table's outcome on this kernel.
    pub fn probes(&self) -> &[crate::kernel::probes::ProbeStatus] {
        self.tracer.probes()
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Takes the first look at a target. `Ok(false)`: it is gone already.
    pub fn add_target(&mut self, pid: u32) -> Result<bool, ProcError> {
        let stat = match procfs::read_stat(&self.root, pid) {
            Ok(s) => s,
            Err(ProcError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let threads = thread_faults(&self.root, pid);
        self.ledger.add_process(pid, true, Some(&stat), threads);
        self.note_cgroup(pid);
        Ok(true)
    }

    /// Raw events are streamed (`--events`).
    pub fn kinds(&self) -> Kinds {
        self.kinds
    }

    /// Waits until a ring buffer has data: the notices, or the raw events
    /// (with `--events` faults, adds or evictions).
    pub async fn ready(&mut self) -> Result<Ready> {
        let events_on = self.kinds.mask != 0;
        tokio::select! {
            g = self.notices.readable_mut() => {
                g.context("polling the notice ring buffer")?.clear_ready();
                Ok(Ready::Notices)
            }
            g = self.events.readable_mut(), if events_on => {
                g.context("polling the event ring buffer")?.clear_ready();
                Ok(Ready::Events)
            }
        }
    }

    /// Every raw event waiting in the ring buffer, as records. Notices go
    /// first, so files new to these events have their paths.
    pub fn drain_events(&mut self) -> (Vec<RawEvent>, Vec<OomKill>) {
        let kills = self.drain_notices();
        let ledger = &self.ledger;
        let path = |dev: u32, ino: u64| {
            let p = ledger.paths.get(&(dev, ino))?;
            Some((p.path.clone(), p.raw.as_deref().map(model::hex)))
        };
        let comm = |pid: u32| ledger.procs.get(&pid).map(|p| p.comm.clone());
        let cx = events::Context {
            start_ns: self.start_ns,
            page_size: self.page_size,
            write_faults: self.write_faults,
            path: &path,
            comm: &comm,
        };
        let rb = self.events.get_mut();
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            if let Some(r) = events::decode(&item).and_then(|e| events::record(&e, &cx)) {
                out.push(r);
            }
        }
        (out, kills)
    }

    /// Raw events the ring buffer dropped so far (`None`: none are asked).
    pub fn events_dropped(&self) -> Option<u64> {
        if self.kinds.mask == 0 {
            return None;
        }
        self.tracer.events_dropped().ok()
    }

    /// Acts on the kernel's notices: a new file of interest is looked up in
    /// the maps of the process that touched it, while that mapping still
    /// exists; an OOM kill of a traced process is recorded and returned.
    pub fn drain_notices(&mut self) -> Vec<OomKill> {
        let mut kills = Vec::new();
        let mut sigs = Vec::new();
        let rb = self.notices.get_mut();
        while let Some(item) = rb.next() {
            let Some(kind) = item
                .get(..4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            else {
                continue;
            };
            if kind == notice::OOM_KILL
                && item.len() >= std::mem::size_of::<mmtrace_common::OomKill>()
            {
                // SAFETY: the kernel wrote an OomKill; read_unaligned copes with alignment.
                let k: mmtrace_common::OomKill =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                if k.in_scope != 0 || self.ledger.procs.contains_key(&k.pid) {
                    let cg =
                        std::fs::read_to_string(self.root.join(k.pid.to_string()).join("cgroup"))
                            .ok()
                            .and_then(|t| cgroup::memory_cgroup_of(&t));
                    kills.push(oom_kill(&k, cg, self.start.elapsed().as_secs_f64()));
                }
                continue;
            }
            if kind == notice::SIGNAL && item.len() >= std::mem::size_of::<SignalNotice>() {
                // SAFETY: the kernel wrote a SignalNotice; read_unaligned copes with alignment.
                let n: SignalNotice = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                sigs.push(n);
                continue;
            }
            if kind != notice::NEW_FILE || item.len() < std::mem::size_of::<Notice>() {
                continue;
            }
            // SAFETY: the kernel wrote a Notice; read_unaligned copes with alignment.
            let n: Notice = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            if self.ledger.knows((n.dev, n.ino)) {
                continue;
            }
            let maps = procfs::read_maps(&self.root, n.pid).unwrap_or_default();
            let fds = procfs::read_fd_files(&self.root, n.pid).unwrap_or_default();
            take_handles(&mut self.names, &self.root, n.pid, &maps, &fds);
            self.ledger.learn_paths(&maps, &fds);
        }
        for n in sigs {
            let r = self.signal_record(&n);
            self.ledger.add_signal(r.clone());
            self.new_signals.push(r);
        }
        self.ledger.oom_kills.extend(kills.iter().cloned());
        kills
    }

    /// Signal records since the last call, in order (emitted as they come).
    pub fn take_signals(&mut self) -> Vec<SignalRecord> {
        std::mem::take(&mut self.new_signals)
    }

    /// Resolves a signal notice: the faulting task is usually still there
    /// (in its handler, or dying), so its maps are read now for the path;
    /// the ledger's last look at them is the fallback.
    fn signal_record(&mut self, n: &SignalNotice) -> SignalRecord {
        let fresh = procfs::read_maps(&self.root, n.tgid).ok();
        if let Some(maps) = &fresh {
            let fds = procfs::read_fd_files(&self.root, n.tgid).unwrap_or_default();
            take_handles(&mut self.names, &self.root, n.tgid, maps, &fds);
            self.ledger.learn_paths(maps, &fds);
        }
        let maps: &[procfs::MapEntry] = match &fresh {
            Some(m) => m,
            None => self
                .ledger
                .procs
                .get(&n.tgid)
                .map(|p| p.maps.as_slice())
                .unwrap_or_default(),
        };
        let ledger = &self.ledger;
        let ps = self.page_size;
        signals::record(
            n,
            maps,
            ps,
            |id| ledger.paths.get(&id).map(|p| p.path.clone()),
            |id, path| {
                let p = ledger
                    .paths
                    .get(&id)
                    .map(|p| p.fs_path())
                    .or_else(|| path.map(Into::into))?;
                signals::file_size_pages(id, p.to_str(), ps)
            },
            self.start.elapsed().as_secs_f64(),
        )
    }

    /// One tick: the maps, then /proc for every process in scope (new
    /// children get a zero baseline: they were born inside the trace), the
    /// files they map or hold open, then the cgroup tree and its memory.
    pub fn refresh(&mut self) -> Result<()> {
        self.snap = self.tracer.snapshot()?;
        let mut pids: BTreeSet<u32> = self.snap.scope.keys().copied().collect();
        if self.all {
            pids.extend(self.snap.mappings.keys().map(|k| k.tgid));
            pids.remove(&self.self_pid);
            pids.remove(&0);
        }
        pids.extend(
            self.ledger
                .procs
                .iter()
                .filter(|(_, p)| p.alive)
                .map(|(pid, _)| *pid),
        );
        for pid in pids {
            self.refresh_process(pid);
        }
        self.tracer.register_files(&self.ledger.known_files())?;
        if let Some(w) = &mut self.watch {
            let tracer = &mut self.tracer;
            if self.all {
                // The kernel's scope is every process: no cgroup set to keep.
                w.rescan_dirs();
            } else {
                w.sync(|keys| tracer.set_cgroups(keys))?;
            }
            let members = if self.all { Vec::new() } else { w.procs() };
            w.sample();
            self.join_members(members)?;
        }
        self.cgroups_at_exit();
        self.fold_exited()
    }

    /// Processes that died before their cgroup was read from /proc get the
    /// memory cgroup the kernel saw them die in.
    fn cgroups_at_exit(&mut self) {
        let Some(w) = &self.watch else {
            return;
        };
        let unknown: Vec<(u32, u64)> = self
            .snap
            .exits
            .iter()
            .filter(|(pid, e)| {
                e.group_dead != 0
                    && e.memcg_id != 0
                    && self
                        .ledger
                        .procs
                        .get(pid)
                        .is_none_or(|p| p.cgroup.is_none())
            })
            .map(|(pid, e)| (*pid, e.memcg_id))
            .collect();
        if unknown.is_empty() {
            return;
        }
        let by_id: HashMap<u64, String> = w
            .dirs
            .iter()
            .filter_map(|(dir, id)| {
                let rel = dir.strip_prefix(&w.cg.path).ok()?;
                Some((*id, format!("/{}", rel.display())))
            })
            .collect();
        for (pid, id) in unknown {
            if let Some(cg) = by_id.get(&id) {
                self.ledger.cgroup_at_exit(pid, cg.clone());
            }
        }
    }

    /// Folds processes gone for longer than `retain_exited` into their
    /// cgroup's `exited` row and deletes their kernel map entries.
    fn fold_exited(&mut self) -> Result<()> {
        let now = Instant::now();
        let mut seen: BTreeSet<u32> = self.snap.mappings.keys().map(|k| k.tgid).collect();
        seen.extend(self.snap.exits.keys());
        seen.extend(self.snap.tlb.keys());
        seen.extend(self.ledger.procs.keys());
        let mut due = BTreeSet::new();
        for pid in seen {
            let keep = pid == 0
                || self
                    .ledger
                    .procs
                    .get(&pid)
                    .is_some_and(|p| p.alive || p.target)
                || procfs::pid_exists(&self.root, pid);
            if keep {
                self.gone_since.remove(&pid);
            } else if self.snap.pending.contains(&pid) {
                // Faults of its still sit in a per-CPU slot: fold it once
                // they are flushed, or they would come back as a new entry.
            } else if now - *self.gone_since.entry(pid).or_insert(now) >= self.retain_exited {
                due.insert(pid);
            }
        }
        self.gone_since.retain(|p, _| !due.contains(p));
        if due.is_empty() {
            return Ok(());
        }
        let deleted = self.tracer.forget(&due)?;
        // TLB counters as they were at the delete (nothing is lost between
        // this tick's read and the delete); folded into the exited row.
        let tlb = self.tracer.forget_tlb(&due)?;
        self.snap.tlb.extend(tlb);
        self.ledger.fold(&due, &deleted, &self.snap);
        self.snap.tlb.retain(|p, _| !due.contains(p));
        // This tick's snapshot must not count them twice.
        for (k, c) in &deleted {
            if let Some(m) = self.snap.mappings.get_mut(k) {
                *m = minus(m, c);
                if *m == FaultCounters::default() {
                    self.snap.mappings.remove(k);
                }
            }
        }
        self.snap.exits.retain(|p, _| !due.contains(p));
        self.snap.proc_stall.retain(|p, _| !due.contains(p));
        Ok(())
    }

    fn in_scope(&self, pid: u32) -> bool {
        self.snap.scope.contains_key(&pid)
            || (self.all && pid != self.self_pid && procfs::pid_exists(&self.root, pid))
    }

    fn refresh_process(&mut self, pid: u32) {
        if !self.in_scope(pid) {
            self.ledger.mark_gone(pid);
            return;
        }
        let root = self.root.clone();
        let root = root.as_path();
        if !self.ledger.procs.contains_key(&pid) {
            // Born inside the trace: its counters started at zero. Moved
            // into the traced cgroup, or already running under --all: it
            // lived before, so take a baseline now.
            let at_attach = self.baselines.remove(&pid);
            let joined = |stat: &procfs::ProcStat| {
                if self.all {
                    // Under --all every process is traced from its first
                    // fault if it started after the attach.
                    stat.starttime <= self.start_ticks
                } else {
                    self.snap.scope[&pid].flags & mmtrace_common::scope::JOINED != 0
                }
            };
            match (procfs::read_stat(root, pid), at_attach) {
                // Alive at the attach (the same process: same start time).
                (Ok(now), Some((then, threads))) if now.starttime == then.starttime => {
                    self.ledger.add_process(pid, false, Some(&then), threads)
                }
                (Ok(stat), _) if joined(&stat) => {
                    self.ledger
                        .add_process(pid, false, Some(&stat), thread_faults(root, pid))
                }
                _ => self.ledger.add_process(pid, false, None, (0, 0)),
            }
            self.note_cgroup(pid);
        }
        match procfs::read_stat(root, pid) {
            Ok(stat) => {
                let status = procfs::read_status(root, pid).ok();
                let maps = procfs::read_maps(root, pid).ok();
                let fds = procfs::read_fd_files(root, pid).unwrap_or_default();
                take_handles(
                    &mut self.names,
                    root,
                    pid,
                    maps.as_deref().unwrap_or_default(),
                    &fds,
                );
                self.ledger.observe(pid, Some(&stat), status, maps, &fds);
                // Again every look: a process may move (a command mmtrace
                // starts joins --cgroup after its first look; systemd
                // moves what it starts).
                self.note_cgroup(pid);
            }
            Err(_) => self.ledger.mark_gone(pid),
        }
    }

    /// Processes of the cgroup tree the kernel did not see enter (moved
    /// before the tree was known) join the scope now.
    fn join_members(&mut self, members: Vec<u32>) -> Result<()> {
        for pid in members {
            if pid == self.self_pid
                || self.snap.scope.contains_key(&pid)
                || self.ledger.procs.contains_key(&pid)
            {
                continue;
            }
            let Ok(stat) = procfs::read_stat(&self.root, pid) else {
                continue;
            };
            self.tracer.add_to_scope(pid, self.follow)?;
            let threads = thread_faults(&self.root, pid);
            self.ledger.add_process(pid, true, Some(&stat), threads);
            self.note_cgroup(pid);
        }
        Ok(())
    }

    fn note_cgroup(&mut self, pid: u32) {
        let cg = std::fs::read_to_string(self.root.join(pid.to_string()).join("cgroup"))
            .ok()
            .and_then(|t| cgroup::memory_cgroup_of(&t));
        self.ledger.set_cgroup(pid, cg);
    }

    /// Whether every named target is gone (`--pid` traces end then).
    pub fn targets_gone(&self, pids: &[u32]) -> bool {
        pids.iter()
            .all(|&p| !procfs::pid_exists(&self.root, p) || !self.snap.scope.contains_key(&p))
    }

    /// The report now: names refreshed (renames), residency measured.
    pub fn report(&mut self) -> Report {
        // Host-wide, thousands of files may be known: names and residency
        // (a syscall or three per file) are refreshed for the busiest only.
        let only = self.all.then(|| busiest_files(&self.snap, BUSIEST_FILES));
        refresh_names(&mut self.ledger, &mut self.names, only.as_ref());
        let paths = &self.ledger.paths;
        signals::fill_paths(&mut self.ledger.signals, |id| {
            paths.get(&id).map(|p| p.path.clone())
        });
        update_residency(&mut self.ledger, &self.snap, only.as_ref());
        self.ledger.report(&self.snap)
    }

    /// Per-cgroup rows (host-wide traces) and the process rows bounded to
    /// `top` with an `others` row; other traces keep every row.
    pub fn shape(&self, mut r: Report, top: usize) -> (Report, Vec<CgroupRow>) {
        if !self.all {
            return (r, Vec::new());
        }
        let cgroups = model::by_cgroup(&r.processes);
        r.processes = model::bound_processes(std::mem::take(&mut r.processes), top);
        r.files = model::bound_files(std::mem::take(&mut r.files), BUSIEST_FILES);
        (r, cgroups)
    }

    pub fn cgroup_record(&self) -> Option<CgroupRecord> {
        self.watch
            .as_ref()
            .map(|w| w.record(&self.snap.reclaim, self.page_size))
    }

    pub fn cgroup_gone(&self) -> bool {
        self.watch.as_ref().is_some_and(CgroupWatch::gone)
    }

    /// The end of the trace: the last notices, the programs detached (the
    /// final read then sees counters that no longer move), the last look at
    /// /proc and the cgroup, unknown paths looked up host-wide.
    pub fn finish(&mut self) -> Result<Vec<OomKill>> {
        let kills = self.drain_notices();
        // Nothing traced alive (the command and its children have exited):
        // no counter of theirs moves, the final read can come first and the
        // slow detach after mmtrace has exited.
        let quiescent = !self.all
            && self.watch.is_none()
            && self.tracer.scope_pids().is_ok_and(|pids| {
                pids.iter()
                    .all(|&p| p == self.self_pid || !procfs::pid_exists(&self.root, p))
            });
        if !quiescent {
            self.tracer.detach();
        }
        self.refresh()?;
        if quiescent {
            self.tracer.detach_after_exit();
        }
        resolve_unknown(&mut self.ledger, &self.snap, &self.root);
        Ok(kills)
    }
}

/// The userspace form of the kernel's OOM-kill record (kB → bytes).
fn oom_kill(k: &mmtrace_common::OomKill, cgroup: Option<String>, elapsed_s: f64) -> OomKill {
    OomKill {
        pid: k.pid,
        comm: super::maps::comm_string(&k.comm),
        anon_rss_bytes: k.anon_rss_kb * 1024,
        file_rss_bytes: k.file_rss_kb * 1024,
        shmem_rss_bytes: k.shmem_rss_kb * 1024,
        total_vm_bytes: k.total_vm_kb * 1024,
        oom_score_adj: k.oom_score_adj,
        in_scope: k.in_scope != 0,
        cgroup,
        elapsed_s,
    }
}

/// Last resort for files whose path is still unknown (their process was too
/// short-lived): any process on the machine that maps or holds them.
fn resolve_unknown(ledger: &mut Ledger, snap: &Snapshot, root: &Path) {
    let unknown = snap
        .files
        .keys()
        .map(|k| (k.dev, k.ino))
        .chain(
            snap.mappings
                .keys()
                .filter(|k| k.kind & mmtrace_common::kind::FILE != 0)
                .map(|k| (k.dev, k.ino)),
        )
        .any(|id| !ledger.knows(id));
    if !unknown {
        return;
    }
    for pid in procfs::list_pids(root).unwrap_or_default() {
        let maps = procfs::read_maps(root, pid).unwrap_or_default();
        let fds = procfs::read_fd_files(root, pid).unwrap_or_default();
        ledger.learn_paths(&maps, &fds);
    }
}

/// Takes a file handle for every file a process maps or holds open that
/// has none yet, through its `/proc` link (see `names`).
fn take_handles(
    names: &mut Names,
    root: &Path,
    pid: u32,
    maps: &[procfs::MapEntry],
    fds: &[procfs::OpenFile],
) {
    let dir = root.join(pid.to_string());
    for m in maps.iter().filter(|m| m.is_file()) {
        let id = (m.dev.to_kernel(), m.ino);
        if !names.tried(id) {
            names.learn(
                id,
                &dir.join(format!("map_files/{:x}-{:x}", m.start, m.end)),
            );
        }
    }
    for f in fds {
        let id = (f.dev.to_kernel(), f.ino);
        if !names.tried(id) {
            names.learn(id, &dir.join(format!("fd/{}", f.fd)));
        }
    }
}

/// Every known path becomes the file's name now (after renames), or is
/// marked deleted.
fn refresh_names(ledger: &mut Ledger, names: &mut Names, only: Option<&BTreeSet<FileId>>) {
    for (id, info) in ledger.paths.iter_mut() {
        if only.is_some_and(|o| !o.contains(id)) {
            continue;
        }
        let now = names.current(*id, info);
        if now.path.is_empty() {
            info.deleted = true;
        } else {
            *info = now;
        }
    }
}

/// Residency of every reported file (cachestat, or mincore).
fn update_residency(ledger: &mut Ledger, snap: &Snapshot, only: Option<&BTreeSet<FileId>>) {
    let mut ids: BTreeSet<(u32, u64)> = snap.files.keys().map(|k| (k.dev, k.ino)).collect();
    ids.extend(
        snap.mappings
            .keys()
            .filter(|k| k.kind & mmtrace_common::kind::FILE != 0)
            .map(|k| (k.dev, k.ino)),
    );
    if let Some(o) = only {
        ids.retain(|id| o.contains(id));
    }
    for id in ids {
        let Some(p) = ledger.paths.get(&id) else {
            continue;
        };
        if p.deleted {
            continue;
        }
        let expect = (Dev::from_kernel(id.0), id.1);
        match residency::file_residency(&p.fs_path(), Some(expect)) {
            Ok(r) => {
                ledger.residency.insert(id, r);
            }
            Err(e) => log::debug!("residency of {}: {e}", p.path),
        }
    }
}

/// Sum of the kernel's fault counters over a process's live threads.
pub fn thread_faults(root: &Path, pid: u32) -> (u64, u64) {
    procfs::list_tasks(root, pid)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| procfs::read_task_stat(root, pid, t).ok())
        .fold((0, 0), |a, s| (a.0 + s.minflt, a.1 + s.majflt))
}

/// `a - b`, counter by counter (what a snapshot held beyond `b`).
fn minus(a: &FaultCounters, b: &FaultCounters) -> FaultCounters {
    FaultCounters {
        minor: a.minor.saturating_sub(b.minor),
        major: a.major.saturating_sub(b.major),
        write: a.write.saturating_sub(b.write),
        cow: a.cow.saturating_sub(b.cow),
        pages_mapped: a.pages_mapped.saturating_sub(b.pages_mapped),
        wp_shared: a.wp_shared.saturating_sub(b.wp_shared),
    }
}

/// `CLOCK_BOOTTIME` in clock ticks (the unit of `/proc/<pid>/stat`
/// `starttime`).
fn boot_ticks_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; sysconf cannot fail for _SC_CLK_TCK.
    let hz = unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
        libc::sysconf(libc::_SC_CLK_TCK).max(1) as u64
    };
    ts.tv_sec as u64 * hz + ts.tv_nsec as u64 * hz / 1_000_000_000
}

/// Files whose names and residency are refreshed every interval under
/// `--all` (the rest keep their last values).
const BUSIEST_FILES: usize = 500;

/// The `n` files with the most faults, additions and evictions so far.
fn busiest_files(snap: &Snapshot, n: usize) -> BTreeSet<FileId> {
    let mut activity: HashMap<FileId, u64> = HashMap::new();
    for (k, c) in &snap.files {
        *activity.entry((k.dev, k.ino)).or_default() += c.added + c.evicted;
    }
    for (k, c) in &snap.mappings {
        if k.kind & mmtrace_common::kind::FILE != 0 {
            *activity.entry((k.dev, k.ino)).or_default() += c.minor + c.major;
        }
    }
    let mut v: Vec<(u64, FileId)> = activity.into_iter().map(|(id, a)| (a, id)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.into_iter().take(n).map(|(_, id)| id).collect()
}
