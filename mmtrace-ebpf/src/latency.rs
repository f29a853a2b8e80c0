//! Fault latency (`--latency`): the time from a fault's entry
//! (`exceptions:page_fault_user/kernel`, raw tracepoints, see `faults`) to
//! the kernel's accounting of it (perf `PAGE_FAULTS_MIN/MAJ`, fired once per
//! fault after all retries), in log2 histograms per (file, minor/major) and
//! stall totals per process.
//!
//! Pairing is per task: the entry hook leaves (tid, address, time) in the
//! thread's `PENDING` slot; the accounting event takes it (searching the
//! other CPUs when the fault migrated) and pairs it only if its address is
//! the perf sample's address (equal for the same fault: 17159/17159
//! measured). A fault that fails (SIGSEGV/SIGBUS, -EFAULT, fatal signal)
//! gets no accounting event and leaves its entry behind; the next fault of
//! the thread overwrites it, and if a later accounting event finds it
//! anyway (its own entry was written on another CPU) the address differs:
//! counted as a miss, never paired. Every accounted fault of a traced
//! process that is not paired is counted in `LATENCY_MISSES` by why.
//!
//! Cost: two per-CPU hash lookups per accounted fault (file histogram,
//! process totals), and a timestamp at every fault entry.
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use mmtrace_common::{
    LATENCY_BUCKETS, LATENCY_FILES, LatencyHist, LatencyKey, ProcStall, latency_miss, limits,
};

/// Latency histograms per (file, major?); `ino` 0 / `dev` 0: anonymous
/// memory, `dev` `u32::MAX`: faults whose vma could not be found. Sized to
/// 1 entry by the loader without `--latency`.
#[map]
pub static FAULT_LATENCY: PerCpuHashMap<LatencyKey, LatencyHist> =
    PerCpuHashMap::with_max_entries(LATENCY_FILES, 0);

/// Fault stall totals per process (tgid). Sized to 1 entry by the loader
/// without `--latency`; userspace deletes the entries of folded processes.
#[map]
pub static PROC_STALL: PerCpuHashMap<u32, ProcStall> =
    PerCpuHashMap::with_max_entries(limits::SCOPE, 0);

/// Accounted faults not paired with their entry, by
/// [`mmtrace_common::latency_miss`] index.
#[map]
pub static LATENCY_MISSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(latency_miss::COUNT, 0);

/// An all-zero histogram to insert from (344 bytes: too big for the stack).
#[map]
static LATENCY_ZERO: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(1, 0);

/// A fault entry older than this is not this fault's (60 s).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

#[inline(always)]
pub fn miss(index: u32) {
    if let Some(p) = LATENCY_MISSES.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The latency of a fault accounted at `now` whose entry (if any, `start`
/// non-zero) was at `entry_addr`; `None` (counted) when it cannot be paired.
#[inline(always)]
pub fn paired(addr: u64, entry_addr: u64, start: u64, now: u64) -> Option<u64> {
    if start == 0 {
        miss(latency_miss::NO_ENTRY);
        return None;
    }
    if entry_addr != addr {
        miss(latency_miss::ADDR_MISMATCH);
        return None;
    }
    if start > now || now - start > MAX_LATENCY_NS {
        miss(latency_miss::BAD_TIME);
        return None;
    }
    Some(now - start)
}

/// Log2 bucket of `ns`: 0 for 0, else `floor(log2(ns)) + 1`, capped.
#[inline(always)]
fn bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    // bcc's log2l, branch-free.
    let mut v = ns;
    let mut r: u64 = ((v > 0xFFFF_FFFF) as u64) << 5;
    v >>= r;
    let mut s = ((v > 0xFFFF) as u64) << 4;
    v >>= s;
    r |= s;
    s = ((v > 0xFF) as u64) << 3;
    v >>= s;
    r |= s;
    s = ((v > 0xF) as u64) << 2;
    v >>= s;
    r |= s;
    s = ((v > 0x3) as u64) << 1;
    v >>= s;
    r |= s;
    r |= v >> 1;
    let b = r as usize + 1;
    if b >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b
    }
}

/// Adds one fault of `ns` to its file's histogram and its process's totals.
/// Out of line: without `--latency` the fault path only tests a flag.
#[inline(never)]
pub fn record(key: &LatencyKey, tgid: u32, ns: u64) {
    let h = match FAULT_LATENCY.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let Some(zero) = LATENCY_ZERO.get_ptr(0) else {
                return;
            };
            // SAFETY: a per-CPU array slot, never written.
            let _ = FAULT_LATENCY.insert(key, unsafe { &*zero }, 1);
            match FAULT_LATENCY.get_ptr_mut(key) {
                Some(h) => h,
                None => {
                    miss(latency_miss::MAP_FULL);
                    return;
                }
            }
        }
    };
    let b = bucket(ns);
    // SAFETY: per-CPU value: no other writer on this CPU.
    unsafe {
        (*h).count += 1;
        (*h).sum_ns += ns;
        if ns > (*h).max_ns {
            (*h).max_ns = ns;
        }
        if let Some(c) = (*h).buckets.get_mut(b) {
            *c += 1;
        }
    }
    let p = match PROC_STALL.get_ptr_mut(&tgid) {
        Some(p) => p,
        None => {
            let _ = PROC_STALL.insert(&tgid, &ProcStall::default(), 1);
            match PROC_STALL.get_ptr_mut(&tgid) {
                Some(p) => p,
                None => {
                    miss(latency_miss::MAP_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: per-CPU value: no other writer on this CPU.
    unsafe {
        if key.major != 0 {
            (*p).major_count += 1;
            (*p).major_sum_ns += ns;
            if ns > (*p).major_max_ns {
                (*p).major_max_ns = ns;
            }
        } else {
            (*p).minor_count += 1;
            (*p).minor_sum_ns += ns;
            if ns > (*p).minor_max_ns {
                (*p).minor_max_ns = ns;
            }
        }
    }
}
