//! Workloads for the cost of mmap: a SIGBUS on a truncated file mapping,
//! TLB shootdowns between two threads of one mm, and write-through records
//! flushed with msync after each one (`sigbus`, `shootdown`, `msync`).
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Map, Value};

use super::{Mapping, With as _, nanos, page_size, report_base, with_file_id, write_report};

/// Set by the SIGBUS handler: the fault address and `si_code`.
static SIGBUS_ADDR: AtomicUsize = AtomicUsize::new(0);
static SIGBUS_CODE: AtomicUsize = AtomicUsize::new(0);
static SIGBUS_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records the signal and maps an anonymous page over the faulting one, so
/// the access succeeds when the handler returns (mmap is async-signal-safe).
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    SIGBUS_ADDR.store(addr, Ordering::SeqCst);
    SIGBUS_CODE.store(code as usize, Ordering::SeqCst);
    SIGBUS_COUNT.fetch_add(1, Ordering::SeqCst);
    let ps = page_size();
    let page = addr & !(ps - 1);
    // SAFETY: replaces one page of this process's own file mapping.
    unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
    }
}

/// SIGSEGV handler of `sigbus --segv`: records the signal and makes the
/// faulting page writable, so the write succeeds when the handler returns.
extern "C" fn on_sigsegv(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    SIGBUS_ADDR.store(addr, Ordering::SeqCst);
    SIGBUS_CODE.store(code as usize, Ordering::SeqCst);
    SIGBUS_COUNT.fetch_add(1, Ordering::SeqCst);
    let ps = page_size();
    // SAFETY: changes the protection of one page of this process's own mapping.
    unsafe {
        libc::mprotect(
            (addr & !(ps - 1)) as *mut libc::c_void,
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
        );
    }
}

/// Installs `handler` for `sig` (SA_SIGINFO).
fn install(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> Result<()> {
    // SAFETY: installs an SA_SIGINFO handler that only stores atomics and
    // makes one syscall.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        ensure!(
            libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0,
            "sigaction: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `sigbus --segv --path F`: maps F (`pages` pages) shared read-only, reads
/// it, then writes page `pages - 1`: SIGSEGV (SEGV_ACCERR), caught.
fn segv_on_read_only(path: &Path, pages: u64, settle: Duration) -> Result<Map<String, Value>> {
    let ps = page_size();
    let len = pages as usize * ps;
    let mut f = create_rw(path)?;
    f.write_all(&vec![0x5a; len])
        .with_context(|| format!("writing {}", path.display()))?;
    let map = Mapping::file(&f, len, libc::PROT_READ, libc::MAP_SHARED)?;
    map.read_pages(pages as usize);
    std::thread::sleep(settle);
    let touch = pages - 1;
    let addr = map.addr() + touch * ps as u64;
    install(libc::SIGSEGV, on_sigsegv)?;
    // SAFETY: inside the mapping; the handler makes the page writable.
    unsafe { std::ptr::write_volatile(addr as *mut u8, 1) };
    let caught = SIGBUS_COUNT.load(Ordering::SeqCst);
    ensure!(caught > 0, "writing a read-only mapping raised no SIGSEGV");
    Ok(with_file_id(report_base("sigbus"), path, &f)?
        .with("segv", true)
        .with("pages", pages)
        .with("touched_page", touch)
        .with("address", addr)
        .with("caught", caught as u64)
        .with("si_addr", SIGBUS_ADDR.load(Ordering::SeqCst) as u64)
        .with("si_code", SIGBUS_CODE.load(Ordering::SeqCst) as u64))
}

/// `sigbus --path F`: writes F (`pages` pages), maps it shared, reads every
/// page, truncates it to `keep` pages and reads page `pages - 1`: the
/// kernel sends SIGBUS (BUS_ADRERR). With `die` the process dies of it (the
/// report is written before the touch); otherwise a handler catches it.
/// It sleeps `settle` with the file mapped before truncating, as a program
/// that runs longer than a few milliseconds would (a tracer learns the
/// mapping's path from /proc meanwhile).
pub fn sigbus(
    path: &Path,
    pages: u64,
    keep: u64,
    die: bool,
    segv: bool,
    settle: Duration,
    report: Option<&Path>,
) -> Result<Map<String, Value>> {
    if segv {
        return segv_on_read_only(path, pages, settle);
    }
    ensure!(keep < pages, "--keep must be below --pages");
    let ps = page_size();
    let len = pages as usize * ps;
    let mut f = create_rw(path)?;
    f.write_all(&vec![0x5a; len])
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()?;
    let map = Mapping::file(&f, len, libc::PROT_READ, libc::MAP_SHARED)?;
    map.read_pages(pages as usize);
    std::thread::sleep(settle);
    f.set_len(keep * ps as u64)
        .with_context(|| format!("truncating {}", path.display()))?;
    let touch = pages - 1;
    let addr = map.addr() + touch * ps as u64;
    let base = with_file_id(report_base("sigbus"), path, &f)?
        .with("pages", pages)
        .with("kept_pages", keep)
        .with("touched_page", touch)
        .with("address", addr)
        .with("die", die);
    if die {
        if let Some(r) = report {
            write_report(r, &Value::Object(base.clone()))?;
        }
        map.read_range(touch as usize, pages as usize);
        anyhow::bail!("touching page {touch} beyond the end did not raise SIGBUS");
    }
    install(libc::SIGBUS, on_sigbus)?;
    map.read_range(touch as usize, pages as usize);
    let caught = SIGBUS_COUNT.load(Ordering::SeqCst);
    ensure!(
        caught > 0,
        "touching page {touch} beyond the end raised no SIGBUS"
    );
    Ok(base
        .with("sigbus_caught", caught as u64)
        .with("si_addr", SIGBUS_ADDR.load(Ordering::SeqCst) as u64)
        .with("si_code", SIGBUS_CODE.load(Ordering::SeqCst) as u64))
}

/// `shootdown --rounds N`: each round maps `pages` anonymous pages and
/// writes them; with `threads` 2 a second thread (spinning on the other
/// CPU, so the mm stays loaded there) writes them too; then the first
/// thread mprotects them read-only and unmaps them: two ranged TLB
/// flushes per round that, with the sibling running, need the other CPU.
/// `chunks` repeats the N rounds, timing each chunk (ns per round, and the
/// wall-clock end of the chunk, for side-by-side cost measurements).
pub fn shootdown(rounds: u64, pages: u64, threads: u64, chunks: u64) -> Result<Map<String, Value>> {
    ensure!(threads == 1 || threads == 2, "--threads is 1 or 2");
    let ps = page_size();
    let len = pages as usize * ps;
    let seq = Arc::new(AtomicU64::new(0));
    let ack = Arc::new(AtomicU64::new(0));
    let addr = Arc::new(AtomicUsize::new(0));
    const STOP: u64 = u64::MAX;
    let sibling = (threads == 2).then(|| {
        let (seq, ack, addr) = (seq.clone(), ack.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            loop {
                let s = seq.load(Ordering::Acquire);
                if s == last {
                    std::hint::spin_loop();
                    continue;
                }
                if s == STOP {
                    break;
                }
                let p = addr.load(Ordering::Acquire) as *mut u8;
                for i in 0..pages as usize {
                    // SAFETY: the first thread keeps the region mapped
                    // read-write until this round is acknowledged.
                    unsafe { std::ptr::write_volatile(p.add(i * ps), 2) };
                }
                last = s;
                ack.store(s, Ordering::Release);
            }
        })
    });
    let mut chunk_ns = Vec::new();
    let mut chunk_end_ms = Vec::new();
    let mut round = 0u64;
    let total = Instant::now();
    for _ in 0..chunks.max(1) {
        let t = Instant::now();
        for _ in 0..rounds {
            round += 1;
            // SAFETY: a fresh anonymous mapping owned by this round.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            ensure!(
                p != libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            let p = p as *mut u8;
            for i in 0..pages as usize {
                // SAFETY: inside the fresh read-write mapping.
                unsafe { std::ptr::write_volatile(p.add(i * ps), 1) };
            }
            if sibling.is_some() {
                addr.store(p as usize, Ordering::Release);
                seq.store(round, Ordering::Release);
                while ack.load(Ordering::Acquire) != round {
                    std::hint::spin_loop();
                }
            }
            // SAFETY: this round's own mapping.
            unsafe {
                libc::mprotect(p.cast(), len, libc::PROT_READ);
                libc::munmap(p.cast(), len);
            }
        }
        chunk_ns.push(nanos(t.elapsed()) / rounds.max(1));
        chunk_end_ms.push(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
    }
    let elapsed = total.elapsed();
    seq.store(STOP, Ordering::Release);
    if let Some(h) = sibling {
        let _ = h.join();
    }
    Ok(report_base("shootdown")
        .with("rounds", round)
        .with("pages", pages)
        .with("threads", threads)
        .with("ns_per_round", nanos(elapsed) / round.max(1))
        .with("chunk_ns_per_round", chunk_ns)
        .with("chunk_end_unix_ms", chunk_end_ms))
}

/// `msync`: writes `records` records of `record_bytes` into a shared
/// mapping of a new zero-filled file of `size` bytes, flushing each
/// record's pages after writing it (`MS_SYNC`, or `MS_ASYNC` when
/// `asynchronous`); with `rewrite`, reads every record back, doubles its
/// first word in place and flushes again. Reports the calls it made, the
/// distinct pages it wrote and its own time in msync.
pub fn msync_records(
    path: &Path,
    size: u64,
    records: u64,
    record_bytes: u64,
    asynchronous: bool,
    rewrite: bool,
) -> Result<Map<String, Value>> {
    ensure!(record_bytes >= 8, "--record-bytes must be at least 8");
    ensure!(
        records.saturating_mul(record_bytes) <= size,
        "--records x --record-bytes exceeds --size"
    );
    let f = create_rw(path)?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", path.display()))?;
    let map = Mapping::file(
        &f,
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )?;
    let ps = page_size() as u64;
    let flag = if asynchronous {
        libc::MS_ASYNC
    } else {
        libc::MS_SYNC
    };
    let mut calls = 0u64;
    let mut in_msync = Duration::ZERO;
    let mut flush = |off: u64, len: u64| -> Result<()> {
        let first = off / ps * ps;
        let end = (off + len).div_ceil(ps) * ps;
        let t = Instant::now();
        // SAFETY: a page-aligned range inside this process's own mapping.
        let r = unsafe {
            libc::msync(
                (map.addr() + first) as *mut libc::c_void,
                (end - first) as usize,
                flag,
            )
        };
        in_msync += t.elapsed();
        calls += 1;
        ensure!(r == 0, "msync: {}", std::io::Error::last_os_error());
        Ok(())
    };
    let base = map.addr() as *mut u8;
    let started = Instant::now();
    for i in 0..records {
        let off = i * record_bytes;
        // SAFETY: inside the mapping (checked against size above).
        unsafe {
            std::ptr::write_bytes(
                base.add(off as usize),
                (i % 251) as u8 + 1,
                record_bytes as usize,
            )
        };
        flush(off, record_bytes)?;
    }
    if rewrite {
        for i in 0..records {
            let off = (i * record_bytes) as usize;
            // SAFETY: inside the mapping; unaligned access through read/write_unaligned.
            unsafe {
                let p = base.add(off) as *mut u64;
                let v = std::ptr::read_unaligned(p);
                std::ptr::write_unaligned(p, v.wrapping_mul(2));
            }
            flush(off as u64, record_bytes)?;
        }
    }
    let elapsed = started.elapsed();
    let written = records * record_bytes;
    Ok(with_file_id(report_base("msync"), path, &f)?
        .with("records", records)
        .with("record_bytes", record_bytes)
        .with("msync_calls", calls)
        .with("ms_sync", !asynchronous)
        .with("distinct_pages_written", written.div_ceil(ps))
        .with("msync_ns", nanos(in_msync))
        .with("elapsed_ns", nanos(elapsed)))
}

/// Creates (or empties) `path` for reading and writing.
fn create_rw(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}
