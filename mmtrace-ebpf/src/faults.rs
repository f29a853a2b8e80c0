//! Page faults: the kernel's own minor/major classification, attributed to
//! the faulting vma.
//!
//! Hooks:
//! - perf software events `PERF_COUNT_SW_PAGE_FAULTS_MIN` / `_MAJ` (period 1,
//!   one per CPU): they fire from `mm_account_fault()`, the place that bumps
//!   `task->min_flt` / `maj_flt`, so the counts match `/proc/<pid>/stat`
//!   (except GUP faults, which carry no user registers and fire no event).
//!   The sample's `addr` is the faulting address.
//! - raw tracepoints `page_fault_user` / `page_fault_kernel` (x86 only), at
//!   fault entry, hand the error code (bit 1 = write) to the perf event
//!   through a per-CPU `PENDING` slot (one per tid % 1024).
//!   `TP_PROTO(unsigned long address, struct pt_regs *regs,
//!   unsigned long error_code)` (Linux 6.18,
//!   arch/x86/include/asm/trace/exceptions.h).
//! - `filemap:mm_filemap_map_pages` (6.12+) hands over the fault-around window
//!   (`index..=last_index`), so pages mapped per fault can be reported. Its
//!   6.18 `format`: `i_ino` offset 8, `s_dev` offset 16, `index` offset 24,
//!   `last_index` offset 32 (read from tracefs at start, not from here).
//!
//! Attribution: `bpf_find_vma` is the costly part (+55% per fault when called
//! on every fault, KERNEL-NOTES), so the last vma is cached per CPU together
//! with the mm's `mm_lock_seq`, which every mmap-write-lock section (mmap,
//! munmap, mremap, mprotect) bumps: while it is unchanged the vma layout is
//! unchanged and the cached range is still right.
use core::ffi::c_void;

use aya_ebpf::{
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
        LOST_FAULTS, MAPPING_FAULTS, PENDING, VMA_CACHE, count_error, get_or_insert, pending_slot,
    },
    pagecache::register_file,
    scope,
};

pub(crate) const VM_SHARED: u64 = 0x8;
/// x86 page-fault error code: the page was present (a protection fault).
const X86_PF_PROT: u64 = 1 << 0;
/// x86 page-fault error code: the access was a write.
const X86_PF_WRITE: u64 = 1 << 1;

/// Hand-over from the early tracepoints of a fault to its perf event.
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
    stash_error_code(ctx.arg::<u64>(0), ctx.arg::<u64>(2));
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: RawTracePointContext) -> u32 {
    stash_error_code(ctx.arg::<u64>(0), ctx.arg::<u64>(2));
    0
}

#[tracepoint]
pub fn filemap_map_pages(ctx: TracePointContext) -> u32 {
    let _ = try_filemap_map_pages(&ctx);
    0
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
    if let Some(p) = PENDING.get_ptr_mut(pending_slot(tid)) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*p).map_tid = tid;
            (*p).map_pages = last.wrapping_sub(index).wrapping_add(1);
        }
    }
    Ok(())
}

#[inline(always)]
fn on_fault(ctx: &PerfEventContext, major: bool) {
    let (tid, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return;
    }
    // SAFETY: ctx points at the kernel's bpf_perf_event_data.
    let addr = unsafe { (*ctx.ctx).addr };

    let latency_on = conf!(latency) != 0;
    // The accounting time, before this program's own work (vma lookup).
    let now = if latency_on {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
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
    let Some((c, k, dev, ino)) = vma_counters(addr, tgid) else {
        return;
    };
    if let Some(ns) = stall {
        let key = LatencyKey {
            ino,
            dev: if k & kind::UNATTRIBUTED != 0 {
                u32::MAX
            } else {
                dev
            },
            major: major as u32,
        };
        latency::record(&key, tgid, ns);
    }
    let cow = write && k & kind::FILE != 0 && k & kind::SHARED == 0;
    // A write to a present page of a shared file mapping: write-protected
    // after writeback cleaned it (or mapped read-only by fault-around).
    let wp_shared =
        write && error_code & X86_PF_PROT != 0 && k & kind::FILE != 0 && k & kind::SHARED != 0;
    // SAFETY: per-CPU value or per-CPU cache slot: no other writer on this CPU.
    unsafe {
        if major {
            (*c).major += 1;
        } else {
            (*c).minor += 1;
        }
        if write {
            (*c).write += 1;
        }
        if cow {
            (*c).cow += 1;
        }
        if wp_shared {
            (*c).wp_shared += 1;
        }
        (*c).pages_mapped += map_pages;
    }
    let wanted = if major {
        event_mask::MAJOR_FAULTS
    } else {
        event_mask::MINOR_FAULTS
    };
    if events::wanted(wanted) {
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
        fault_event(&mut e, tgid);
    }
}

/// Sends a raw fault event (`e.latency_ns` holds the fault's entry time):
/// the vma is this CPU's cached one (just looked up or reused), else looked
/// up again (events on only). Out of line: the hot path stays as it was.
#[inline(never)]
fn fault_event(e: &mut Event, tgid: u32) {
    let addr = e.addr;
    let mut key = None;
    if let Some(cache) = VMA_CACHE.get_ptr(0) {
        // SAFETY: per-CPU slot.
        let k = unsafe { (*cache).key };
        if k.tgid == tgid && addr >= k.vm_start && addr < k.vm_end {
            key = Some(k);
        }
    }
    let k = match key {
        Some(k) => k,
        // SAFETY: plain helper call.
        None => find_vma(unsafe { bpf_get_current_task_btf() }, addr, tgid),
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

/// The counters for the vma containing `addr`, the vma's [`kind`] bits and
/// its file (dev, ino; 0, 0 for anonymous memory).
///
/// Hot path (same vma as this CPU's last fault, vma layout unchanged): the
/// counters live in the per-CPU cache slot itself, so a fault costs no hash
/// lookup at all. When the slot is taken over by another vma its counters
/// are flushed into `MAPPING_FAULTS`; userspace adds the slots' unflushed
/// counters when it reads.
#[inline(always)]
fn vma_counters(addr: u64, tgid: u32) -> Option<(*mut FaultCounters, u32, u32, u64)> {
    // A trusted (BTF) task pointer: bpf_find_vma refuses a plain scalar.
    // SAFETY: plain helper call.
    let task_btf = unsafe { bpf_get_current_task_btf() };
    let task = task_btf as u64;
    let cache = VMA_CACHE.get_ptr_mut(0)?;
    let use_cache = conf!(vma_cache) != 0;
    // Read the sequence *before* the lookup: a change after it then shows
    // up as a mismatch next time instead of caching a stale vma.
    let mut mm = 0u64;
    let mut seq = 1u64; // odd: never cacheable
    if use_cache {
        if let Some(m) = read::<u64>(task, conf!(task_mm)) {
            mm = m;
            if let Some(s) = read::<u32>(m, conf!(mm_lock_seq)) {
                seq = s as u64;
            }
        }
        // SAFETY: per-CPU slot.
        unsafe {
            let k = &(*cache).key;
            if seq & 1 == 0
                && (*cache).mm == mm
                && (*cache).seq == seq
                && k.tgid == tgid
                && addr >= k.vm_start
                && addr < k.vm_end
            {
                return Some((&mut (*cache).counters, k.kind, k.dev, k.ino));
            }
        }
    }

    let key = find_vma(task_btf, addr, tgid);
    if use_cache && seq & 1 == 0 && key.kind & kind::UNATTRIBUTED == 0 {
        flush(cache);
        // SAFETY: per-CPU slot.
        unsafe {
            *cache = VmaCache {
                mm,
                seq,
                key,
                counters: FaultCounters::default(),
            };
            return Some((&mut (*cache).counters, key.kind, key.dev, key.ino));
        }
    }
    // Not cacheable: count straight into the map.
    let zero = FaultCounters::default();
    let c = match get_or_insert(&MAPPING_FAULTS, &row_key(key), &zero, errors::MAPPING_FULL) {
        Some(c) => c,
        None => LOST_FAULTS.get_ptr_mut(0)?,
    };
    Some((c, key.kind, key.dev, key.ino))
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
    if c.minor == 0 && c.major == 0 {
        return;
    }
    let zero = FaultCounters::default();
    let m = match get_or_insert(&MAPPING_FAULTS, &row_key(key), &zero, errors::MAPPING_FULL) {
        Some(m) => m,
        None => match LOST_FAULTS.get_ptr_mut(0) {
            Some(m) => m,
            None => return,
        },
    };
    // SAFETY: per-CPU value and slot.
    unsafe {
        (*m).add(&c);
        (*cache).counters = zero;
    }
}

/// Looks the vma up with `bpf_find_vma` (the costly part).
#[inline(always)]
fn find_vma(task_btf: *mut aya_ebpf::bindings::task_struct, addr: u64, tgid: u32) -> MappingKey {
    let (ret, found) = lookup_vma(task_btf, addr);
    if ret != 0 || found.ok == 0 {
        count_error(errors::FIND_VMA_FAILED);
        return MappingKey {
            tgid,
            kind: kind::UNATTRIBUTED,
            ..MappingKey::default()
        };
    }
    let mut k = if found.has_file != 0 { kind::FILE } else { 0 };
    if found.flags & VM_SHARED != 0 {
        k |= kind::SHARED;
    }
    MappingKey {
        tgid,
        kind: k,
        vm_start: found.start,
        vm_end: found.end,
        pgoff: found.pgoff,
        ino: found.ino,
        dev: found.dev as u32,
        _pad: 0,
    }
}
