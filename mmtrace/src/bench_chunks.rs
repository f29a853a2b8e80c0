//! The hidden `mmtrace bench-chunks` subcommand, the runner `cargo xtask
//! bench` drives; not part of the library.
//!
//! `chunks`: one process runs a page-fault storm in chunks (a fresh mapping
//! of `--mib` MiB per chunk, `MADV_NOHUGEPAGE`, one byte written per page,
//! each chunk timed with the thread's CPU clock, which leaves out the time
//! other tasks preempted it, and the monotonic clock; pinned to one CPU)
//! and attaches a hook set for one chunk and detaches it for the next, in
//! ABBA order, with one untimed chunk after each toggle (`--settle-chunks`:
//! the first chunk after one is slower, whatever was toggled); it prints
//! every pair's ns per fault as JSON and xtask takes
//! the median of the per-pair differences. Rows: `noise` (nothing attached
//! either way), `floor` (an empty program on each hook mmtrace attaches),
//! `mmtrace` (mmtrace's own programs, loaded once, attached and detached
//! between chunks; its maps must count exactly the attached chunks' faults),
//! `vsfloor` (the floor for the "off" chunks, mmtrace for the "on" ones).
//!
//! `storm`: the same storm without end, one JSON line per chunk with its
//! wall-clock start and end, for tracers attached from outside (`-p PID`).
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::{
    PerfEvent, RawTracePoint, TracePoint,
    perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
};
use mmtrace::{
    collect::loader::{Capacity, ProgramStats, Tracer},
    kernel::{
        offsets,
        probes::{Hook, PROBES, SoftwareCounter},
    },
    preflight,
};
use serde_json::{Value, json};

#[derive(clap::Parser, Debug)]
#[command(name = "mmtrace bench-chunks")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// In-process ABBA pairs of chunks, hooks attached for one of the two.
    Chunks {
        #[command(flatten)]
        storm: StormArgs,
        /// Pairs of chunks per row.
        #[arg(long, default_value_t = 120)]
        pairs: u32,
        /// Rows, in order: noise, floor, mmtrace, vsfloor (floor for the
        /// "off" chunks, mmtrace for the "on" ones), latency; `ROW:N` gives
        /// a row N pairs instead of --pairs.
        #[arg(long, value_delimiter = ',', default_value = "noise,floor,mmtrace")]
        rows: Vec<String>,
    },
    /// Chunks without end (or for --seconds), one JSON line each on stdout.
    Storm {
        #[command(flatten)]
        storm: StormArgs,
        /// Stop after this many seconds (0: never).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct StormArgs {
    /// anon: anonymous minor faults; cow: copy-on-write faults on a
    /// MAP_PRIVATE mapping of --path (created if too short).
    #[arg(long, default_value = "anon")]
    kind: String,
    #[arg(long)]
    path: Option<PathBuf>,
    /// MiB per chunk.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// CPU the storm runs on [default: the last online CPU].
    #[arg(long)]
    cpu: Option<usize>,
    /// Untimed chunks first (first touches of guest memory are slower).
    #[arg(long, default_value_t = 6)]
    warmup: u32,
    /// Untimed chunks after each attach or detach: the first chunk after
    /// a toggle ran 25-80 ns per fault slower than the next (any hook set,
    /// either way), which in ABBA order splits the pair differences into
    /// two modes whose median is unstable.
    #[arg(long, default_value_t = 1)]
    settle_chunks: u32,
}

pub fn main(args: &[String]) -> i32 {
    let cli = match <Cli as clap::Parser>::try_parse_from(
        std::iter::once("mmtrace bench-chunks".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli.mode) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mmtrace bench-chunks: {e:#}");
            1
        }
    }
}

fn run(mode: Mode) -> Result<()> {
    match mode {
        Mode::Chunks { storm, pairs, rows } => {
            let v = chunks(&storm, pairs, &rows)?;
            println!("{v}");
        }
        Mode::Storm { storm, seconds } => endless(&storm, seconds)?,
    }
    Ok(())
}

/// The storm: what one chunk maps and writes.
struct Storm {
    len: usize,
    pages: usize,
    page_size: usize,
    /// The file of a copy-on-write storm.
    file: Option<File>,
}

impl Storm {
    fn new(a: &StormArgs) -> Result<Self> {
        ensure!(a.mib > 0, "--mib must be at least 1");
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = a.mib << 20;
        let file = match a.kind.as_str() {
            "anon" => None,
            "cow" => {
                let path = a.path.as_deref().context("--kind cow needs --path")?;
                Some(cow_file(path, len)?)
            }
            k => bail!("unknown --kind {k} (anon, cow)"),
        };
        let cpu = match a.cpu {
            Some(c) => c,
            None => last_online_cpu(),
        };
        pin(cpu);
        let s = Self {
            len,
            pages: len / page_size,
            page_size,
            file,
        };
        for _ in 0..a.warmup {
            s.chunk()?;
        }
        Ok(s)
    }

    /// Maps, writes one byte per page (timed), unmaps. Returns the
    /// elapsed wall-clock ns, the thread's CPU ns (the faults run in the
    /// thread, BPF programs included; time preempted by other tasks is
    /// not in it) and the mapping's address.
    fn chunk(&self) -> Result<(u64, u64, u64)> {
        let (prot, flags, fd) = match &self.file {
            None => (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
            ),
            Some(f) => (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
            ),
        };
        // SAFETY: a fresh mapping chosen by the kernel; nothing aliases it.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), self.len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(p, self.len, libc::MADV_NOHUGEPAGE) };
        let base: *mut u8 = p.cast();
        let cpu0 = thread_cpu_ns();
        let start = Instant::now();
        for i in 0..self.pages {
            // SAFETY: inside the writable mapping of `len` bytes.
            unsafe { std::ptr::write_volatile(base.add(i * self.page_size), 1) };
        }
        let ns = start.elapsed().as_nanos() as u64;
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(p, self.len) };
        Ok((ns, cpu, p as u64))
    }
}

/// A file of at least `len` bytes, its pages in the page cache (so a
/// chunk's write faults are copy-on-write faults, not reads).
fn cow_file(path: &Path, len: usize) -> Result<File> {
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if have < len as u64 {
        let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..len.div_ceil(block.len()) {
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut r = &f;
    while std::io::Read::read(&mut r, &mut buf)? > 0 {}
    Ok(f)
}

fn last_online_cpu() -> usize {
    aya::util::online_cpus()
        .ok()
        .and_then(|c| c.into_iter().max())
        .unwrap_or(0) as usize
}

/// Pins the calling thread to `cpu` (best effort).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the set is passed by pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CLOCK_THREAD_CPUTIME_ID, ns.
fn thread_cpu_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `storm`: one line per chunk: `{"t0":…,"t1":…,"ns":…,"cpu_ns":…,"pages":…}`
/// (t0/t1 wall-clock ns since the epoch, ns from the monotonic clock,
/// cpu_ns the thread's CPU time).
fn endless(a: &StormArgs, seconds: f64) -> Result<()> {
    let s = Storm::new(a)?;
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({"pid": std::process::id(), "pages": s.pages})
    )?;
    out.flush()?;
    while seconds <= 0.0 || start.elapsed().as_secs_f64() < seconds {
        let t0 = wall_ns();
        let (ns, cpu, _) = s.chunk()?;
        let t1 = wall_ns();
        if writeln!(
            out,
            "{{\"t0\":{t0},\"t1\":{t1},\"ns\":{ns},\"cpu_ns\":{cpu},\"pages\":{}}}",
            s.pages
        )
        .and_then(|()| out.flush())
        .is_err()
        {
            // The reader is gone: the bench ended.
            break;
        }
    }
    Ok(())
}

/// What a row attaches for its "on" chunks (and, for a comparison of two
/// hook sets, for its "off" chunks: `start` attaches that one first,
/// `finish` detaches it).
trait Toggle {
    fn on(&mut self, tracer: &mut Tracer) -> Result<()>;
    fn off(&mut self, tracer: &mut Tracer) -> Result<()>;
    fn start(&mut self, _: &mut Tracer) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self, _: &mut Tracer) -> Result<()> {
        Ok(())
    }
}

/// mmtrace against the floor head to head: the floor's empty programs
/// for the "off" chunks, mmtrace's programs for the "on" chunks, so a
/// pair's difference is what mmtrace adds over the floor, measured as
/// finely as the noise row (no ratio of two noisy medians).
struct VsFloor<'a> {
    floor: &'a mut Floor,
}

impl Toggle for VsFloor<'_> {
    fn on(&mut self, t: &mut Tracer) -> Result<()> {
        self.floor.off(t)?;
        t.attach_again()
    }
    fn off(&mut self, t: &mut Tracer) -> Result<()> {
        t.detach();
        self.floor.on(t)
    }
    fn start(&mut self, t: &mut Tracer) -> Result<()> {
        self.floor.on(t)
    }
    fn finish(&mut self, t: &mut Tracer) -> Result<()> {
        self.floor.off(t)
    }
}

/// Nothing (the noise row).
struct Nothing;

impl Toggle for Nothing {
    fn on(&mut self, _: &mut Tracer) -> Result<()> {
        Ok(())
    }
    fn off(&mut self, _: &mut Tracer) -> Result<()> {
        Ok(())
    }
}

/// mmtrace's own programs.
struct Mmtrace;

impl Toggle for Mmtrace {
    fn on(&mut self, t: &mut Tracer) -> Result<()> {
        t.attach_again()
    }
    fn off(&mut self, t: &mut Tracer) -> Result<()> {
        t.detach();
        Ok(())
    }
}

/// The floor: an empty program on each hook mmtrace attached.
struct Floor {
    hooks: Vec<Hook>,
    links: Vec<Box<dyn Send>>,
}

impl Floor {
    fn new(t: &mut Tracer) -> Result<Self> {
        let attached: BTreeSet<&str> = t
            .probes()
            .iter()
            .filter(|s| s.attached)
            .map(|s| s.program.as_str())
            .collect();
        let hooks: Vec<Hook> = PROBES
            .iter()
            .filter(|p| attached.contains(p.program))
            .map(|p| p.hook)
            .collect();
        let ebpf = t.ebpf_mut();
        for (name, kind) in [("empty_raw_tp", 0), ("empty_tp", 1), ("empty_perf", 2)] {
            let p = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?;
            let r = match kind {
                0 => <&mut RawTracePoint>::try_from(p)?.load(),
                1 => <&mut TracePoint>::try_from(p)?.load(),
                _ => <&mut PerfEvent>::try_from(p)?.load(),
            };
            r.with_context(|| format!("loading {name}"))?;
        }
        Ok(Self {
            hooks,
            links: Vec::new(),
        })
    }

    fn hook_names(&self) -> Vec<String> {
        PROBES
            .iter()
            .filter(|p| self.hooks.contains(&p.hook))
            .map(|p| p.hook_name())
            .collect()
    }
}

impl Toggle for Floor {
    fn on(&mut self, t: &mut Tracer) -> Result<()> {
        let cpus = aya::util::online_cpus().map_err(|(p, e)| anyhow::anyhow!("{p}: {e}"))?;
        let ebpf = t.ebpf_mut();
        for h in &self.hooks {
            match *h {
                Hook::Tracepoint { category, event } => {
                    let p: &mut TracePoint = ebpf
                        .program_mut("empty_tp")
                        .context("empty_tp")?
                        .try_into()?;
                    let id = p
                        .attach(category, event)
                        .with_context(|| format!("attaching empty_tp to {category}:{event}"))?;
                    self.links.push(Box::new(p.take_link(id)?));
                }
                Hook::RawTracepoint { event, .. } => {
                    let p: &mut RawTracePoint = ebpf
                        .program_mut("empty_raw_tp")
                        .context("empty_raw_tp")?
                        .try_into()?;
                    let id = p
                        .attach(event)
                        .with_context(|| format!("attaching empty_raw_tp to {event}"))?;
                    self.links.push(Box::new(p.take_link(id)?));
                }
                Hook::PerfSoftware(c) => {
                    let ev = match c {
                        SoftwareCounter::MinorFaults => SoftwareEvent::PageFaultsMin,
                        SoftwareCounter::MajorFaults => SoftwareEvent::PageFaultsMaj,
                    };
                    let p: &mut PerfEvent = ebpf
                        .program_mut("empty_perf")
                        .context("empty_perf")?
                        .try_into()?;
                    for &cpu in &cpus {
                        let id = p
                            .attach(
                                PerfEventConfig::Software(ev),
                                PerfEventScope::AllProcessesOneCpu { cpu },
                                SamplePolicy::Period(1),
                                false,
                            )
                            .with_context(|| format!("attaching empty_perf to {ev:?}"))?;
                        self.links.push(Box::new(p.take_link(id)?));
                    }
                }
            }
        }
        Ok(())
    }

    fn off(&mut self, _: &mut Tracer) -> Result<()> {
        // One thread per link: tracepoint detaches wait for an RCU grace
        // period each, and share it this way (as Tracer::detach does).
        let links = std::mem::take(&mut self.links);
        std::thread::scope(|s| {
            for l in links {
                s.spawn(move || drop(l));
            }
        });
        Ok(())
    }
}

/// Whether chunk `j` (0 or 1) of pair `i` is the "on" chunk: ABBA order,
/// off-on, on-off, off-on, ... (xtask's stats module has the same rule,
/// unit-tested).
fn on_chunk(i: u32, j: u32) -> bool {
    i.is_multiple_of(2) == (j == 1)
}

/// Faults mmtrace's maps hold for this process: per storm-sized mapping
/// (length `len`) by start address, and on all its mappings.
fn traced_faults(t: &Tracer, len: u64) -> Result<(BTreeMap<u64, u64>, u64)> {
    let me = std::process::id();
    let snap = t.snapshot()?;
    let (mut storm, mut all) = (BTreeMap::new(), 0);
    for (k, c) in &snap.mappings {
        if k.tgid != me {
            continue;
        }
        let n = c.minor + c.major;
        all += n;
        if k.vm_end - k.vm_start == len {
            *storm.entry(k.vm_start).or_insert(0) += n;
        }
    }
    Ok((storm, all))
}

/// Faults counted on the storm mappings at `addrs` since `before` (an
/// earlier row may have counted on the same addresses).
fn storm_faults_since(
    before: &BTreeMap<u64, u64>,
    after: &BTreeMap<u64, u64>,
    addrs: &BTreeSet<u64>,
) -> u64 {
    addrs
        .iter()
        .map(|a| after.get(a).copied().unwrap_or(0) - before.get(a).copied().unwrap_or(0))
        .sum()
}

fn stats_json(before: &[ProgramStats], after: &[ProgramStats], faults: u64) -> Value {
    let rows: Vec<Value> = after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.program == a.program);
            let runs = a.run_count - b.map_or(0, |b| b.run_count);
            let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            (runs > 0).then(|| {
                json!({
                    "program": a.program,
                    "runs": runs,
                    "run_time_ns": ns,
                    "ns_per_run": ns as f64 / runs as f64,
                    "runs_per_storm_fault": if faults > 0 { runs as f64 / faults as f64 } else { 0.0 },
                })
            })
        })
        .collect();
    Value::Array(rows)
}

/// A row of `--rows`: `NAME` or `NAME:PAIRS`.
fn row_pairs(spec: &str, pairs: u32) -> Result<(String, u32)> {
    match spec.split_once(':') {
        None => Ok((spec.to_string(), pairs)),
        Some((name, n)) => {
            let n: u32 = n.parse().ok().filter(|&n| n > 0).with_context(|| {
                format!("--rows {spec}: the pairs after ':' must be a number of at least 1")
            })?;
            Ok((name.to_string(), n))
        }
    }
}

/// `chunks`: every row's pairs, as JSON.
fn chunks(a: &StormArgs, pairs: u32, rows: &[String]) -> Result<Value> {
    ensure!(pairs > 0, "--pairs must be at least 1");
    preflight::check_privileges()?;
    let btf = preflight::load_btf(Path::new(preflight::BTF_PATH))?;
    let root = preflight::tracefs_root()?;
    preflight::check_tracepoints(&root)?;
    let me = std::process::id();
    let (config, mut features) = offsets::compute(&btf, &root, me)?;
    // The hooks of a default trace.
    features
        .choose_msync(false)
        .map_err(|e| anyhow::anyhow!(e))?;
    drop(btf);
    let nr_cpus = aya::util::nr_cpus().unwrap_or(1);
    let per_cpu = mmtrace::cli::Cli::per_cpu_capacity;
    let cap = Capacity {
        mappings: per_cpu(mmtrace_common::limits::MAPPINGS, nr_cpus),
        files: per_cpu(mmtrace_common::limits::FILES, nr_cpus),
        ..Capacity::default()
    };
    let t0 = Instant::now();
    let mut tracer = Tracer::load(&config, &features, cap, &[(me, false)], false, || {})?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracer.detach();
    tracer.enable_stats()?;
    // `latency`: mmtrace with --latency, a tracer of its own (its maps
    // are sized for it at load).
    let mut lat = None;
    if rows.iter().any(|r| r == "latency") {
        ensure!(
            features.write_faults,
            "the latency row needs exceptions:page_fault_user (x86)"
        );
        let mut c = config;
        c.latency = 1;
        let mut t = Tracer::load(&c, &features, cap, &[(me, false)], false, || {})?;
        t.detach();
        t.enable_stats()?;
        lat = Some(t);
    }
    let storm = Storm::new(a)?;
    let mut floor = Floor::new(&mut tracer)?;
    let floor_hooks = floor.hook_names();

    let (mut nothing, mut mm) = (Nothing, Mmtrace);
    let mut out = Vec::new();
    for spec in rows {
        let (row, pairs) = row_pairs(spec, pairs)?;
        let mut vs;
        let (toggle, tracer): (&mut dyn Toggle, &mut Tracer) = match row.as_str() {
            "noise" => (&mut nothing, &mut tracer),
            "floor" => (&mut floor, &mut tracer),
            "mmtrace" => (&mut mm, &mut tracer),
            "vsfloor" => {
                vs = VsFloor { floor: &mut floor };
                (&mut vs, &mut tracer)
            }
            "latency" => (&mut mm, lat.as_mut().context("latency tracer")?),
            r => bail!("unknown row {r} (noise, floor, mmtrace, vsfloor, latency)"),
        };
        // Allocated up front: no heap growth (faults) while attached.
        let mut off_ns = Vec::with_capacity(pairs as usize);
        let mut on_ns = Vec::with_capacity(pairs as usize);
        let mut on_first = Vec::with_capacity(pairs as usize);
        let mut off_wall = Vec::with_capacity(pairs as usize);
        let mut on_wall = Vec::with_capacity(pairs as usize);
        let mut addrs = BTreeSet::new();
        let mut on_chunks = 0u64;
        let stats0 = tracer.program_stats();
        let (storm_before, before) = traced_faults(tracer, storm.len as u64)?;
        let mut attached = false;
        toggle.start(tracer)?;
        let started = Instant::now();
        for i in 0..pairs {
            on_first.push(on_chunk(i, 0));
            for j in 0..2 {
                let on = on_chunk(i, j);
                if on != attached {
                    if on {
                        toggle.on(tracer)?;
                    } else {
                        toggle.off(tracer)?;
                    }
                    attached = on;
                    for _ in 0..a.settle_chunks {
                        let (_, _, addr) = storm.chunk()?;
                        if on {
                            on_chunks += 1;
                            addrs.insert(addr);
                        }
                    }
                }
                let (ns, cpu, addr) = storm.chunk()?;
                let wall = ns as f64 / storm.pages as f64;
                let per = cpu as f64 / storm.pages as f64;
                if on {
                    on_ns.push(per);
                    on_wall.push(wall);
                    on_chunks += 1;
                    addrs.insert(addr);
                } else {
                    off_ns.push(per);
                    off_wall.push(wall);
                }
            }
        }
        if attached {
            toggle.off(tracer)?;
        }
        toggle.finish(tracer)?;
        let secs = started.elapsed().as_secs_f64();
        let stats = stats_json(
            &stats0,
            &tracer.program_stats(),
            on_chunks * storm.pages as u64,
        );
        let expected = on_chunks * storm.pages as u64;
        let mut r = json!({
            "row": row,
            "pairs": pairs,
            "off_ns_per_fault": off_ns,
            "on_ns_per_fault": on_ns,
            "off_wall_ns_per_fault": off_wall,
            "on_wall_ns_per_fault": on_wall,
            "on_first": on_first,
            "seconds": secs,
            "bpf_stats": stats,
        });
        match row.as_str() {
            "floor" => r["hooks"] = json!(&floor_hooks),
            "mmtrace" | "vsfloor" | "latency" => {
                let (storm_after, all) = traced_faults(tracer, storm.len as u64)?;
                let storm_faults = storm_faults_since(&storm_before, &storm_after, &addrs);
                r["hooks"] = json!(
                    tracer
                        .probes()
                        .iter()
                        .filter(|p| p.attached)
                        .map(|p| p.hook.clone())
                        .collect::<Vec<_>>()
                );
                r["check"] = json!({
                    "expected_faults": expected,
                    "traced_storm_faults": storm_faults,
                    "traced_other_faults": all - before - storm_faults,
                    "exact": storm_faults == expected,
                });
            }
            _ => {}
        }
        eprintln!(
            "bench-chunks: {} {row}: {pairs} pairs in {secs:.1}s",
            a.kind
        );
        out.push(r);
    }
    Ok(json!({
        "kind": a.kind,
        "pages_per_chunk": storm.pages,
        "chunk_bytes": storm.len,
        "cpu": a.cpu.unwrap_or_else(last_online_cpu),
        "tracer_load_ms": load_ms,
        "rows": out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_may_name_its_own_pairs() {
        assert_eq!(row_pairs("floor", 120).unwrap(), ("floor".into(), 120));
        assert_eq!(
            row_pairs("vsfloor:300", 120).unwrap(),
            ("vsfloor".into(), 300)
        );
        for bad in ["vsfloor:", "vsfloor:0", "vsfloor:x"] {
            assert!(row_pairs(bad, 120).is_err(), "{bad}");
        }
    }

    #[test]
    fn abba_order() {
        let seq: Vec<bool> = (0..3)
            .flat_map(|i| (0..2).map(move |j| on_chunk(i, j)))
            .collect();
        assert_eq!(seq, [false, true, true, false, false, true]);
    }
}
