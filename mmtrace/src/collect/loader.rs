//! Loads mmtrace's eBPF object with this kernel's [`Config`], attaches every
//! program (each failure names the program and hook), and gives typed access
//! to the maps. Dropping the [`Tracer`] detaches everything.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{
        PerfEvent, RawTracePoint, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::{nr_cpus, online_cpus},
};
use mmtrace_common::{
    CacheCounters, CgroupKey, Comm, Config, ExitRecord, FaultCounters, FileKey, LatencyHist,
    LatencyKey, MappingKey, ProcStall, ReclaimStats, ScopeEntry, TlbCounters, VmaCache,
    WriteCounters, errors, latency_miss,
};

use super::maps::{Snapshot, comm_string, sum_cache, sum_faults};
use crate::kernel::{
    offsets::Features,
    probes::{Hook, PROBES, Probe, ProbeStatus, SoftwareCounter},
};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mmtrace"));

/// Map capacities (entries).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub processes: u32,
    pub mappings: u32,
    pub files: u32,
    pub evicted: u32,
    /// Bytes of the raw-event ring buffer.
    pub events_bytes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use mmtrace_common::limits;
        Self {
            processes: limits::SCOPE,
            mappings: limits::MAPPINGS,
            files: limits::FILES,
            evicted: limits::EVICTED,
            events_bytes: limits::EVENTS_BYTES_OFF,
        }
    }
}

/// aya's loader being created by [`prefetch_loader`], if it was called.
static PREFETCH: std::sync::Mutex<Option<std::thread::JoinHandle<EbpfLoader<'static>>>> =
    std::sync::Mutex::new(None);

/// Starts creating aya's loader on a thread of its own: `EbpfLoader::new`
/// parses the whole kernel BTF (aya 0.14; 50-300 ms on a 2-vCPU VM), which
/// then overlaps with mmtrace's own BTF lookups and /proc/kallsyms. mmtrace
/// needs none of it (no CO-RE relocations, no BTF-attached programs), but
/// aya offers no way to skip it. Without this, [`Tracer::load`] creates
/// the loader itself.
pub fn prefetch_loader() {
    if let Ok(mut p) = PREFETCH.lock()
        && p.is_none()
    {
        *p = std::thread::Builder::new()
            .name("btf".into())
            .spawn(EbpfLoader::new)
            .ok();
    }
}

fn new_loader() -> EbpfLoader<'static> {
    let started = PREFETCH.lock().ok().and_then(|mut p| p.take());
    started.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Program types mmtrace loads (aya gives each its own `load`).
trait Loadable {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

macro_rules! loadable {
    ($($t:ty),*) => {$(
        impl Loadable for $t {
            /// Loads once (the verifier runs before any attach; see `attach`).
            fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
                if self.fd().is_ok() {
                    return Ok(());
                }
                self.load()
            }
        }
    )*};
}
loadable!(TracePoint, RawTracePoint, PerfEvent);

/// Loads (verifies) the program of probe `p`.
fn load_one(p: &Probe, prog: &mut aya::programs::Program) -> Result<()> {
    fn load<'a, T>(prog: &'a mut aya::programs::Program) -> Result<()>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
        T: Loadable + 'a,
    {
        let t: &mut T = prog.try_into()?;
        Ok(t.load_program()?)
    }
    let t0 = std::time::Instant::now();
    let r = match p.hook {
        Hook::Tracepoint { .. } => load::<TracePoint>(prog),
        Hook::RawTracepoint { .. } => load::<RawTracePoint>(prog),
        Hook::PerfSoftware(_) => load::<PerfEvent>(prog),
    };
    log::debug!(
        "program {} loaded in {:.1} ms ({:.1} ms of CPU)",
        p.program,
        t0.elapsed().as_secs_f64() * 1e3,
        crate::timing::thread_cpu_ms()
    );
    r.with_context(|| format!("the kernel verifier rejected program {}", p.program))
}

/// Why an optional probe cannot be attached on this kernel, known before
/// trying (its tracepoint is missing or has another layout).
fn unavailable(p: &Probe, f: &Features) -> Option<&'static str> {
    // A diagnostic knob for side-by-side cost measurements: optional probes
    // named in MMTRACE_SKIP_PROBES (comma-separated programs) stay detached.
    if !p.required()
        && std::env::var("MMTRACE_SKIP_PROBES").is_ok_and(|v| v.split(',').any(|x| x == p.program))
    {
        return Some("skipped (MMTRACE_SKIP_PROBES)");
    }
    match p.program {
        "oom_mark_victim" if !f.oom_kills => Some("missing, or its layout is not the expected one"),
        "page_fault_user" | "page_fault_kernel" if !f.write_faults => {
            Some("the exceptions tracepoints are missing (not x86?)")
        }
        "writeback_dirty_folio" | "folio_wait_writeback" | "writeback_single_inode"
            if !f.write_path =>
        {
            Some("the kernel's BTF lacks the writeback structs' fields")
        }
        "msync_enter" | "msync_exit" if !f.msync => Some(
            "off without --msync-syscalls (every syscall on the host would pay for a syscall tracepoint), or missing",
        ),
        "ext4_sync_enter" | "ext4_sync_exit" if !f.ext4_msync => {
            Some("missing, not x86_64, or replaced by --msync-syscalls")
        }
        "ext4_writepages_result" if !f.ext4_writeback => Some("missing, or another layout"),
        "iomap_writeback_folio" if !f.iomap_writeback => Some("missing, or another layout"),
        _ => None,
    }
}

/// Forwards the eBPF programs' aya-log records to the `log` crate (shown
/// on stderr with -vv) from a task of the trace's runtime.
fn spawn_bpf_log(ebpf: &mut Ebpf) -> Result<()> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("reading the eBPF programs' log")?;
    // SAFETY: the logger owns the ring buffer's fd, which lives inside the
    // AsyncFd until it drops.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .context("polling the eBPF programs' log")?;
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

/// Why probe `p` is left detached although the kernel has it: counting
/// faults at entry makes the perf fault events (unless --latency or fault
/// events need the fault's end) and `filemap_fault` (the entry registers
/// the file of a vma when it looks it up) redundant.
fn not_needed(p: &Probe, at_entry: bool, perf_needed: bool) -> Option<&'static str> {
    match p.hook {
        Hook::PerfSoftware(_) if !perf_needed => Some(
            "not needed: faults are counted at fault entry \
             (exceptions:page_fault_user/kernel); attached with --latency or fault events",
        ),
        _ if at_entry && p.program == "filemap_fault" => Some(
            "not needed: faults are counted at fault entry, which registers the file of a vma \
             when it looks the vma up",
        ),
        _ if at_entry && p.program == "filemap_map_pages" => Some(
            "replaced by its raw tracepoint (filemap_map_pages_entry) when faults are counted at \
             fault entry",
        ),
        _ if !at_entry && p.program == "filemap_map_pages_entry" => {
            Some("not needed: faults are not counted at fault entry here")
        }
        _ => None,
    }
}

/// The loaded and attached programs.
pub struct Tracer {
    ebpf: Ebpf,
    nr_cpus: usize,
    /// Keeps the kernel's BPF run-time statistics on while held.
    stats: Option<std::os::fd::OwnedFd>,
    /// What was attached, row by row of the probe table.
    probes: Vec<ProbeStatus>,
    /// The attachments, owned here: dropping one detaches it.
    links: Vec<Box<dyn Send>>,
    /// The attachments that count faults (fault entry, perf fault events):
    /// detached last, see [`Tracer::detach`].
    fault_links: Vec<Box<dyn Send>>,
    /// `Config::coarse_mappings`: mapping rows without their range.
    coarse_mappings: bool,
    /// Probes whose hook gets another probe's program (see [`SHARED`]).
    served_by: BTreeMap<&'static str, &'static str>,
    /// The default trace's fault program is loaded ([`object_program`]).
    lean: bool,
}

/// Probes whose hook can take another probe's program, so that the kernel
/// verifies one program instead of two (the verifier's work is most of the
/// start-up's CPU time): `(probe, program)`.
///
/// `page_fault_user` and `page_fault_kernel` run the same code (`on_entry`
/// in mmtrace-ebpf's faults.rs) except that the kernel-mode one first skips
/// faults taken while the task has page faults disabled (nofault reads of
/// user memory). A task never runs user code with page faults disabled, so
/// on the user hook that check never skips (it is skipped for faults whose
/// error code says user mode): the kernel-mode program counts user faults
/// exactly as the user one does. Each is the costliest program to verify
/// (40-57 ms of CPU on the 2-vCPU VM).
const SHARED: &[(&str, &str)] = &[("page_fault_user", "page_fault_kernel")];

/// The object's program that runs for probe `program`: the default trace
/// (`lean`: faults counted at entry with the vma cache, no fault latency,
/// no fault events) gets `page_fault_count`, `page_fault_kernel` compiled
/// for that configuration alone (no branch for the others on the path
/// every fault runs through).
fn object_program(program: &'static str, lean: bool) -> &'static str {
    match program {
        "page_fault_kernel" if lean => "page_fault_count",
        p => p,
    }
}

/// Whether `config` is the default trace's, which `page_fault_count` is
/// compiled for.
fn lean_faults(config: &Config) -> bool {
    config.write_faults != 0
        && config.vma_cache != 0
        && config.latency == 0
        && config.events & mmtrace_common::event_mask::FAULTS == 0
}

/// Run-time statistics of one program (kernel BPF stats).
#[derive(Clone, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_run: Option<f64>,
}

impl Tracer {
    /// Loads the object, fills the scope with `targets` (before attaching, so
    /// nothing of theirs is missed once attached) and attaches every program.
    pub fn load(
        config: &Config,
        features: &Features,
        cap: Capacity,
        targets: &[(u32, bool)],
        bpf_log: bool,
        before_attach: impl FnOnce(),
    ) -> Result<Self> {
        // The programs' own diagnostics (aya-log): every level with -vv,
        // none otherwise (each log site then costs one global load).
        let log_level: u8 = if bpf_log { 0xff } else { 0 };
        let mut loader: EbpfLoader<'_> = new_loader();
        crate::timing::phase("aya's loader ready (its BTF parse)");
        let mut ebpf = loader
            .override_global("CONFIG", config, true)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries("SCOPE", cap.processes)
            .map_max_entries("EXITS", cap.processes)
            .map_max_entries("TLB_FLUSHES", cap.processes)
            .map_max_entries("MAPPING_FAULTS", cap.mappings)
            .map_max_entries("FILE_CACHE", cap.files)
            .map_max_entries("EVICTED", cap.evicted)
            .map_max_entries("EVENTS", cap.events_bytes)
            // Without --latency nothing is written to them: the smallest.
            .map_max_entries(
                "FAULT_LATENCY",
                if config.latency != 0 {
                    mmtrace_common::LATENCY_FILES
                } else {
                    1
                },
            )
            .map_max_entries(
                "PROC_STALL",
                if config.latency != 0 {
                    cap.processes
                } else {
                    1
                },
            )
            .load(EBPF_OBJECT)
            .context("loading mmtrace's eBPF object (maps and BTF) into the kernel")?;
        crate::timing::phase("maps created");
        if bpf_log {
            spawn_bpf_log(&mut ebpf)?;
        }
        let nr_cpus = nr_cpus().map_err(|(p, e)| anyhow!("reading {p}: {e}"))?;
        let mut t = Self {
            ebpf,
            nr_cpus,
            stats: None,
            probes: Vec::new(),
            links: Vec::new(),
            coarse_mappings: config.coarse_mappings != 0,
            served_by: BTreeMap::new(),
            lean: lean_faults(config),
            fault_links: Vec::new(),
        };
        for &(pid, follow) in targets {
            t.add_to_scope(pid, follow)?;
        }
        // With the raw fault-entry tracepoints, faults are counted at entry
        // (one program per fault); the perf events, which fire at the end of
        // every fault, only for what needs the end: latency, fault events.
        let at_entry = config.write_faults != 0;
        let perf_needed = !at_entry
            || config.latency != 0
            || config.events & mmtrace_common::event_mask::FAULTS != 0;
        t.probes = t.attach(features, at_entry, perf_needed, before_attach)?;
        Ok(t)
    }

    /// The program `name`, loaded into the kernel (verifier errors name it).
    fn loaded<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
        T: Loadable + 'a,
    {
        let p: &mut T = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        p.load_program()
            .with_context(|| format!("the kernel verifier rejected program {name}"))?;
        Ok(p)
    }

    /// Attaches every probe of the table; a required one that fails ends
    /// the load, an optional one is reported with what is lost.
    /// Every program is verified first, then `before_attach` runs, then all
    /// attach: the counting starts within a few milliseconds of it.
    fn attach(
        &mut self,
        features: &Features,
        at_entry: bool,
        perf_needed: bool,
        before_attach: impl FnOnce(),
    ) -> Result<Vec<ProbeStatus>> {
        let cpus = online_cpus().map_err(|(p, e)| anyhow!("reading {p}: {e}"))?;
        let mut verified = self.verify(features, at_entry, perf_needed);
        crate::timing::phase("programs verified");
        before_attach();
        let mut out = Vec::with_capacity(PROBES.len());
        for p in PROBES {
            let verified = verified.remove(p.program).unwrap_or_else(|| {
                Err(anyhow!(
                    "program {} missing from the eBPF object",
                    p.program
                ))
            });
            let r = verified.and_then(|()| self.attach_one(p, &cpus));
            // Counting at entry, the entry hooks are required.
            let required = p.required()
                || (at_entry
                    && (p.program.starts_with("page_fault_")
                        || p.program == "filemap_map_pages_entry"));
            match r {
                Ok(()) => out.push(ProbeStatus::new(p, Ok(()))),
                Err(e)
                    if not_needed(p, at_entry, perf_needed).is_some()
                        || features.left_out_by_choice(p.program) =>
                {
                    out.push(ProbeStatus::new(p, Err(format!("{e:#}"))));
                }
                Err(e) if !required => {
                    let s = ProbeStatus::new(p, Err(format!("{e:#}")));
                    log::warn!(
                        "{} not attached: {}",
                        s.hook,
                        s.missing.as_deref().unwrap_or("")
                    );
                    out.push(s);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Loads every available probe's program into the kernel, one thread
    /// each: the verifier runs for 2-60 ms per program, and the kernel
    /// verifies programs of privileged users in parallel (all in series
    /// took 0.18-0.24 s on a 2-vCPU VM). Outcome by program.
    fn verify(
        &mut self,
        features: &Features,
        at_entry: bool,
        perf_needed: bool,
    ) -> BTreeMap<&'static str, Result<()>> {
        let mut out = BTreeMap::new();
        let mut todo = Vec::new();
        for p in PROBES {
            match unavailable(p, features) {
                Some(why) => {
                    out.insert(p.program, Err(anyhow!(why)));
                }
                None => match not_needed(p, at_entry, perf_needed) {
                    Some(why) => {
                        out.insert(p.program, Err(anyhow!(why)));
                    }
                    None => todo.push(p),
                },
            }
        }
        // A probe whose hook another probe's program serves is not loaded
        // (both must be wanted; if only one is, it loads its own program).
        for &(probe, program) in SHARED {
            let wanted = |n: &str| todo.iter().any(|p| p.program == n);
            if wanted(probe) && wanted(program) {
                todo.retain(|p| p.program != probe);
                self.served_by.insert(probe, program);
            }
        }
        let lean = self.lean;
        let progs: Vec<(&'static Probe, &mut aya::programs::Program)> = self
            .ebpf
            .programs_mut()
            .filter_map(|(name, prog)| {
                let p = todo
                    .iter()
                    .find(|p| object_program(p.program, lean) == name)?;
                Some((*p, prog))
            })
            .collect();
        std::thread::scope(|s| {
            let running: Vec<_> = progs
                .into_iter()
                .map(|(p, prog)| (p, s.spawn(move || load_one(p, prog))))
                .collect();
            for (p, h) in running {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("loading program {} panicked", p.program)));
                out.insert(p.program, r);
            }
        });
        for (&probe, &program) in &self.served_by {
            let r = match out.get(program) {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(anyhow!("{e:#}")),
                None => Err(anyhow!("program {program} missing from the eBPF object")),
            };
            out.insert(probe, r);
        }
        out
    }

    fn attach_one(&mut self, p: &Probe, cpus: &[u32]) -> Result<()> {
        let prog = object_program(
            self.served_by.get(p.program).copied().unwrap_or(p.program),
            self.lean,
        );
        let counts_faults =
            matches!(p.hook, Hook::PerfSoftware(_)) || p.program.starts_with("page_fault_");
        let mut links = std::mem::take(if counts_faults {
            &mut self.fault_links
        } else {
            &mut self.links
        });
        let r = self.attach_into(p, prog, cpus, &mut links);
        if counts_faults {
            self.fault_links = links;
        } else {
            self.links = links;
        }
        r
    }

    /// Attaches `prog` to `p`'s hook; the attachment goes to `links`.
    fn attach_into(
        &mut self,
        p: &Probe,
        prog: &str,
        cpus: &[u32],
        out: &mut Vec<Box<dyn Send>>,
    ) -> Result<()> {
        match p.hook {
            Hook::Tracepoint { category, event } => {
                let p = self.loaded::<TracePoint>(prog)?;
                let id = p.attach(category, event).with_context(|| {
                    format!("attaching {prog} to tracepoint {category}:{event}")
                })?;
                let link = p.take_link(id)?;
                out.push(Box::new(link));
            }
            Hook::RawTracepoint { event, .. } => {
                let p = self.loaded::<RawTracePoint>(prog)?;
                let id = p
                    .attach(event)
                    .with_context(|| format!("attaching {prog} to raw tracepoint {event}"))?;
                let link = p.take_link(id)?;
                out.push(Box::new(link));
            }
            Hook::PerfSoftware(c) => {
                let ev = match c {
                    SoftwareCounter::MinorFaults => SoftwareEvent::PageFaultsMin,
                    SoftwareCounter::MajorFaults => SoftwareEvent::PageFaultsMaj,
                };
                let mut links: Vec<Box<dyn Send>> = Vec::new();
                let prog_ref = self.loaded::<PerfEvent>(prog)?;
                for &cpu in cpus {
                    let id = prog_ref
                        .attach(
                            PerfEventConfig::Software(ev),
                            PerfEventScope::AllProcessesOneCpu { cpu },
                            SamplePolicy::Period(1),
                            false,
                        )
                        .with_context(|| {
                            format!("attaching {prog} to software perf event {ev:?} on CPU {cpu}")
                        })?;
                    links.push(Box::new(prog_ref.take_link(id)?));
                }
                out.extend(links);
            }
        }
        Ok(())
    }

    /// What was attached (the probe table's rows, with the outcome).
    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    fn map<'a>(&'a self, name: &str) -> Result<&'a aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    }

    fn map_mut<'a>(&'a mut self, name: &str) -> Result<&'a mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the eBPF object"))
    }

    /// Turns on the kernel's per-program run-time statistics (BPF_ENABLE_STATS).
    pub fn enable_stats(&mut self) -> Result<()> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
        self.stats = Some(fd);
        Ok(())
    }

    /// Run count and time of every attached program (read before `detach`).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut v: Vec<ProgramStats> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                let (n, t) = (info.run_count(), info.run_time().as_nanos() as u64);
                Some(ProgramStats {
                    program: name.to_string(),
                    run_count: n,
                    run_time_ns: t,
                    ns_per_run: (n > 0).then(|| t as f64 / n as f64),
                })
            })
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
        v
    }

    /// Detaches every program; the maps stay readable, so the final
    /// snapshot is consistent (nothing changes while it is read).
    ///
    /// The hooks that count faults go last, once the others are gone (0.4-0.6
    /// s on the 2-vCPU VM): the final read, right after, then sees the
    /// kernel's fault counters of processes still running within one
    /// detach of the hooks' (when they went first, a process faulting on
    /// through the detach had its faults of that half second reported as
    /// untraced).
    pub fn detach(&mut self) {
        // Each tracepoint detach waits for an RCU grace period (~76 ms here,
        // measured with strace): one after the other, 12 of them took 0.9 s.
        // Dropped from one thread each, they share grace periods.
        for links in [
            std::mem::take(&mut self.links),
            std::mem::take(&mut self.fault_links),
        ] {
            std::thread::scope(|s| {
                for link in links {
                    s.spawn(move || drop(link));
                }
            });
        }
    }

    /// Attaches again, after [`detach`](Self::detach), every probe that was
    /// attached at load: the programs stay loaded (no verifier run) and the
    /// maps keep their contents. For `cargo xtask bench`, which toggles the
    /// programs between chunks of one workload.
    pub fn attach_again(&mut self) -> Result<()> {
        let cpus = online_cpus().map_err(|(p, e)| anyhow!("reading {p}: {e}"))?;
        let attached: Vec<&'static Probe> = PROBES
            .iter()
            .filter(|p| {
                self.probes
                    .iter()
                    .any(|s| s.program == p.program && s.attached)
            })
            .collect();
        for p in attached {
            self.attach_one(p, &cpus)?;
        }
        Ok(())
    }

    /// The loaded object, for loading other programs of it next to
    /// mmtrace's own (the bench's empty programs).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Leaves the detach to a process of its own that outlives mmtrace,
    /// for when nothing traced is alive any more: the programs then count
    /// nothing, and mmtrace's exit need not wait for the ~35 ms per
    /// tracepoint that the kernel spends unregistering each (an RCU grace
    /// period under a global mutex, so they queue: 0.45-0.57 s for 12, the
    /// larger part of `mmtrace -- /bin/true`). A forked child keeps a copy
    /// of the link and perf-event descriptors only, closes everything else
    /// (stdout, stderr, sockets), waits for mmtrace to exit, then exits,
    /// and the kernel detaches then. Falls back to [`Tracer::detach`] if
    /// the child cannot be started.
    pub fn detach_after_exit(&mut self) {
        if let Err(e) = release_in_child() {
            log::debug!("detaching in a child process: {e:#}; detaching now");
            self.detach();
        }
    }

    /// The processes in the scope map now.
    pub fn scope_pids(&self) -> Result<Vec<u32>> {
        let m: HashMap<&MapData, u32, ScopeEntry> = HashMap::try_from(self.map("SCOPE")?)?;
        Ok(m.keys().filter_map(|k| k.ok()).collect())
    }

    /// The ring buffer of [`mmtrace_common::Notice`]s (take it once).
    pub fn take_notices(&mut self) -> Result<RingBuf<MapData>> {
        let m = self
            .ebpf
            .take_map("NOTICES")
            .context("map NOTICES missing or already taken")?;
        Ok(RingBuf::try_from(m)?)
    }

    /// The ring buffer of raw [`mmtrace_common::Event`]s (take it once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let m = self
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing or already taken")?;
        Ok(RingBuf::try_from(m)?)
    }

    /// Raw events dropped so far (the ring buffer was full), all CPUs.
    pub fn events_dropped(&self) -> Result<u64> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map("EVENTS_DROPPED")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// Puts a process in scope.
    pub fn add_to_scope(&mut self, pid: u32, follow_children: bool) -> Result<()> {
        let flags = if follow_children {
            mmtrace_common::scope::FOLLOW_CHILDREN
        } else {
            0
        };
        let mut m: HashMap<&mut MapData, u32, ScopeEntry> =
            HashMap::try_from(self.map_mut("SCOPE")?)?;
        m.insert(pid, ScopeEntry { flags, _pad: 0 }, 0)
            .with_context(|| format!("adding pid {pid} to the scope"))?;
        // The fault path caches scope verdicts per CPU while SCOPE_GEN is
        // unchanged: change it (to the monotonic time, as the programs do).
        let mut g: aya::maps::Array<&mut MapData, u64> =
            aya::maps::Array::try_from(self.map_mut("SCOPE_GEN")?)?;
        g.set(0, super::events::monotonic_ns(), 0)
            .context("changing SCOPE_GEN")?;
        Ok(())
    }

    /// Makes the traced cgroup tree exactly `cgroups` (adds new, drops gone).
    pub fn set_cgroups(&mut self, cgroups: &[CgroupKey]) -> Result<()> {
        let mut m: HashMap<&mut MapData, CgroupKey, u8> =
            HashMap::try_from(self.map_mut("CGROUPS")?)?;
        let have: Vec<CgroupKey> = m.keys().filter_map(|k| k.ok()).collect();
        for k in have.iter().filter(|k| !cgroups.contains(k)) {
            let _ = m.remove(k);
        }
        for k in cgroups.iter().filter(|k| !have.contains(k)) {
            m.insert(k, 1, 0)
                .with_context(|| format!("adding cgroup {} to the traced tree", k.id))?;
        }
        Ok(())
    }

    /// Marks files as of interest (their evictions are counted from now on).
    pub fn register_files(&mut self, files: &[(u32, u64)]) -> Result<usize> {
        let n = self.nr_cpus;
        let mut m: PerCpuHashMap<&mut MapData, FileKey, CacheCounters> =
            PerCpuHashMap::try_from(self.map_mut("FILE_CACHE")?)?;
        let mut added = 0;
        for &(dev, ino) in files {
            let key = FileKey { ino, dev, _pad: 0 };
            if m.get(&key, 0).is_ok() {
                continue;
            }
            let zeros = PerCpuValues::try_from(vec![CacheCounters::default(); n])?;
            // BPF_NOEXIST: never reset counters the kernel already started.
            match m.insert(key, zeros, 1) {
                Ok(()) => added += 1,
                Err(e) => log::debug!("registering file {dev}:{ino}: {e}"),
            }
        }
        Ok(added)
    }

    /// Deletes what the maps hold for processes that are gone (their
    /// mapping counters and exit records), so a long trace never fills
    /// them; returns the mapping counters deleted. (A process with faults
    /// still in a per-CPU vma cache slot must wait: the slot would flush
    /// them later as a new entry.)
    pub fn forget(&mut self, pids: &BTreeSet<u32>) -> Result<BTreeMap<MappingKey, FaultCounters>> {
        let mut m: HashMap<&mut MapData, MappingKey, FaultCounters> =
            HashMap::try_from(self.map_mut("MAPPING_FAULTS")?)?;
        let keys: Vec<MappingKey> = m
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| pids.contains(&k.tgid))
            .collect();
        let mut deleted = BTreeMap::new();
        for k in keys {
            let v = m.get(&k, 0).context("reading MAPPING_FAULTS")?;
            m.remove(&k).context("deleting from MAPPING_FAULTS")?;
            deleted.insert(k, v);
        }
        let mut e: HashMap<&mut MapData, u32, ExitRecord> =
            HashMap::try_from(self.map_mut("EXITS")?)?;
        for p in pids {
            // Absent when the process left no exit record (map full).
            let _ = e.remove(p);
        }
        // Their fault stall totals (--latency): the snapshot that chose
        // them holds the totals (a dead process faults no more).
        let mut st: PerCpuHashMap<&mut MapData, u32, ProcStall> =
            PerCpuHashMap::try_from(self.map_mut("PROC_STALL")?)?;
        for p in pids {
            let _ = st.remove(p);
        }
        Ok(deleted)
    }

    /// Deletes the TLB counters of processes that are gone; returns what
    /// they held (read just before the delete).
    pub fn forget_tlb(&mut self, pids: &BTreeSet<u32>) -> Result<BTreeMap<u32, TlbCounters>> {
        let mut m: HashMap<&mut MapData, u32, TlbCounters> =
            HashMap::try_from(self.map_mut("TLB_FLUSHES")?)?;
        let mut deleted = BTreeMap::new();
        for p in pids {
            let Ok(v) = m.get(p, 0) else { continue };
            m.remove(p).context("deleting from TLB_FLUSHES")?;
            deleted.insert(*p, v);
        }
        Ok(deleted)
    }

    /// Reads every map.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        let m: HashMap<&MapData, MappingKey, FaultCounters> =
            HashMap::try_from(self.map("MAPPING_FAULTS")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading MAPPING_FAULTS")?;
            s.mappings.insert(k, v);
        }
        // Faults still held in the per-CPU vma cache slots (not flushed yet).
        let m: PerCpuArray<&MapData, VmaCache> = PerCpuArray::try_from(self.map("VMA_CACHE")?)?;
        for slot in m.get(&0, 0)?.iter() {
            if slot.counters != FaultCounters::default() {
                s.pending.insert(slot.key.tgid);
                let mut key = slot.key;
                if self.coarse_mappings {
                    // As the kernel keys MAPPING_FAULTS (faults.rs row_key).
                    (key.vm_start, key.vm_end, key.pgoff) = (0, 0, 0);
                }
                s.mappings.entry(key).or_default().add(&slot.counters);
            }
        }
        for c in s.mappings.values_mut() {
            c.clamp_negative();
        }
        let m: PerCpuArray<&MapData, FaultCounters> =
            PerCpuArray::try_from(self.map("LOST_FAULTS")?)?;
        s.lost_faults = sum_faults(m.get(&0, 0)?.iter().copied());
        s.lost_faults.clamp_negative();
        let m: PerCpuHashMap<&MapData, FileKey, CacheCounters> =
            PerCpuHashMap::try_from(self.map("FILE_CACHE")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading FILE_CACHE")?;
            s.files.insert(k, sum_cache(v.iter().copied()));
        }
        let m: PerCpuHashMap<&MapData, FileKey, WriteCounters> =
            PerCpuHashMap::try_from(self.map("FILE_WRITES")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading FILE_WRITES")?;
            let w = s.writes.entry(k).or_default();
            v.iter().for_each(|c| w.add(c));
        }
        let m: HashMap<&MapData, u32, ExitRecord> = HashMap::try_from(self.map("EXITS")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading EXITS")?;
            s.exits.insert(k, v);
        }
        let m: HashMap<&MapData, u32, ScopeEntry> = HashMap::try_from(self.map("SCOPE")?)?;
        let mut scope = BTreeMap::new();
        for r in m.iter() {
            let (k, v) = r.context("reading SCOPE")?;
            scope.insert(k, v);
        }
        s.scope = scope;
        let m: PerCpuArray<&MapData, ReclaimStats> =
            PerCpuArray::try_from(self.map("RECLAIM_STATS")?)?;
        for v in m.get(&0, 0)?.iter() {
            s.reclaim.add(v);
        }
        let m: PerCpuHashMap<&MapData, Comm, u64> =
            PerCpuHashMap::try_from(self.map("RECLAIMERS")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading RECLAIMERS")?;
            s.reclaimers.insert(comm_string(&k), v.iter().sum());
        }
        let m: HashMap<&MapData, u32, TlbCounters> = HashMap::try_from(self.map("TLB_FLUSHES")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading TLB_FLUSHES")?;
            s.tlb.insert(k, v);
        }
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map("ERRORS")?)?;
        for i in 0..errors::COUNT {
            s.errors[i as usize] = m.get(&i, 0)?.iter().sum();
        }
        self.read_latency(&mut s)?;
        Ok(s)
    }

    /// The `--latency` maps (empty without it).
    fn read_latency(&self, s: &mut Snapshot) -> Result<()> {
        let m: PerCpuHashMap<&MapData, LatencyKey, LatencyHist> =
            PerCpuHashMap::try_from(self.map("FAULT_LATENCY")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading FAULT_LATENCY")?;
            let e = s.latency.entry(k).or_default();
            v.iter().for_each(|h| e.add(h));
        }
        let m: PerCpuHashMap<&MapData, u32, ProcStall> =
            PerCpuHashMap::try_from(self.map("PROC_STALL")?)?;
        for r in m.iter() {
            let (k, v) = r.context("reading PROC_STALL")?;
            let e = s.proc_stall.entry(k).or_default();
            v.iter().for_each(|p| e.add(p));
        }
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map("LATENCY_MISSES")?)?;
        for i in 0..latency_miss::COUNT {
            s.latency_misses[i as usize] = m.get(&i, 0)?.iter().sum();
        }
        Ok(())
    }
}

/// See [`Tracer::detach_after_exit`].
fn release_in_child() -> Result<()> {
    // Decided before the fork (the child of a threaded process may only
    // make plain system calls): every descriptor but links and perf
    // events is closed in the child.
    let mut close = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let e = e?;
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let keep = std::fs::read_link(e.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            t == "anon_inode:bpf_link" || t == "anon_inode:[perf_event]"
        });
        if !keep {
            close.push(fd);
        }
    }
    let mut p = [0i32; 2];
    // SAFETY: p has room for the two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    let (rd, wr) = (p[0], p[1]);
    // The directory listed above was open then: its number may be reused.
    close.retain(|&fd| fd != rd && fd != wr);
    // SAFETY: the child makes only async-signal-safe calls (close, read,
    // _exit) on data prepared before the fork.
    match unsafe { libc::fork() } {
        -1 => {
            let e = std::io::Error::last_os_error();
            // SAFETY: our own descriptors.
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
            Err(e).context("fork")
        }
        0 => {
            // SAFETY: as above; `close` holds numbers, not owned handles.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                for &fd in &close {
                    libc::close(fd);
                }
                libc::close(wr);
                let mut b = 0u8;
                // End of file when mmtrace (the only writer) has exited.
                while libc::read(rd, (&raw mut b).cast(), 1) != 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
                {
                }
                libc::_exit(0)
            }
        }
        _ => {
            // SAFETY: our own descriptor; the write end stays open until
            // mmtrace exits.
            unsafe { libc::close(rd) };
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use mmtrace_common::event_mask;

    use super::*;

    fn default_trace() -> Config {
        Config {
            write_faults: 1,
            vma_cache: 1,
            ..Config::ZERO
        }
    }

    #[test]
    fn only_the_default_trace_gets_the_lean_fault_program() {
        assert!(lean_faults(&default_trace()));
        assert_eq!(
            object_program("page_fault_kernel", true),
            "page_fault_count"
        );
        assert_eq!(object_program("page_fault_user", true), "page_fault_user");
        assert_eq!(
            object_program("page_fault_kernel", false),
            "page_fault_kernel"
        );
        let others = [
            Config {
                latency: 1,
                ..default_trace()
            },
            Config {
                events: event_mask::MINOR_FAULTS,
                ..default_trace()
            },
            Config {
                events: event_mask::MAJOR_FAULTS,
                ..default_trace()
            },
            Config {
                vma_cache: 0,
                ..default_trace()
            },
            Config {
                write_faults: 0,
                ..default_trace()
            },
        ];
        for c in others {
            assert!(!lean_faults(&c));
        }
        // Events that are not fault events keep the lean program.
        assert!(lean_faults(&Config {
            events: !event_mask::FAULTS,
            ..default_trace()
        }));
    }
}
