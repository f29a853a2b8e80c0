//! Deterministic workloads with known page-fault, copy-on-write and eviction counts (the hidden `mmtrace workload ...` subcommand), used by the tests, `cargo xtask bench` and the built-in demo.
//!
//! Every workload touches pages through raw `libc` mappings with one volatile
//! access per page, so the number of faults it causes is predictable. Each
//! one returns (and with `--report` writes) a JSON report that always holds
//! `workload`, `pid` and `page_size` plus the workload's own counts.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use mmtrace::datafile::{self, drop_cache, fadvise_dontneed, parse_size};
use serde_json::{Map, Value};

#[path = "workload_mm.rs"]
mod mm;

/// Size of the chunks `make-file` writes and `evict` reads.
const CHUNK: usize = 1 << 20;

/// Arguments of `mmtrace workload`.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkloadArgs {
    #[command(subcommand)]
    pub workload: Workload,
    /// write a JSON report here
    #[arg(long, global = true)]
    pub report: Option<PathBuf>,
    /// sleep this long before starting and before exiting (lets a tracer scan /proc/<pid>/maps)
    #[arg(long, global = true, default_value_t = 0)]
    pub pause_ms: u64,
}

/// The workloads; each documents the faults it causes.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Workload {
    /// Touch N anonymous private pages: one write (minor fault) per page.
    Anon {
        /// number of pages to map and touch
        #[arg(long)]
        pages: u64,
        /// map, touch and unmap this many times; with more than one round
        /// the first is a warm-up and is not timed (its pages may still be
        /// unbacked by the hypervisor, a large source of noise in VMs)
        #[arg(long, default_value_t = 1)]
        rounds: u64,
    },
    /// Map a file shared read-only and read one byte per page.
    MmapRead {
        /// file to read
        #[arg(long)]
        path: PathBuf,
        /// evict the file from the page cache first (fdatasync + POSIX_FADV_DONTNEED)
        #[arg(long)]
        drop_cache: bool,
        /// madvise() advice for the mapping
        #[arg(long, value_enum, default_value_t = Advice::Normal)]
        advice: Advice,
        /// keep the mapping (and so the RSS) through the final --pause-ms
        #[arg(long)]
        hold: bool,
        /// read at most this many MiB per second (0: as fast as possible),
        /// so a tracer's live table can follow
        #[arg(long, default_value_t = 0)]
        pace_mib_s: u64,
    },
    /// Map a file private read-write and write one byte to each of its first K pages (copy-on-write).
    Cow {
        /// file to map
        #[arg(long)]
        path: PathBuf,
        /// number of leading pages to write
        #[arg(long)]
        pages: u64,
    },
    /// Read a file with read(), map it untouched, then evict it with POSIX_FADV_DONTNEED.
    Evict {
        /// file to load and evict
        #[arg(long)]
        path: PathBuf,
    },
    /// Touch M anonymous pages in the parent, fork, touch N in the child.
    Fork {
        /// pages the parent touches before fork()
        #[arg(long)]
        parent_pages: u64,
        /// pages the child touches before _exit(0)
        #[arg(long)]
        child_pages: u64,
    },
    /// Read a file with read(2) in 1 MiB chunks (no mapping).
    Read {
        /// file to read
        #[arg(long)]
        path: PathBuf,
        /// read at most this many MiB per second (0: as fast as possible)
        #[arg(long, default_value_t = 0)]
        pace_mib_s: u64,
    },
    /// Allocate and touch anonymous memory in steps, keeping all of it: a
    /// leak, as a tracer should see one.
    Leak {
        /// total bytes to allocate (suffixes K, M, G)
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// number of steps, with --step-ms between them
        #[arg(long, default_value_t = 8)]
        steps: u64,
        /// pause between steps, ms
        #[arg(long, default_value_t = 100)]
        step_ms: u64,
    },
    /// Create (or overwrite) a file of non-zero bytes and fsync it.
    MakeFile {
        /// file to write
        #[arg(long)]
        path: PathBuf,
        /// size in bytes (suffixes K, M, G, T = powers of 1024 are accepted)
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Write a file, map it shared, truncate it and touch a page beyond the
    /// new end: SIGBUS (BUS_ADRERR), caught by a handler unless --die.
    Sigbus {
        /// file to create
        #[arg(long)]
        path: PathBuf,
        /// pages written and mapped
        #[arg(long, default_value_t = 4)]
        pages: u64,
        /// pages left after the truncation
        #[arg(long, default_value_t = 1)]
        keep: u64,
        /// no handler: die of the SIGBUS (the report is written first)
        #[arg(long)]
        die: bool,
        /// instead: map the file read-only and write its last page, a
        /// SIGSEGV (SEGV_ACCERR), caught
        #[arg(long, conflicts_with = "die")]
        segv: bool,
        /// ms to keep the file mapped before truncating it (or writing it)
        #[arg(long, default_value_t = 300)]
        settle_ms: u64,
    },
    /// TLB shootdowns: per round, map and write anonymous pages (with
    /// --threads 2 a sibling thread on the other CPU writes them too), then
    /// mprotect them read-only and unmap them.
    Shootdown {
        /// rounds (per chunk)
        #[arg(long)]
        rounds: u64,
        /// pages per round
        #[arg(long, default_value_t = 16)]
        pages: u64,
        /// 2: a sibling thread shares the mm; 1: the single-threaded control
        #[arg(long, default_value_t = 2)]
        threads: u64,
        /// repeat the rounds this many times, timing each chunk
        #[arg(long, default_value_t = 1)]
        chunks: u64,
    },
    /// Write-through records, as a program that flushes after every
    /// record: map PATH (--size, created zero-filled) shared, write
    /// --records records of --record-bytes one after the other and msync
    /// each record's pages after writing it; then (unless --no-rewrite)
    /// read each record back, change it in place and msync it again.
    Msync {
        /// file to create
        #[arg(long)]
        path: PathBuf,
        /// file size (suffixes K, M, G = powers of 1024)
        #[arg(long, value_parser = parse_size, default_value = "100M")]
        size: u64,
        /// records to write
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        /// bytes per record
        #[arg(long, default_value_t = 200)]
        record_bytes: u64,
        /// flush with MS_ASYNC instead of MS_SYNC
        #[arg(long)]
        r#async: bool,
        /// skip the read-modify-flush pass
        #[arg(long)]
        no_rewrite: bool,
    },
    /// Sleep.
    Sleep {
        /// milliseconds to sleep
        #[arg(long)]
        ms: u64,
    },
    /// A fault that fails, then faults that sleep, arranged so a fault
    /// latency tracer that pairs stale entries would report garbage: on CPU
    /// 0, read(2) into an unmapped address (the kernel faults, fails with
    /// EFAULT: no accounting event follows); --gap-ms later, on CPU 1, cold
    /// major faults of PATH (dropped, MADV_RANDOM) while a sibling thread
    /// whose tid shares the thread's slot (tid % 1024) takes minor faults
    /// on CPU 1 whenever the reader sleeps.
    StaleFault {
        /// file to read cold
        #[arg(long)]
        path: PathBuf,
        /// pages of it to read (one major fault each)
        #[arg(long, default_value_t = 256)]
        pages: u64,
        /// pause between the failed fault and the reads, ms
        #[arg(long, default_value_t = 300)]
        gap_ms: u64,
    },
}

/// `madvise()` advice for `mmap-read`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Advice {
    /// MADV_NORMAL: the kernel's default readahead
    #[default]
    Normal,
    /// MADV_RANDOM: no readahead, one major fault per page
    Random,
    /// MADV_SEQUENTIAL: aggressive readahead
    Sequential,
}

impl Advice {
    fn raw(self) -> libc::c_int {
        match self {
            Advice::Normal => libc::MADV_NORMAL,
            Advice::Random => libc::MADV_RANDOM,
            Advice::Sequential => libc::MADV_SEQUENTIAL,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Advice::Normal => "normal",
            Advice::Random => "random",
            Advice::Sequential => "sequential",
        }
    }
}

/// Runs a workload: pauses `pause_ms`, does the work, writes the report (if
/// `--report`), pauses `pause_ms` again and returns the report.
/// `mmtrace workload ARGS…`: parses `args`, runs, returns the exit status.
pub fn main(args: &[String]) -> i32 {
    #[derive(clap::Parser)]
    #[command(name = "mmtrace workload")]
    struct Cli {
        #[command(flatten)]
        args: WorkloadArgs,
    }
    let cli = match <Cli as clap::Parser>::try_parse_from(
        std::iter::once("mmtrace workload".to_string()).chain(args.iter().cloned()),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(&cli.args) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("mmtrace workload: {e:#}");
            1
        }
    }
}

pub fn run(args: &WorkloadArgs) -> Result<Value> {
    let pause = Duration::from_millis(args.pause_ms);
    nap(pause);
    // `keep` holds mappings that must outlive the final pause (evict, leak, --hold).
    let (report, keep) = match &args.workload {
        Workload::Anon { pages, rounds } => (anon(*pages, *rounds)?, None),
        Workload::MmapRead {
            path,
            drop_cache,
            advice,
            hold,
            pace_mib_s,
        } => {
            let (report, map) = mmap_read(path, *drop_cache, *advice, *pace_mib_s)?;
            (report, hold.then(|| vec![map]))
        }
        Workload::Cow { path, pages } => (cow(path, *pages)?, None),
        Workload::Evict { path } => {
            let (report, mapping) = evict(path, pause)?;
            (report, Some(vec![mapping]))
        }
        Workload::Fork {
            parent_pages,
            child_pages,
        } => (fork(*parent_pages, *child_pages)?, None),
        Workload::MakeFile { path, size } => (make_file(path, *size)?, None),
        Workload::Read { path, pace_mib_s } => (read_file(path, *pace_mib_s)?, None),
        Workload::Leak {
            size,
            steps,
            step_ms,
        } => {
            let (report, maps) = leak(*size, *steps, Duration::from_millis(*step_ms))?;
            (report, Some(maps))
        }
        Workload::Sigbus {
            path,
            pages,
            keep,
            die,
            segv,
            settle_ms,
        } => (
            mm::sigbus(
                path,
                *pages,
                *keep,
                *die,
                *segv,
                Duration::from_millis(*settle_ms),
                args.report.as_deref(),
            )?,
            None,
        ),
        Workload::Shootdown {
            rounds,
            pages,
            threads,
            chunks,
        } => (mm::shootdown(*rounds, *pages, *threads, *chunks)?, None),
        Workload::Msync {
            path,
            size,
            records,
            record_bytes,
            r#async,
            no_rewrite,
        } => (
            mm::msync_records(path, *size, *records, *record_bytes, *r#async, !*no_rewrite)?,
            None,
        ),
        Workload::Sleep { ms } => {
            nap(Duration::from_millis(*ms));
            (report_base("sleep").with("ms", *ms), None)
        }
        Workload::StaleFault {
            path,
            pages,
            gap_ms,
        } => (
            stale_fault(path, *pages, Duration::from_millis(*gap_ms))?,
            None,
        ),
    };
    let report = Value::Object(report);
    if let Some(path) = &args.report {
        write_report(path, &report)?;
    }
    nap(pause);
    drop(keep);
    Ok(report)
}

/// `read --path F`: the whole file through read(2), 1 MiB at a time.
fn read_file(path: &Path, pace_mib_s: u64) -> Result<Map<String, Value>> {
    let pacer = Pacer::new(pace_mib_s);
    let mut file = open(path)?;
    let len = file_len(&file, path)?;
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0usize;
    let start = Instant::now();
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                read += n;
                pacer.wait(read as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    std::hint::black_box(&buf);
    let elapsed = start.elapsed();
    Ok(with_file_id(report_base("read"), path, &file)?
        .with("pages", len.div_ceil(page_size()))
        .with("bytes_read", read)
        .with("elapsed_ns", nanos(elapsed)))
}

/// `leak --size B --steps N`: touches B bytes of anonymous memory in N
/// steps and keeps it all until the end (the mappings are returned).
fn leak(size: u64, steps: u64, pause: Duration) -> Result<(Map<String, Value>, Vec<Mapping>)> {
    ensure!(steps > 0, "--steps must be at least 1");
    let ps = page_size() as u64;
    let step = (size / steps).div_ceil(ps) * ps;
    let mut maps = Vec::new();
    for _ in 0..steps {
        let len = usize::try_from(step).context("--size too large")?;
        let map = Mapping::anon(len)?;
        map.write_pages(len / ps as usize);
        maps.push(map);
        nap(pause);
    }
    Ok((
        report_base("leak")
            .with("bytes", step * steps)
            .with("pages", step * steps / ps),
        maps,
    ))
}

/// Keeps a reader to a number of MiB per second (0: no limit).
struct Pacer {
    start: Instant,
    bytes_per_s: u64,
}

impl Pacer {
    fn new(mib_s: u64) -> Self {
        Self {
            start: Instant::now(),
            bytes_per_s: mib_s << 20,
        }
    }

    /// Sleeps until `done` bytes are due.
    fn wait(&self, done: u64) {
        if self.bytes_per_s == 0 {
            return;
        }
        let due = Duration::from_secs_f64(done as f64 / self.bytes_per_s as f64);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// `anon --pages N`
fn anon(pages: u64, rounds: u64) -> Result<Map<String, Value>> {
    ensure!(pages > 0, "--pages must be at least 1");
    ensure!(rounds > 0, "--rounds must be at least 1");
    let ps = page_size();
    let n = usize::try_from(pages).context("--pages too large")?;
    let len = n.checked_mul(ps).context("--pages too large")?;
    let mut elapsed = Duration::ZERO;
    let mut vm_start = 0;
    for round in 0..rounds {
        let map = Mapping::anon(len)?;
        let start = Instant::now();
        map.write_pages(n);
        if rounds == 1 || round > 0 {
            elapsed += start.elapsed();
        }
        vm_start = map.addr();
        drop(map);
    }
    let timed = if rounds == 1 { 1 } else { rounds - 1 };
    Ok(report_base("anon")
        .with("pages", pages * rounds)
        .with("timed_pages", pages * timed)
        .with("rounds", rounds)
        .with("elapsed_ns", nanos(elapsed))
        .with("vm_start", vm_start))
}

/// `mmap-read --path F [--drop-cache] [--advice A]`
fn mmap_read(
    path: &Path,
    drop_first: bool,
    advice: Advice,
    pace_mib_s: u64,
) -> Result<(Map<String, Value>, Mapping)> {
    let ps = page_size();
    let file = open(path)?;
    let len = file_len(&file, path)?;
    let pages = len.div_ceil(ps);
    if drop_first {
        drop_cache(&file).with_context(|| format!("dropping the cache of {}", path.display()))?;
    }
    let map = Mapping::file(&file, len, libc::PROT_READ, libc::MAP_SHARED)?;
    map.advise(advice.raw())?;
    let resident_before = map.resident()?;
    let start = Instant::now();
    if pace_mib_s == 0 {
        map.read_pages(pages);
    } else {
        // 1 MiB at a time, waiting to keep to the pace.
        let pacer = Pacer::new(pace_mib_s);
        let step = (1 << 20) / ps;
        let mut done = 0;
        while done < pages {
            let next = (done + step).min(pages);
            map.read_range(done, next);
            done = next;
            pacer.wait((done * ps) as u64);
        }
    }
    let elapsed = start.elapsed();
    let resident_after = map.resident()?;
    let report = with_file_id(report_base("mmap-read"), path, &file)?
        .with("pages", pages)
        .with("elapsed_ns", nanos(elapsed))
        .with("drop_cache", drop_first)
        .with("advice", advice.name())
        .with("resident_before", resident_before)
        .with("resident_after", resident_after);
    Ok((report, map))
}

/// `cow --path F --pages K`
fn cow(path: &Path, pages: u64) -> Result<Map<String, Value>> {
    let ps = page_size();
    let file = open(path)?;
    let len = file_len(&file, path)?;
    let file_pages = len.div_ceil(ps);
    let n = usize::try_from(pages).context("--pages too large")?;
    ensure!(
        n <= file_pages,
        "--pages {pages} is more than the {file_pages} pages of {}",
        path.display()
    );
    let map = Mapping::file(
        &file,
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )?;
    let start = Instant::now();
    map.write_pages(n);
    let elapsed = start.elapsed();
    drop(map);
    Ok(with_file_id(report_base("cow"), path, &file)?
        .with("pages", pages)
        .with("file_pages", file_pages)
        .with("elapsed_ns", nanos(elapsed)))
}

/// `evict --path F`; returns the (untouched) mapping so it outlives the final pause.
fn evict(path: &Path, pause: Duration) -> Result<(Map<String, Value>, Mapping)> {
    let ps = page_size();
    let mut file = open(path)?;
    let len = file_len(&file, path)?;
    let pages = len.div_ceil(ps);
    // Load the file through read(), not through a mapping, so the tracer sees
    // no faults on it, only the evictions below.
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0usize;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    std::hint::black_box(&buf);
    // Clean pages only: POSIX_FADV_DONTNEED skips dirty ones.
    file.sync_data()
        .with_context(|| format!("fdatasync {}", path.display()))?;
    let map = Mapping::file(&file, len, libc::PROT_READ, libc::MAP_SHARED)?;
    nap(pause);
    let resident_before = map.resident()?;
    fadvise_dontneed(&file).with_context(|| format!("evicting {}", path.display()))?;
    let resident_after = map.resident()?;
    let report = with_file_id(report_base("evict"), path, &file)?
        .with("pages", pages)
        .with("bytes_read", read)
        .with("resident_before", resident_before)
        .with("resident_after", resident_after);
    Ok((report, map))
}

/// `fork --parent-pages M --child-pages N`
fn fork(parent_pages: u64, child_pages: u64) -> Result<Map<String, Value>> {
    let ps = page_size();
    let m = usize::try_from(parent_pages).context("--parent-pages too large")?;
    let n = usize::try_from(child_pages).context("--child-pages too large")?;
    let child_len = n.checked_mul(ps).context("--child-pages too large")?;
    let parent_map = if m > 0 {
        let map = Mapping::anon(m.checked_mul(ps).context("--parent-pages too large")?)?;
        map.write_pages(m);
        Some(map)
    } else {
        None
    };
    // SAFETY: the child only makes raw syscalls (async-signal-safe) and
    // leaves with _exit, so forking a multi-threaded process is fine.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        child_touch(child_len, ps);
    }
    let status = wait_child(pid)?;
    drop(parent_map);
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child {pid} failed (wait status {status:#x})"
    );
    Ok(report_base("fork")
        .with("parent_pid", std::process::id())
        .with("child_pid", pid)
        .with("parent_pages", parent_pages)
        .with("child_pages", child_pages))
}

/// The forked child: touches `len` bytes of fresh anonymous memory, then `_exit`s.
fn child_touch(len: usize, ps: usize) -> ! {
    let mut code = 0;
    if len > 0 {
        // SAFETY: raw anonymous mapping; every write stays inside it.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                code = 1;
            } else {
                let base = p.cast::<u8>();
                for off in (0..len).step_by(ps) {
                    std::ptr::write_volatile(base.add(off), 1);
                }
                libc::munmap(p, len);
            }
        }
    }
    // SAFETY: _exit skips atexit handlers and stdio flushing that belong to the parent.
    unsafe { libc::_exit(code) }
}

/// waitpid() that retries on EINTR; returns the wait status.
fn wait_child(pid: libc::pid_t) -> Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: plain syscall with a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).with_context(|| format!("waitpid {pid}"));
        }
    }
}

/// `make-file --path F --size BYTES`
fn make_file(path: &Path, size: u64) -> Result<Map<String, Value>> {
    let ps = page_size() as u64;
    let file = datafile::make_file(path, size)?;
    Ok(with_file_id(report_base("make-file"), path, &file)?
        .with("bytes", size)
        .with("pages", size.div_ceil(ps)))
}

/// The calling thread's id.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Pins the calling thread to `cpu` (best effort: 1-CPU machines).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; the set is passed by pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `stale-fault --path F`: see [`Workload::StaleFault`].
fn stale_fault(path: &Path, pages: u64, gap: Duration) -> Result<Map<String, Value>> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    };
    const SLOTS: u32 = 1024;
    let ps = page_size();
    let me = gettid();
    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicU64::new(0));
    // Threads until one's tid shares this thread's slot.
    let mut sibling = None;
    for _ in 0..200_000 {
        let (tx, rx) = mpsc::channel();
        let (go2, stop2, faults2) = (go.clone(), stop.clone(), faults.clone());
        let h = std::thread::spawn(move || {
            let tid = gettid();
            let _ = tx.send(tid);
            if tid % SLOTS != me % SLOTS {
                return;
            }
            pin(1);
            while !go2.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let len = 4 << 20;
            while !stop2.load(Relaxed) {
                if let Ok(m) = Mapping::anon(len) {
                    m.write_pages(len / page_size());
                    faults2.fetch_add((len / page_size()) as u64, Relaxed);
                }
            }
        });
        let tid = rx.recv().context("a sibling thread")?;
        if tid % SLOTS == me % SLOTS {
            sibling = Some((tid, h));
            break;
        }
        let _ = h.join();
    }
    let (sibling_tid, sibling) = sibling.context("no thread id shared this thread's slot")?;
    let file = open(path)?;
    let len = file_len(&file, path)?;
    let n = usize::try_from(pages)
        .context("--pages too large")?
        .min(len.div_ceil(ps));
    drop_cache(&file).with_context(|| format!("dropping the cache of {}", path.display()))?;
    let map = Mapping::file(&file, len, libc::PROT_READ, libc::MAP_SHARED)?;
    map.advise(libc::MADV_RANDOM)?;
    // The failed fault, on CPU 0.
    pin(0);
    let zero = open(Path::new("/dev/zero"))?;
    let start = Instant::now();
    // SAFETY: the kernel checks the (unmapped) destination and fails.
    let rc = unsafe { libc::read(zero.as_raw_fd(), 0x1000 as *mut libc::c_void, 1) };
    let efault = rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT);
    std::thread::sleep(gap);
    // Cold reads on CPU 1 with the sibling faulting there.
    go.store(true, Relaxed);
    pin(1);
    std::thread::sleep(Duration::from_millis(20));
    let reads = Instant::now();
    // One page at a time: each a major fault of its own (MADV_RANDOM).
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(map.read_range(i, i + 1));
    }
    std::hint::black_box(sum);
    let reads_elapsed = reads.elapsed();
    stop.store(true, Relaxed);
    let _ = sibling.join();
    let elapsed = start.elapsed();
    Ok(with_file_id(report_base("stale-fault"), path, &file)?
        .with("tid", me)
        .with("sibling_tid", sibling_tid)
        .with("efault", efault)
        .with("pages", n)
        .with("gap_ns", nanos(gap))
        .with("reads_elapsed_ns", nanos(reads_elapsed))
        .with("elapsed_ns", nanos(elapsed))
        .with("sibling_faults", faults.load(Relaxed)))
}

/// An `mmap()`ed region, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn anon(len: usize) -> Result<Mapping> {
        Mapping::new(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        )
    }

    fn file(file: &File, len: usize, prot: libc::c_int, flags: libc::c_int) -> Result<Mapping> {
        Mapping::new(len, prot, flags, file.as_raw_fd())
    }

    fn new(len: usize, prot: libc::c_int, flags: libc::c_int, fd: libc::c_int) -> Result<Mapping> {
        ensure!(len > 0, "cannot map 0 bytes");
        // SAFETY: a fresh mapping chosen by the kernel; nothing aliases it.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap of {len} bytes"));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// One volatile write to each of the first `pages` pages.
    fn write_pages(&self, pages: usize) {
        let ps = page_size();
        assert!(pages.saturating_mul(ps) <= self.len.next_multiple_of(ps));
        for i in 0..pages {
            // SAFETY: the offset is inside the (writable) mapping, checked above.
            unsafe { std::ptr::write_volatile(self.ptr.add(i * ps), 1) };
        }
    }

    /// One volatile read from each of the first `pages` pages.
    /// Reads one byte of each page in `from..to`.
    fn read_range(&self, from: usize, to: usize) -> u64 {
        let ps = page_size();
        assert!(to.saturating_mul(ps) <= self.len.next_multiple_of(ps));
        let mut sum = 0u64;
        for i in from..to {
            // SAFETY: the offset is inside the mapping, checked above.
            let b = unsafe { std::ptr::read_volatile(self.ptr.add(i * ps)) };
            sum = sum.wrapping_add(u64::from(b));
        }
        std::hint::black_box(sum)
    }

    fn read_pages(&self, pages: usize) -> u64 {
        let ps = page_size();
        assert!(pages.saturating_mul(ps) <= self.len.next_multiple_of(ps));
        let mut sum = 0u64;
        for i in 0..pages {
            // SAFETY: the offset is inside the mapping, checked above.
            let b = unsafe { std::ptr::read_volatile(self.ptr.add(i * ps)) };
            sum = sum.wrapping_add(u64::from(b));
        }
        std::hint::black_box(sum)
    }

    fn advise(&self, advice: libc::c_int) -> Result<()> {
        // SAFETY: advice on our own mapping; none of the used values discard data.
        let rc = unsafe { libc::madvise(self.ptr.cast(), self.len, advice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("madvise");
        }
        Ok(())
    }

    /// Number of the mapping's pages that are resident (mincore()).
    fn resident(&self) -> Result<u64> {
        let mut vec = vec![0u8; self.len.div_ceil(page_size())];
        // SAFETY: `vec` has one byte per page of the mapping.
        let rc = unsafe { libc::mincore(self.ptr.cast(), self.len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mincore");
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region this value owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The system page size (sysconf(_SC_PAGESIZE)).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(ps).ok().filter(|&p| p > 0).unwrap_or(4096)
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

/// The file's length; errors for an empty file (it cannot be mapped).
fn file_len(file: &File, path: &Path) -> Result<usize> {
    let len = file
        .metadata()
        .with_context(|| format!("fstat {}", path.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty; create it with `make-file`", path.display());
    }
    usize::try_from(len).with_context(|| format!("{} is too large", path.display()))
}

fn nap(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The fields every report has.
fn report_base(workload: &str) -> Map<String, Value> {
    Map::new()
        .with("workload", workload)
        .with("pid", std::process::id())
        .with("page_size", page_size())
}

/// Adds `path`, `dev` ("major:minor") and `ino` of an open file.
fn with_file_id(
    report: Map<String, Value>,
    path: &Path,
    file: &File,
) -> Result<Map<String, Value>> {
    let meta = file
        .metadata()
        .with_context(|| format!("fstat {}", path.display()))?;
    let dev = meta.dev() as libc::dev_t;
    Ok(report
        .with("path", path.display().to_string())
        .with("dev", format!("{}:{}", libc::major(dev), libc::minor(dev)))
        .with("ino", meta.ino()))
}

/// Writes the report as pretty JSON, atomically (temporary file + rename).
fn write_report(path: &Path, report: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Builder-style insertion into a JSON object.
trait With {
    fn with(self, key: &str, value: impl Into<Value>) -> Self;
}

impl With for Map<String, Value> {
    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.insert(key.to_owned(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: WorkloadArgs,
    }

    /// A temporary directory whose files can really be evicted: not on tmpfs.
    fn test_dir() -> tempfile::TempDir {
        let tmp = std::env::temp_dir();
        if is_tmpfs(&tmp) {
            let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/workload-tests");
            std::fs::create_dir_all(&base).unwrap();
            tempfile::tempdir_in(base).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        }
    }

    fn is_tmpfs(path: &Path) -> bool {
        use std::os::unix::ffi::OsStrExt as _;
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statfs fills the zeroed struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and out-pointer.
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        rc == 0 && st.f_type as i64 == 0x0102_1994
    }

    fn args(workload: Workload) -> WorkloadArgs {
        WorkloadArgs {
            workload,
            report: None,
            pause_ms: 0,
        }
    }

    fn u(report: &Value, key: &str) -> u64 {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing in {report}"))
    }

    fn assert_common(report: &Value, name: &str) {
        assert_eq!(report["workload"], name);
        assert_eq!(u(report, "pid"), u64::from(std::process::id()));
        assert_eq!(u(report, "page_size"), page_size() as u64);
    }

    fn make(dir: &Path, name: &str, bytes: u64) -> PathBuf {
        let path = dir.join(name);
        run(&args(Workload::MakeFile {
            path: path.clone(),
            size: bytes,
        }))
        .unwrap();
        path
    }

    #[test]
    fn cli_parses_every_workload() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "w",
            "anon",
            "--pages",
            "5",
            "--report",
            "r.json",
            "--pause-ms",
            "7",
        ])
        .unwrap();
        assert!(matches!(
            cli.args.workload,
            Workload::Anon {
                pages: 5,
                rounds: 1
            }
        ));
        assert_eq!(cli.args.report.as_deref(), Some(Path::new("r.json")));
        assert_eq!(cli.args.pause_ms, 7);
        let cli = Cli::try_parse_from(["w", "--report", "x", "mmap-read", "--path", "f"]).unwrap();
        assert!(matches!(
            cli.args.workload,
            Workload::MmapRead {
                drop_cache: false,
                advice: Advice::Normal,
                hold: false,
                pace_mib_s: 0,
                ..
            }
        ));
        for argv in [
            &[
                "w",
                "mmap-read",
                "--path",
                "f",
                "--drop-cache",
                "--advice",
                "random",
            ][..],
            &["w", "cow", "--path", "f", "--pages", "3"],
            &["w", "evict", "--path", "f", "--pause-ms", "100"],
            &["w", "fork", "--parent-pages", "1", "--child-pages", "2"],
            &["w", "make-file", "--path", "f", "--size", "512M"],
            &["w", "sleep", "--ms", "5"],
            &["w", "sigbus", "--path", "f", "--die"],
            &["w", "sigbus", "--path", "f", "--segv", "--pages", "8"],
            &["w", "shootdown", "--rounds", "10", "--threads", "1"],
            &[
                "w",
                "shootdown",
                "--rounds",
                "10",
                "--chunks",
                "3",
                "--pages",
                "1",
            ],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["w", "sigbus", "--path", "f", "--die", "--segv"]).is_err());
        let cli = Cli::try_parse_from(["w", "make-file", "--path", "f", "--size", "2k"]).unwrap();
        assert!(matches!(
            cli.args.workload,
            Workload::MakeFile { size: 2048, .. }
        ));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn anon_reports_pages_and_writes_report() {
        let dir = test_dir();
        let report_path = dir.path().join("anon.json");
        let mut a = args(Workload::Anon {
            pages: 64,
            rounds: 1,
        });
        a.report = Some(report_path.clone());
        let report = run(&a).unwrap();
        assert_common(&report, "anon");
        assert_eq!(u(&report, "pages"), 64);
        assert!(u(&report, "elapsed_ns") > 0);
        assert!(u(&report, "vm_start") > 0);
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        assert_eq!(written, report);
        assert!(
            run(&args(Workload::Anon {
                pages: 0,
                rounds: 1
            }))
            .is_err()
        );
    }

    #[test]
    fn make_file_has_size_and_non_zero_data() {
        let dir = test_dir();
        let ps = page_size() as u64;
        let path = dir.path().join("f");
        let report = run(&args(Workload::MakeFile {
            path: path.clone(),
            size: 3 * ps + 100,
        }))
        .unwrap();
        assert_common(&report, "make-file");
        assert_eq!(u(&report, "pages"), 4);
        assert_eq!(u(&report, "bytes"), 3 * ps + 100);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, 3 * ps + 100);
        assert!(data.iter().all(|&b| b != 0));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(u(&report, "ino"), meta.ino());
        let dev = meta.dev() as libc::dev_t;
        assert_eq!(
            report["dev"],
            format!("{}:{}", libc::major(dev), libc::minor(dev))
        );
        // Overwriting truncates.
        run(&args(Workload::MakeFile {
            path: path.clone(),
            size: 10,
        }))
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10);
    }

    #[test]
    fn mmap_read_counts_pages() {
        let dir = test_dir();
        let ps = page_size() as u64;
        let path = make(dir.path(), "f", 256 * ps + 1);
        let report = run(&args(Workload::MmapRead {
            path: path.clone(),
            drop_cache: true,
            advice: Advice::Normal,
            hold: false,
            pace_mib_s: 0,
        }))
        .unwrap();
        assert_common(&report, "mmap-read");
        assert_eq!(u(&report, "pages"), 257);
        assert_eq!(u(&report, "resident_after"), 257);
        assert!(u(&report, "resident_before") < 257, "{report}");
        assert!(u(&report, "ino") > 0);
        assert!(report["dev"].as_str().unwrap().contains(':'));
        let warm = run(&args(Workload::MmapRead {
            path,
            drop_cache: false,
            advice: Advice::Random,
            hold: false,
            pace_mib_s: 0,
        }))
        .unwrap();
        assert_eq!(u(&warm, "resident_before"), 257);
        assert_eq!(warm["advice"], "random");
    }

    #[test]
    fn mmap_read_of_empty_file_fails_clearly() {
        let dir = test_dir();
        let path = make(dir.path(), "empty", 0);
        let err = run(&args(Workload::MmapRead {
            path,
            drop_cache: false,
            advice: Advice::Normal,
            hold: false,
            pace_mib_s: 0,
        }))
        .unwrap_err();
        assert!(format!("{err:#}").contains("empty"), "{err:#}");
    }

    #[test]
    fn cow_writes_leading_pages() {
        let dir = test_dir();
        let ps = page_size() as u64;
        let path = make(dir.path(), "f", 8 * ps);
        let before = std::fs::read(&path).unwrap();
        let report = run(&args(Workload::Cow {
            path: path.clone(),
            pages: 4,
        }))
        .unwrap();
        assert_common(&report, "cow");
        assert_eq!(u(&report, "pages"), 4);
        assert_eq!(u(&report, "file_pages"), 8);
        // MAP_PRIVATE: the file itself is unchanged.
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(run(&args(Workload::Cow { path, pages: 9 })).is_err());
    }

    #[test]
    fn evict_drops_resident_pages() {
        let dir = test_dir();
        let ps = page_size() as u64;
        let path = make(dir.path(), "f", 128 * ps);
        let mut a = args(Workload::Evict { path });
        a.pause_ms = 1;
        let report = run(&a).unwrap();
        assert_common(&report, "evict");
        assert_eq!(u(&report, "pages"), 128);
        assert_eq!(u(&report, "bytes_read"), 128 * ps);
        let before = u(&report, "resident_before");
        let after = u(&report, "resident_after");
        assert!(after <= before, "{report}");
        assert!(before > 0, "{report}");
        assert!(after < before, "nothing was evicted: {report}");
    }

    #[test]
    fn fork_reports_both_processes() {
        let report = run(&args(Workload::Fork {
            parent_pages: 16,
            child_pages: 32,
        }))
        .unwrap();
        assert_common(&report, "fork");
        assert_eq!(u(&report, "parent_pid"), u64::from(std::process::id()));
        let child = u(&report, "child_pid");
        assert!(child > 0 && child != u64::from(std::process::id()));
        assert_eq!(u(&report, "parent_pages"), 16);
        assert_eq!(u(&report, "child_pages"), 32);
    }

    #[test]
    fn sleep_and_pause_take_their_time() {
        let start = Instant::now();
        let mut a = args(Workload::Sleep { ms: 20 });
        a.pause_ms = 10;
        let report = run(&a).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40));
        assert_common(&report, "sleep");
        assert_eq!(u(&report, "ms"), 20);
    }
}
