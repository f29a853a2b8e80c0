//! Page faults: the kernel's own minor/major classification, attributed to
//! the faulting vma, for the cost of one program per fault.
//!
//! Hooks:
//! - raw tracepoints `page_fault_user` / `page_fault_kernel` (x86 only) fire
//!   first in the #PF handler, once per hardware fault (a `VM_FAULT_RETRY`
//!   inside the handler retries without a second entry):
//!   `TP_PROTO(unsigned long address, struct pt_regs *regs,
//!   unsigned long error_code)` (Linux 6.18,
//!   arch/x86/include/asm/trace/exceptions.h). Where they attach, they do
//!   all the counting ("entry counting", below).
//! - perf software events `PERF_COUNT_SW_PAGE_FAULTS_MIN` / `_MAJ` (period 1,
//!   one per CPU) fire from `mm_account_fault()`, the place that bumps
//!   `task->min_flt` / `maj_flt`. They count where the raw tracepoints do not
//!   exist (not x86), and are attached besides them only for fault latency
//!   and fault events (which need the fault's end); then the entry hands
//!   its error code and time over through `PENDING`.
//! - `filemap:mm_filemap_map_pages` (6.12+): the fault-around window
//!   (`index..=last_index`), so pages mapped per fault can be reported. Its
//!   6.18 `format`: `i_ino` offset 8, `s_dev` offset 16, `index` offset 24,
//!   `last_index` offset 32 (read from tracefs at start, not from here).
//!
//! Entry counting: each fault entry of a traced thread counts one minor
//! fault (and write / copy-on-write / write-protect by the x86 error code)
//! on the vma at once, and leaves in the thread's `THREAD_FAULTS` slot the
//! row it counted on and the thread's own kernel counters `task->min_flt`,
//! `maj_flt` as they were. How that fault ended is known at the thread's
//! next fault entry (or its exit): the counters moved by exactly what
//! `mm_account_fault()` did in between.
//! - +1 minor, no major (nearly always): it was a minor fault; nothing to do.
//! - +0: the kernel did not count it (SIGSEGV/SIGBUS, an uaccess -EFAULT,
//!   OOM, a fatal signal, or `VM_FAULT_RETRY` abandoned for a pending
//!   signal: the instruction faults again later, with a new entry): the
//!   row's counts are taken back.
//! - majors moved, minors did not: a major fault (`VM_FAULT_MAJOR`, or
//!   retried inside the handler): moved from minor to major on its row.
//! - more than one: GUP faults of the thread (`O_DIRECT`, `execve`'s argv
//!   copy; counted by the kernel, no entry, no perf event): not counted,
//!   as before (the report's kernel − traced difference). If both moved the
//!   fault stays a minor one and `FAULT_AMBIGUOUS` is counted.
//!
//! Sleeping and migrating faults need nothing: the slot is per thread, not
//! per CPU, and the counters are the thread's own. A nofault read of user
//! memory (a BPF helper, perf's user stack walk: `pagefault_disabled()`) is
//! not a fault the kernel can count: skipped at entry.
//!
//! Attribution: `bpf_find_vma` is the costly part (+55% per fault when called
//! on every fault, KERNEL-NOTES), so the last vma is cached per CPU together
//! with the mm's `mm_lock_seq`, which every mmap-write-lock section (mmap,
//! munmap, mremap, mprotect) bumps: while it is unchanged the vma layout is
//! unchanged and the cached range is still right. A cached vma also stands
//! for the scope check while `SCOPE_GEN` (changed whenever a process leaves
//! the scope) is what it was when the vma was cached.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_map_lookup_percpu_elem},
    },
    macros::{perf_event, raw_tracepoint, tracepoint},
    programs::{PerfEventContext, RawTracePointContext, TracePointContext},
};
use mmtrace_common::{
    Config, Event, FaultCounters, FileKey, LatencyKey, MappingKey, VmaCache, errors, event,
    event_mask, kind,
};

use crate::{
    events,
    kread::{conf, read},
    latency,
    maps::{
        LOST_FAULTS, MAPPING_FAULTS, PENDING, THREAD_FAULTS, VMA_CACHE, atomic_add, count_error,
        get_or_insert, pending_slot, thread_slot,
    },
    pagecache::register_file,
    scope,
};

pub(crate) const VM_SHARED: u64 = 0x8;
/// x86 page-fault error code: the page was present (a protection fault).
const X86_PF_PROT: u64 = 1 << 0;
/// x86 page-fault error code: the access was a write.
const X86_PF_WRITE: u64 = 1 << 1;
/// x86 page-fault error code: the fault came from user mode.
const X86_PF_USER: u64 = 1 << 2;
/// Kernel addresses have the top bit set (4- and 5-level paging alike): a
/// fault there is never counted by `mm_account_fault()`.
const KERNEL_HALF: u64 = 1 << 63;
const PAGE_SHIFT: u64 = 12;

/// Hand-over from the early tracepoints of a fault to its perf event
/// (with `--latency` or fault events, or without entry counting).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// Thread that wrote `error_code` (0: none).
    pub err_tid: u32,
    /// Thread that wrote `map_pages` (0: none).
    pub map_tid: u32,
    pub error_code: u64,
    pub map_pages: u64,
    /// Fault entry time (with `--latency` or fault events on).
    pub start_ns: u64,
    /// Faulting address at entry (with `--latency`): the accounting event
    /// pairs the entry only if its sample address is the same.
    pub addr: u64,
}

/// [`ThreadFault::flags`] bits.
pub mod tf {
    /// A fault is counted and its outcome not yet checked.
    pub const PENDING: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const COW: u32 = 4;
    pub const WP_SHARED: u32 = 8;
}

/// A thread's last counted fault entry, waiting for the thread's next entry
/// (or exit) to tell from its kernel counters how the fault ended.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadFault {
    pub tid: u32,
    /// [`tf`] bits.
    pub flags: u32,
    /// `task_struct` address (identity: a reused tid is another thread).
    pub task: u64,
    /// `task->min_flt`, `maj_flt` at the entry.
    pub min_flt: u64,
    pub maj_flt: u64,
    /// The row the fault was counted on.
    pub key: MappingKey,
    /// The faulting address.
    pub addr: u64,
    /// The vma's file's `address_space` (0: anonymous): fault-around of
    /// this fault names it.
    pub mapping: u64,
}

#[perf_event]
pub fn page_faults_min(ctx: PerfEventContext) -> u32 {
    on_fault(&ctx, false);
    0
}

#[perf_event]
pub fn page_faults_maj(ctx: PerfEventContext) -> u32 {
    on_fault(&ctx, true);
    0
}

/// Raw tracepoints (no record is formatted, so they cost less than the
/// tracefs ones): `TP_PROTO(unsigned long address, struct pt_regs *regs,
/// unsigned long error_code)` (arch/x86/include/asm/trace/exceptions.h).
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user(ctx: RawTracePointContext) -> u32 {
    on_entry::<false>(&ctx, ctx.arg::<u64>(0), ctx.arg::<u64>(2), false);
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: RawTracePointContext) -> u32 {
    on_entry::<false>(&ctx, ctx.arg::<u64>(0), ctx.arg::<u64>(2), true);
    0
}

/// The default trace's fault entry, on both hooks: [`page_fault_kernel`]
/// compiled for that trace alone (faults counted at entry, the vma cache
/// on, no fault latency, no fault events), so the code every fault runs
/// through holds no branch for the other configurations (the loader picks
/// it only for such a trace). Measured against the general program, both
/// attached to one anonymous storm (`--bpf-stats`, both orders): 2-5 ns
/// less per fault.
#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_count(ctx: RawTracePointContext) -> u32 {
    on_entry::<true>(&ctx, ctx.arg::<u64>(0), ctx.arg::<u64>(2), true);
    0
}

#[tracepoint]
pub fn filemap_map_pages(ctx: TracePointContext) -> u32 {
    let _ = try_filemap_map_pages(&ctx);
    0
}

/// Fault-around when faults are counted at entry (this replaces
/// [`filemap_map_pages`] then): the raw tracepoint, `TP_PROTO(struct
/// address_space *mapping, pgoff_t index, pgoff_t last_index)` (Linux 6.12+,
/// include/trace/events/filemap.h). Its arguments are plain loads and the
/// fault it belongs to is this thread's pending entry, on the same
/// `address_space` and covering `index`: no helper call, no hash lookup, no
/// scope check (only traced threads have a pending entry). Fault-around
/// without an entry (a GUP fault: `MAP_POPULATE`, `mlock`) is not counted
/// as pages mapped, as before, and its file is registered by the page-cache
/// hooks or userspace's scan of the maps.
#[raw_tracepoint(tracepoint = "mm_filemap_map_pages")]
pub fn filemap_map_pages_entry(ctx: RawTracePointContext) -> u32 {
    let (mapping, index, last) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2));
    // SAFETY: plain helper call (inlined by the verifier on x86-64).
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    // SAFETY: a BTF task pointer, offset from BTF.
    let tid: u32 = unsafe { load(task, conf!(task_pid)) };
    let Some(slot) = THREAD_FAULTS.get_ptr(thread_slot(tid)) else {
        return 0;
    };
    // SAFETY: this thread's slot.
    let (k, flags, stid, smap) =
        unsafe { ((*slot).key, (*slot).flags, (*slot).tid, (*slot).mapping) };
    let pages = last.wrapping_sub(index).wrapping_add(1);
    let vm_pages = k.vm_end.wrapping_sub(k.vm_start) >> PAGE_SHIFT;
    if stid == tid
        && flags & tf::PENDING != 0
        && smap == mapping
        && mapping != 0
        && index >= k.pgoff
        && index - k.pgoff < vm_pages
        && pages > 1
        && let Some(row) = row(&k)
    {
        row.add(&FaultCounters {
            pages_mapped: pages - 1,
            ..FaultCounters::default()
        });
    }
    if events::wanted(event_mask::FAULTS)
        && stid == tid
        && let Some(p) = PENDING.get_ptr_mut(pending_slot(tid))
    {
        // The fault's raw event reports the pages it mapped.
        // SAFETY: per-CPU slot.
        unsafe {
            (*p).map_tid = tid;
            (*p).map_pages = pages;
        }
    }
    0
}

/// Faults are counted at entry (the raw tracepoints are attached), not by
/// the perf events.
#[inline(always)]
fn entry_counting() -> bool {
    conf!(write_faults) != 0
}

/// Reads a `T` at `base + off` of a BTF (trusted or walked) kernel pointer
/// with a plain load: `off` is a `CONFIG` value, which the verifier knows
/// (`.rodata` is frozen), so it checks the access against the kernel's BTF
/// and the JIT makes it a faulting-safe load — no helper call.
#[inline(always)]
unsafe fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: the verifier checks the access (see above).
    unsafe { core::ptr::read_volatile((base as *const u8).add(off as usize) as *const T) }
}

/// A fault's entry. `LEAN`: the default trace's program
/// ([`page_fault_count`]), whose configuration the loader guarantees.
#[inline(always)]
fn on_entry<const LEAN: bool>(ctx: &RawTracePointContext, addr: u64, code: u64, kernel_mode: bool) {
    if !LEAN && (conf!(latency) != 0 || events::wanted(event_mask::FAULTS) || !entry_counting()) {
        stash_error_code(addr, code);
    }
    if (!LEAN && !entry_counting()) || addr & KERNEL_HALF != 0 {
        return;
    }
    // SAFETY: plain helper call (inlined by the verifier on x86-64).
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    // SAFETY: a BTF task pointer, offsets from BTF.
    let (tid, tgid): (u32, u32) =
        unsafe { (load(task, conf!(task_pid)), load(task, conf!(task_tgid))) };
    // User-mode code never runs with page faults disabled.
    if kernel_mode && code & X86_PF_USER == 0 && conf!(task_pagefault_disabled) != Config::ABSENT {
        // SAFETY: a BTF task pointer, offset from BTF.
        let disabled: i32 = unsafe { load(task, conf!(task_pagefault_disabled)) };
        if disabled != 0 {
            // copy_from_user_nofault() & co: fails without being counted.
            return;
        }
    }
    // SAFETY: a BTF task pointer, offsets from BTF.
    let (min, maj): (u64, u64) = unsafe {
        (
            load(task, conf!(task_min_flt)),
            load(task, conf!(task_maj_flt)),
        )
    };
    let Some(slot) = THREAD_FAULTS.get_ptr_mut(thread_slot(tid)) else {
        return;
    };
    // Settle this thread's previous fault.
    // SAFETY: this thread's slot (a thread never runs two entries at once);
    // another thread sharing the slot is told apart by tid and task.
    let taken = unsafe {
        let pending = (*slot).flags & tf::PENDING != 0;
        if pending && (*slot).tid == tid && (*slot).task == task {
            let dmin = min.wrapping_sub((*slot).min_flt);
            let dmaj = maj.wrapping_sub((*slot).maj_flt);
            if dmin != 1 || dmaj != 0 {
                settle(slot, dmin, dmaj);
            }
            false
        } else {
            pending && (*slot).tid != tid
        }
    };
    let Some(Counted { row, key, mapping }) = vma_counters::<_, LEAN>(ctx, task, addr, tgid, true)
    else {
        return;
    };
    if taken {
        count_error(errors::FAULT_SLOT_TAKEN);
    }
    let write = code & X86_PF_WRITE != 0;
    let k = key.kind;
    let file = k & kind::FILE != 0;
    let shared = k & kind::SHARED != 0;
    let mut flags = tf::PENDING;
    let mut d = FaultCounters {
        minor: 1,
        pages_mapped: 1,
        ..FaultCounters::default()
    };
    if write {
        d.write = 1;
        flags |= tf::WRITE;
        if file && !shared {
            d.cow = 1;
            flags |= tf::COW;
        }
        // A write to a present page of a shared file mapping:
        // write-protected after writeback cleaned it (or mapped read-only
        // by fault-around).
        if file && shared && code & X86_PF_PROT != 0 {
            d.wp_shared = 1;
            flags |= tf::WP_SHARED;
        }
    }
    row.add(&d);
    // SAFETY: this thread's slot (see above).
    unsafe {
        (*slot).tid = tid;
        (*slot).flags = flags;
        (*slot).task = task;
        (*slot).min_flt = min;
        (*slot).maj_flt = maj;
        (*slot).key = key;
        (*slot).addr = addr;
        (*slot).mapping = mapping;
    }
}

/// The thread's pending fault ended with its counters moved by `dmin`,
/// `dmaj` (anything but the common +1 minor): corrects its row.
///
/// The row stays the one chosen at entry, also when no vma held the
/// address then (unattributed: a stack about to grow, or the mmap lock was
/// busy). Looking it up again here would not work reliably: the entry runs
/// with IRQs off, where `bpf_find_vma` defers the mmap unlock to a per-CPU
/// irq_work and fails with -EBUSY until it ran, so a second lookup in the
/// same entry fails.
#[inline(never)]
fn settle(slot: *mut ThreadFault, dmin: u64, dmaj: u64) {
    // SAFETY: the caller's slot.
    let (key, flags) = unsafe { ((*slot).key, (*slot).flags) };
    // SAFETY: the caller's slot.
    unsafe { (*slot).flags = 0 };
    if dmin != 0 && dmaj != 0 {
        // The fault and GUP faults of both kinds: which one was the
        // fault's own is unknown; it stays a minor one.
        count_error(errors::FAULT_AMBIGUOUS);
        return;
    }
    if dmin != 0 {
        return; // minor, plus GUP minor faults
    }
    let Some(row) = row(&key) else {
        return;
    };
    // Counters may go below zero on one CPU's cache slot or transiently in
    // the row (wrapping; -1 is u64::MAX): the sum is right.
    const TAKE_BACK: u64 = u64::MAX;
    let mut d = FaultCounters {
        minor: TAKE_BACK,
        ..FaultCounters::default()
    };
    if dmaj != 0 {
        d.major = 1;
    } else {
        // Not counted by the kernel: the fault failed or is to be retried.
        d.pages_mapped = TAKE_BACK;
        if flags & tf::WRITE != 0 {
            d.write = TAKE_BACK;
        }
        if flags & tf::COW != 0 {
            d.cow = TAKE_BACK;
        }
        if flags & tf::WP_SHARED != 0 {
            d.wp_shared = TAKE_BACK;
        }
    }
    row.add(&d);
}

/// At a thread's exit: settles its pending fault against the exit-time
/// counters and frees its slot.
#[inline(always)]
pub fn settle_exit(tid: u32, min: u64, maj: u64) {
    if !entry_counting() {
        return;
    }
    // SAFETY: plain helper call (the address the entry noted).
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let Some(slot) = THREAD_FAULTS.get_ptr_mut(thread_slot(tid)) else {
        return;
    };
    // SAFETY: this thread's slot.
    unsafe {
        if (*slot).tid != tid || (*slot).task != task {
            return;
        }
        if (*slot).flags & tf::PENDING != 0 {
            let dmin = min.wrapping_sub((*slot).min_flt);
            let dmaj = maj.wrapping_sub((*slot).maj_flt);
            if dmin != 1 || dmaj != 0 {
                settle(slot, dmin, dmaj);
            }
        }
        (*slot).flags = 0;
        (*slot).tid = 0;
    }
}

/// Where a fault's counts go: this CPU's own counters (its vma cache slot,
/// or `LOST_FAULTS`), added to plainly, or a `MAPPING_FAULTS` row every CPU
/// shares, added to atomically.
#[derive(Clone, Copy)]
struct Row {
    c: *mut FaultCounters,
    shared: bool,
}

impl Row {
    #[inline(always)]
    fn own(c: *mut FaultCounters) -> Self {
        Self { c, shared: false }
    }

    /// Adds `d` (wrapping: a take-back is `u64::MAX`).
    #[inline(always)]
    fn add(self, d: &FaultCounters) {
        if self.shared {
            add_shared(self.c, d);
        } else {
            // SAFETY: this CPU's counters: no other writer.
            unsafe { (*self.c).add(d) };
        }
    }
}

/// Adds `d` to a shared row: one atomic add per non-zero counter.
#[inline(never)]
fn add_shared(c: *mut FaultCounters, d: &FaultCounters) {
    // SAFETY: `c` points at a map value; fields are aligned u64s.
    let fields = unsafe {
        [
            (&raw mut (*c).minor, d.minor),
            (&raw mut (*c).major, d.major),
            (&raw mut (*c).write, d.write),
            (&raw mut (*c).cow, d.cow),
            (&raw mut (*c).pages_mapped, d.pages_mapped),
            (&raw mut (*c).wp_shared, d.wp_shared),
        ]
    };
    for (p, v) in fields {
        if v != 0 {
            atomic_add(p, v);
        }
    }
}

/// The shared `MAPPING_FAULTS` row of `key` (inserted if absent), or this
/// CPU's `LOST_FAULTS` when the map is full.
#[inline(always)]
fn map_row(key: &MappingKey) -> Option<Row> {
    let zero = FaultCounters::default();
    match get_or_insert(&MAPPING_FAULTS, &row_key(*key), &zero, errors::MAPPING_FULL) {
        Some(c) => Some(Row { c, shared: true }),
        None => LOST_FAULTS.get_ptr_mut(0).map(Row::own),
    }
}

/// The counters of row `key`: this CPU's cache slot if it holds the row,
/// else the map's.
#[inline(always)]
fn row(key: &MappingKey) -> Option<Row> {
    if let Some(cache) = VMA_CACHE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if (*cache).key == *key {
                return Some(Row::own(&mut (*cache).counters));
            }
        }
    }
    map_row(key)
}

#[inline(always)]
fn stash_error_code(addr: u64, code: u64) {
    // Deliberately no scope lookup: a per-CPU store is cheaper than a hash
    // lookup, and the perf event checks the thread id anyway.
    let (tid, _) = scope::current_ids();
    if let Some(p) = PENDING.get_ptr_mut(pending_slot(tid)) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*p).err_tid = tid;
            (*p).error_code = code;
            if conf!(latency) != 0 {
                (*p).start_ns = bpf_ktime_get_ns();
                (*p).addr = addr;
            } else if events::wanted(event_mask::FAULTS) {
                (*p).start_ns = bpf_ktime_get_ns();
            }
            (*p).map_tid = 0;
        }
    }
}

#[inline(always)]
fn try_filemap_map_pages(ctx: &TracePointContext) -> Result<(), i32> {
    let (tid, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (index, last, ino, dev) = unsafe {
        (
            ctx.read_at::<u64>(conf!(tp_map_index) as usize)?,
            ctx.read_at::<u64>(conf!(tp_map_last_index) as usize)?,
            ctx.read_at::<u64>(conf!(tp_map_ino) as usize)?,
            ctx.read_at::<u32>(conf!(tp_map_dev) as usize)?,
        )
    };
    register_file(ctx, &FileKey { ino, dev, _pad: 0 }, tgid);
    // Only attached without entry counting (the raw
    // `filemap_map_pages_entry` credits fault-around then): the pages go to
    // the perf event that ends the fault.
    let pages = last.wrapping_sub(index).wrapping_add(1);
    if let Some(p) = PENDING.get_ptr_mut(pending_slot(tid)) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*p).map_tid = tid;
            (*p).map_pages = pages;
        }
    }
    Ok(())
}

#[inline(always)]
fn on_fault(ctx: &PerfEventContext, major: bool) {
    let counting = !entry_counting();
    let latency_on = conf!(latency) != 0;
    let wanted = if major {
        event_mask::MAJOR_FAULTS
    } else {
        event_mask::MINOR_FAULTS
    };
    let event_on = events::wanted(wanted);
    if !counting && !latency_on && !event_on {
        return; // attached for the other kind of event only
    }
    let (tid, tgid) = scope::current_ids();
    // SAFETY: ctx points at the kernel's bpf_perf_event_data.
    let addr = unsafe { (*ctx.ctx).addr };

    // The accounting time, before this program's own work (vma lookup).
    let now = if latency_on {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let Some(Counted { row, key, .. }) = vma_counters::<_, false>(ctx, task, addr, tgid, true)
    else {
        return;
    };
    let (mut error_code, map_pages, mut start_ns, entry_addr) = take_pending(tid);
    let mut stall = None;
    if latency_on {
        stall = latency::paired(addr, entry_addr, start_ns, now);
        if start_ns != 0 && entry_addr != addr {
            // A stale entry (a failed fault's): its error code is not
            // this fault's either.
            error_code = 0;
        }
        if stall.is_none() {
            // A raw event gets no latency either.
            start_ns = 0;
        }
    }

    let write = error_code & X86_PF_WRITE != 0;
    let k = key.kind;
    // Counting at entry, the row the entry counted this fault on (the same
    // fault: same thread, same address): stalls and events go there too, so
    // they agree with the rows (a stack fault is unattributed at entry).
    let counted_on = if stall.is_some() || event_on {
        entry_row(tid, addr)
    } else {
        None
    };
    if let Some(ns) = stall {
        let (lk, lino, ldev) = match counted_on {
            Some(e) => (e.kind, e.ino, e.dev),
            None => (k, key.ino, key.dev),
        };
        let lkey = LatencyKey {
            ino: lino,
            dev: if lk & kind::UNATTRIBUTED != 0 {
                u32::MAX
            } else {
                ldev
            },
            major: major as u32,
        };
        latency::record(&lkey, tgid, ns);
    }
    let cow = write && k & kind::FILE != 0 && k & kind::SHARED == 0;
    // A write to a present page of a shared file mapping: write-protected
    // after writeback cleaned it (or mapped read-only by fault-around).
    let wp_shared =
        write && error_code & X86_PF_PROT != 0 && k & kind::FILE != 0 && k & kind::SHARED != 0;
    if counting {
        row.add(&FaultCounters {
            minor: !major as u64,
            major: major as u64,
            write: write as u64,
            cow: cow as u64,
            wp_shared: wp_shared as u64,
            pages_mapped: map_pages,
        });
    }
    if event_on {
        let mut flags = 0;
        if write {
            flags |= event::WRITE;
        }
        if cow {
            flags |= event::COW;
        }
        let mut e = Event {
            kind: if major {
                event::MAJOR_FAULT
            } else {
                event::MINOR_FAULT
            },
            addr,
            pages: map_pages,
            latency_ns: start_ns,
            flags,
            ..Event::default()
        };
        fault_event(&mut e, tgid, counted_on);
    }
}

/// The row this thread's fault at `addr` was counted on at entry, if that
/// is how faults are counted.
#[inline(always)]
fn entry_row(tid: u32, addr: u64) -> Option<MappingKey> {
    if !entry_counting() {
        return None;
    }
    let slot = THREAD_FAULTS.get_ptr(thread_slot(tid))?;
    // SAFETY: this thread's slot.
    unsafe {
        ((*slot).tid == tid && (*slot).addr == addr && (*slot).flags & tf::PENDING != 0)
            .then_some((*slot).key)
    }
}

/// Sends a raw fault event (`e.latency_ns` holds the fault's entry time):
/// the vma is the row the entry counted the fault on (`counted_on`), else
/// this CPU's cached one (just looked up or reused), else looked up again
/// (events on only). Out of line: the hot path stays as it was.
#[inline(never)]
fn fault_event(e: &mut Event, tgid: u32, counted_on: Option<MappingKey>) {
    let addr = e.addr;
    let mut key = counted_on;
    if key.is_none()
        && let Some(cache) = VMA_CACHE.get_ptr(0)
    {
        // SAFETY: per-CPU slot.
        let k = unsafe { (*cache).key };
        if k.tgid == tgid && addr >= k.vm_start && addr < k.vm_end {
            key = Some(k);
        }
    }
    let k = match key {
        Some(k) => k,
        // SAFETY: plain helper call.
        None => find_vma(unsafe { bpf_get_current_task_btf() }, addr, tgid, true).0,
    };
    if k.kind & kind::FILE != 0 {
        e.flags |= event::FILE;
    }
    if k.kind & kind::SHARED != 0 {
        e.flags |= event::SHARED;
    }
    if k.kind & kind::UNATTRIBUTED != 0 {
        e.flags |= event::UNATTRIBUTED;
    }
    e.dev = k.dev;
    e.ino = k.ino;
    e.index = k.pgoff;
    e.vm_start = k.vm_start;
    let start = e.latency_ns;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    e.latency_ns = if start != 0 && start <= now {
        now - start
    } else {
        0
    };
    events::emit(e);
}

/// Upper bound of the cross-CPU search (verifier-friendly bounded loop).
const MAX_CPUS: u32 = 1024;

/// Takes what the early tracepoints of this fault left for this thread.
///
/// Normally that is this CPU's slot. A fault that slept (a major fault
/// waiting for I/O) may end on another CPU: then the other CPUs' slots are
/// searched with `bpf_map_lookup_percpu_elem` — rare, so cheap on average.
#[inline(always)]
fn take_pending(tid: u32) -> (u64, u64, u64, u64) {
    // The error code is 0 when nothing was handed over (a plain u64, not an
    // Option: an Option's uninitialised payload upsets the verifier).
    let (mut error_code, mut map_pages, mut start_ns, mut addr) = (0u64, 1u64, 0u64, 0u64);
    let mut take = |p: *mut Pending| {
        // SAFETY: a slot of PENDING; a racing writer on its own CPU can at
        // worst make us miss this fault's hand-over.
        unsafe {
            if (*p).err_tid == tid {
                error_code = (*p).error_code;
                start_ns = (*p).start_ns;
                addr = (*p).addr;
                (*p).err_tid = 0;
            }
            if (*p).map_tid == tid {
                if (*p).map_pages > 0 {
                    map_pages = (*p).map_pages;
                }
                (*p).map_tid = 0;
            }
        }
    };
    let slot = pending_slot(tid);
    let Some(local) = PENDING.get_ptr_mut(slot) else {
        return (0, 1, 0, 0);
    };
    // SAFETY: per-CPU slot of this CPU.
    let stale_here = unsafe { (*local).err_tid != tid };
    take(local);
    let nr = conf!(nr_cpus).min(MAX_CPUS);
    if stale_here && conf!(write_faults) != 0 {
        let key = slot;
        let map = &PENDING as *const _ as *mut c_void;
        for cpu in 0..MAX_CPUS {
            if cpu >= nr {
                break;
            }
            // SAFETY: PENDING is a per-CPU array; the helper checks `cpu`.
            let p = unsafe {
                bpf_map_lookup_percpu_elem(map, &key as *const u32 as *const c_void, cpu)
            } as *mut Pending;
            if p.is_null() {
                continue;
            }
            // SAFETY: non-null slot pointer from the helper.
            if unsafe { (*p).err_tid } == tid {
                take(p);
                break;
            }
        }
    }
    (error_code, map_pages, start_ns, addr)
}

/// What `bpf_find_vma`'s callback found.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Found {
    pub ok: u64,
    pub has_file: u64,
    pub start: u64,
    pub end: u64,
    pub flags: u64,
    pub pgoff: u64,
    pub ino: u64,
    pub dev: u64,
    /// `file.f_mapping` (0: anonymous).
    pub mapping: u64,
}

/// The vma holding `addr` in the current task (`task_btf`, a trusted BTF
/// pointer): `bpf_find_vma`'s return (`-ENOENT`: no vma there) and what its
/// callback read. Shared by the fault path and the signal hook.
#[inline(always)]
pub(crate) fn lookup_vma(
    task_btf: *mut aya_ebpf::bindings::task_struct,
    addr: u64,
) -> (i64, Found) {
    let mut found = Found::default();
    // SAFETY: callback and context follow the helper's contract.
    let ret = unsafe {
        bpf_find_vma(
            task_btf,
            addr,
            vma_callback as *mut c_void,
            &mut found as *mut Found as *mut c_void,
            0,
        )
    };
    (ret, found)
}

/// `bpf_find_vma` callback: `long (*)(struct task_struct *, struct vm_area_struct *, void *)`.
#[inline(never)]
extern "C" fn vma_callback(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let vma = vma as u64;
    let found = ctx as *mut Found;
    let c: &Config = crate::kread::config();
    // SAFETY: reads of CONFIG; `found` points at the caller's stack.
    unsafe {
        let (Some(start), Some(end), Some(flags), Some(pgoff), Some(file)) = (
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_start)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_end)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_flags)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_pgoff)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_file)),
        ) else {
            return 0;
        };
        (*found).start = start;
        (*found).end = end;
        (*found).flags = flags;
        (*found).pgoff = pgoff;
        if file != 0 {
            let Some(inode) = read::<u64>(file, core::ptr::read_volatile(&c.file_f_inode)) else {
                return 0;
            };
            (*found).mapping =
                read::<u64>(file, core::ptr::read_volatile(&c.file_f_mapping)).unwrap_or(0);
            let (Some(ino), Some(sb)) = (
                read::<u64>(inode, core::ptr::read_volatile(&c.inode_i_ino)),
                read::<u64>(inode, core::ptr::read_volatile(&c.inode_i_sb)),
            ) else {
                return 0;
            };
            let Some(dev) = read::<u32>(sb, core::ptr::read_volatile(&c.sb_s_dev)) else {
                return 0;
            };
            (*found).ino = ino;
            (*found).dev = dev as u64;
            (*found).has_file = 1;
        }
        (*found).ok = 1;
    }
    0
}

/// The counters for the vma containing `addr` and the row's key, or `None`
/// when the process is not traced.
///
/// Hot path (same vma as this CPU's last fault, vma layout unchanged, no
/// process left the scope since): the counters live in the per-CPU cache
/// slot itself, so a fault costs no hash lookup at all — neither the scope
/// check nor the row. When the slot is taken over by another vma its
/// counters are flushed into `MAPPING_FAULTS`; userspace adds the slots'
/// unflushed counters when it reads.
///
/// `LEAN`: the vma cache is known to be on (no check).
#[inline(always)]
fn vma_counters<C: EbpfContext, const LEAN: bool>(
    ctx: &C,
    task: u64,
    addr: u64,
    tgid: u32,
    count_failure: bool,
) -> Option<Counted> {
    let cache = VMA_CACHE.get_ptr_mut(0)?;
    if LEAN || conf!(vma_cache) != 0 {
        let scope_gen = scope::generation();
        // SAFETY: per-CPU slot; a BTF task pointer, offsets from BTF.
        unsafe {
            let k = &(*cache).key;
            if k.tgid == tgid && (*cache).scope_gen == scope_gen {
                let mm = load::<u64>(task, conf!(task_mm));
                let seq = load::<u32>(mm, conf!(mm_lock_seq)) as u64;
                if seq & 1 == 0
                    && (*cache).mm == mm
                    && (*cache).seq == seq
                    && addr >= k.vm_start
                    && addr < k.vm_end
                {
                    return Some(Counted {
                        row: Row::own(&mut (*cache).counters),
                        key: *k,
                        mapping: (*cache).mapping,
                    });
                }
            }
        }
    }
    if vma_miss(ctx, addr, tgid, count_failure as u32) == 0 {
        return None;
    }
    // SAFETY: per-CPU slot, just filled by `vma_miss`.
    unsafe {
        Some(Counted {
            row: Row::own(&mut (*cache).counters),
            key: (*cache).key,
            mapping: (*cache).mapping,
        })
    }
}

/// Where [`vma_counters`] counts a fault: the row, its key and the vma's
/// file's `address_space` (0: anonymous).
struct Counted {
    row: Row,
    key: MappingKey,
    mapping: u64,
}

/// The slow path of [`vma_counters`], out of line so the per-fault program
/// stays small (its JIT image is what every fault runs through): checks the
/// scope, looks the vma up, registers its file, and moves this CPU's cache
/// slot to it (flushing what the slot held). A vma that cannot be cached
/// (the mm's layout is changing, or no vma was found) still takes the slot,
/// with an odd `seq` no fault matches: the next fault flushes it to the map.
/// Returns 0 when `tgid` is not traced.
#[inline(never)]
fn vma_miss<C: EbpfContext>(ctx: &C, addr: u64, tgid: u32, count_failure: u32) -> u32 {
    let Some(cache) = VMA_CACHE.get_ptr_mut(0) else {
        return 0;
    };
    // Read before the scope lookup: a process leaving the scope after it
    // shows up as a mismatch next time.
    let scope_gen = scope::generation();
    if !scope::in_scope_cached(tgid, scope_gen) {
        return 0;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task_btf() };
    // Read the sequence *before* the lookup: a change after it then shows
    // up as a mismatch next time instead of caching a stale vma.
    let (mm, mut seq) = if conf!(vma_cache) != 0 {
        // SAFETY: a BTF task pointer, offsets from BTF.
        unsafe {
            let mm = load::<u64>(task as u64, conf!(task_mm));
            (mm, load::<u32>(mm, conf!(mm_lock_seq)) as u64)
        }
    } else {
        (0, 1) // odd: never cacheable
    };
    let (key, mapping) = find_vma(task, addr, tgid, count_failure != 0);
    if key.kind & kind::FILE != 0 && entry_counting() {
        // The file becomes one of interest before the fault reads it in
        // (`filemap:mm_filemap_fault` does this only without entry counting:
        // here it costs a lookup per vma change, not a program per fault).
        let file = FileKey {
            ino: key.ino,
            dev: key.dev,
            _pad: 0,
        };
        register_file(ctx, &file, tgid);
    }
    if key.kind & kind::UNATTRIBUTED != 0 {
        seq = 1;
    }
    flush(cache);
    // SAFETY: per-CPU slot.
    unsafe {
        *cache = VmaCache {
            mm,
            seq,
            scope_gen,
            mapping,
            key,
            counters: FaultCounters::default(),
        };
    }
    1
}

/// The `MAPPING_FAULTS` key of a vma: the vma itself, or with
/// `coarse_mappings` its (process, file, kind) without the range.
#[inline(always)]
fn row_key(mut key: MappingKey) -> MappingKey {
    if conf!(coarse_mappings) != 0 {
        key.vm_start = 0;
        key.vm_end = 0;
        key.pgoff = 0;
    }
    key
}

/// Moves a cache slot's counters into `MAPPING_FAULTS`.
#[inline(always)]
fn flush(cache: *mut VmaCache) {
    // SAFETY: per-CPU slot.
    let (key, c) = unsafe { ((*cache).key, (*cache).counters) };
    if c == FaultCounters::default() {
        return;
    }
    let Some(row) = map_row(&key) else {
        return;
    };
    row.add(&c);
    // SAFETY: per-CPU slot.
    unsafe { (*cache).counters = FaultCounters::default() };
}

/// Looks the vma up with `bpf_find_vma` (the costly part).
///
/// `count_failure`: count a failure in `FIND_VMA_FAILED` (the fault entry
/// does not: its unattributed faults are looked up again when settled).
#[inline(always)]
fn find_vma(
    task_btf: *mut aya_ebpf::bindings::task_struct,
    addr: u64,
    tgid: u32,
    count_failure: bool,
) -> (MappingKey, u64) {
    let (ret, found) = lookup_vma(task_btf, addr);
    if ret != 0 || found.ok == 0 {
        if count_failure {
            count_error(errors::FIND_VMA_FAILED);
        }
        let key = MappingKey {
            tgid,
            kind: kind::UNATTRIBUTED,
            ..MappingKey::default()
        };
        return (key, 0);
    }
    let mut k = if found.has_file != 0 { kind::FILE } else { 0 };
    if found.flags & VM_SHARED != 0 {
        k |= kind::SHARED;
    }
    let key = MappingKey {
        tgid,
        kind: k,
        vm_start: found.start,
        vm_end: found.end,
        pgoff: found.pgoff,
        ino: found.ino,
        dev: found.dev as u32,
        _pad: 0,
    };
    (key, found.mapping)
}
