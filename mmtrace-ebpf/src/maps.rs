//! Every map of mmtrace, in one place. Sizes come from `mmtrace_common::limits`;
//! the loader may resize them before load.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use mmtrace_common::{
    CacheCounters, CgroupKey, Comm, EvictedBits, ExitRecord, FaultCounters, FileKey, MappingKey,
    MsyncCall, PageKey, ReclaimCtx, ReclaimStats, ScopeEntry, TlbCounters, VmaCache, WriteCounters,
    errors, limits,
};

use crate::{
    faults::{Pending, ThreadFault},
    scope::Verdict,
};

/// Flags of the hash maps whose entries are allocated when inserted, not
/// all at load. Preallocated, every map locked 55 MiB on 2 CPUs (a per-CPU
/// value × every possible CPU, for the whole capacity) and took ~0.3 s to
/// create. Safe for any program type since Linux 6.1 (bpf_mem_alloc;
/// mmtrace needs 6.12); lookups cost the same, and an insert into a full
/// map fails as before (counted in `ERRORS`).
///
/// Per-CPU values only where inserts are rare (a file, a command name): a
/// per-CPU value comes from the kernel's per-CPU allocator, which in atomic
/// context serves only pages it has populated beforehand, and bursts of
/// inserts find none. Measured: a per-CPU `MAPPING_FAULTS` allocated on
/// insert lost 6-7 faults to failed inserts in one of three runs of the
/// 1,500-process test (`tests/stream.rs`). So the per-mapping, per-process
/// maps (`MAPPING_FAULTS`, `EXITS`, `TLB_FLUSHES`) hold one shared value
/// per key, added to with atomic instructions ([`atomic_add`]): allocated
/// on insert, they lock only what is used, and nothing scales with the
/// number of CPUs (preallocated per-CPU, they locked 25 MiB on 2 CPUs and
/// would lock 800 MiB on 64). The fault path stays free of atomics: it
/// counts into a per-CPU vma cache slot (`VMA_CACHE`) and adds it to the
/// map when the slot changes vma. The LRU `EVICTED` stays preallocated
/// (LRU maps cannot be allocated on insert).
pub const ON_INSERT: u32 = BPF_F_NO_PREALLOC;

/// Processes in scope, by tgid. Written by userspace (targets) and by
/// `task_newtask` (children); entries leave when the thread group dies.
#[map]
pub static SCOPE: HashMap<u32, ScopeEntry> = HashMap::with_max_entries(limits::SCOPE, ON_INSERT);

/// Fault counters per (process, vma, file).
#[map]
pub static MAPPING_FAULTS: HashMap<MappingKey, FaultCounters> =
    HashMap::with_max_entries(limits::MAPPINGS, ON_INSERT);

/// Faults of in-scope processes that could not get a `MAPPING_FAULTS` row
/// (map full): still counted, never silently lost.
#[map]
pub static LOST_FAULTS: PerCpuArray<FaultCounters> = PerCpuArray::with_max_entries(1, 0);

/// Page-cache counters per file; a key's presence marks the file as one of
/// interest (mapped or touched by an in-scope process).
#[map]
pub static FILE_CACHE: PerCpuHashMap<FileKey, CacheCounters> =
    PerCpuHashMap::with_max_entries(limits::FILES, ON_INSERT);

/// Pages of files of interest evicted during the trace, as bitmaps of 64
/// pages (key index = page index / 64) split into reclaimed and invalidated,
/// checked on every addition to count refaults and re-reads. LRU: the
/// oldest evictions are forgotten first.
#[map]
pub static EVICTED: LruHashMap<PageKey, EvictedBits> =
    LruHashMap::with_max_entries(limits::EVICTED, 0);

/// Pages of files of interest evicted by tasks outside syscalls and
/// cgroup/global reclaim, by command name (kdamond, khugepaged, kworker..).
#[map]
pub static RECLAIMERS: PerCpuHashMap<Comm, u64> =
    PerCpuHashMap::with_max_entries(limits::RECLAIMERS, ON_INSERT);

/// Kernel fault counters of exited threads, per tgid.
#[map]
pub static EXITS: HashMap<u32, ExitRecord> = HashMap::with_max_entries(limits::EXITS, ON_INSERT);

/// Reclaim in progress, by thread id (set at `*_reclaim_begin`, removed at
/// `*_reclaim_end`): the context that names an eviction's reason.
#[map]
pub static RECLAIM: HashMap<u32, ReclaimCtx> = HashMap::with_max_entries(8192, ON_INSERT);

/// Reclaim episodes of traced tasks.
#[map]
pub static RECLAIM_STATS: PerCpuArray<ReclaimStats> = PerCpuArray::with_max_entries(1, 0);

/// The traced cgroup tree (with `--cgroup`), written by userspace.
#[map]
pub static CGROUPS: HashMap<CgroupKey, u8> = HashMap::with_max_entries(4096, ON_INSERT);

/// Rare notices for userspace (a new file of interest): never per fault.
#[map]
pub static NOTICES: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Raw events (`--events` only; sized by the loader, the smallest buffer
/// when no event is asked for).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES_OFF, 0);

/// Raw events the full `EVENTS` ring buffer had no room for, per CPU.
#[map]
pub static EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU candidate counter for `--sample`.
#[map]
pub static EVENTS_SAMPLE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// TLB flushes per traced process (key: tgid), by reason (`tlb`).
#[map]
pub static TLB_FLUSHES: HashMap<u32, TlbCounters> =
    HashMap::with_max_entries(limits::SCOPE, ON_INSERT);

/// Per-CPU error counters, indexed by `mmtrace_common::errors`.
#[map]
pub static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(errors::COUNT, 0);

/// Per-CPU hand-over from the tracepoints that fire early in a fault
/// (exception entry, fault-around) to the perf event that ends it, one slot
/// per `tid % PENDING_SLOTS`: a fault that sleeps (I/O) keeps its slot while
/// other tasks fault on the same CPU (with one slot per CPU they overwrote
/// it, and the fault lost its error code — read/write — and its latency).
#[map]
pub static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(PENDING_SLOTS, 0);

/// Slots of [`PENDING`] per CPU (a power of two).
pub const PENDING_SLOTS: u32 = 1024;

/// The [`PENDING`] slot of thread `tid`.
#[inline(always)]
pub fn pending_slot(tid: u32) -> u32 {
    tid & (PENDING_SLOTS - 1)
}

/// The write path per file of interest (dirtied, written back, msync).
#[map]
pub static FILE_WRITES: PerCpuHashMap<FileKey, WriteCounters> =
    PerCpuHashMap::with_max_entries(limits::WRITE_FILES, ON_INSERT);

/// msync calls of traced threads in flight, by thread id.
#[map]
pub static MSYNC_INFLIGHT: HashMap<u32, MsyncCall> =
    HashMap::with_max_entries(limits::MSYNC_INFLIGHT, ON_INSERT);

/// Each thread's last fault counted at entry, until its outcome is known
/// (`faults`), one slot per `tid % THREAD_SLOTS` (not per CPU: a thread's
/// next fault may run on another CPU).
#[map]
pub static THREAD_FAULTS: Array<ThreadFault> = Array::with_max_entries(THREAD_SLOTS, 0);

/// Slots of [`THREAD_FAULTS`] (a power of two; 80 bytes each).
pub const THREAD_SLOTS: u32 = 16_384;

/// The [`THREAD_FAULTS`] slot of thread `tid`.
#[inline(always)]
pub fn thread_slot(tid: u32) -> u32 {
    tid & (THREAD_SLOTS - 1)
}

/// Changed (to the time) whenever the scope changes (`scope`, and userspace
/// when it adds a process): cached scope verdicts older than it are void.
#[map]
pub static SCOPE_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// The fault path's last scope verdict, per CPU (valid while `SCOPE_GEN`
/// is unchanged).
#[map]
pub static SCOPE_VERDICT: PerCpuArray<Verdict> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU last vma looked up, valid while the mm's `mm_lock_seq` is unchanged.
#[map]
pub static VMA_CACHE: PerCpuArray<VmaCache> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count_error(index: u32) {
    if let Some(p) = ERRORS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// The hash maps [`get_or_insert`] serves: per-CPU values, or one value
/// shared by every CPU (add to those with [`atomic_add`]).
pub trait Entries<K, V> {
    fn ptr(&self, key: &K) -> Option<*mut V>;
    /// Inserts `v` unless `key` is present (`BPF_NOEXIST`).
    fn insert_new(&self, key: &K, v: &V);
}

impl<K, V> Entries<K, V> for PerCpuHashMap<K, V> {
    #[inline(always)]
    fn ptr(&self, key: &K) -> Option<*mut V> {
        self.get_ptr_mut(key)
    }
    #[inline(always)]
    fn insert_new(&self, key: &K, v: &V) {
        let _ = self.insert(key, v, 1);
    }
}

impl<K, V> Entries<K, V> for HashMap<K, V> {
    #[inline(always)]
    fn ptr(&self, key: &K) -> Option<*mut V> {
        self.get_ptr_mut(key)
    }
    #[inline(always)]
    fn insert_new(&self, key: &K, v: &V) {
        let _ = self.insert(key, v, 1);
    }
}

/// Looks `key` up in a hash map, inserting `zero` first if absent.
/// Counts `error` and returns `None` when the map is full.
#[inline(always)]
pub fn get_or_insert<K, V>(
    map: &impl Entries<K, V>,
    key: &K,
    zero: &V,
    error: u32,
) -> Option<*mut V> {
    if let Some(p) = map.ptr(key) {
        return Some(p);
    }
    // Another CPU may have inserted it meanwhile; look again.
    map.insert_new(key, zero);
    let p = map.ptr(key);
    if p.is_none() {
        count_error(error);
    }
    p
}

/// Adds `v` to the shared `u64` at `p` with one atomic instruction (BPF
/// `lock xadd`): for values of maps that are not per-CPU.
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points at an aligned u64 in a map value. The result is
    // unused, so LLVM emits the plain `lock xadd` every BPF CPU version has.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}
